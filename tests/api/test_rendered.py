"""Rendered images and thumbnails against the running service, checked with Pillow against the source pixels."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageCms
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit

from tests.conftest import Server, parse_multipart, source_frames, start_server
from tests.wsi_factory import SlideFile, make_image, make_slide, wide_gamut_profile

SYNTAXES = {"jpeg": JPEGBaseline8Bit, "j2k": JPEG2000Lossless, "native": ExplicitVRLittleEndian}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else 10 * np.log10(255**2 / error)


def _store(server: Server, files: list[SlideFile]) -> list[SlideFile]:
    for file in files:
        response = httpx.post(f"{server.base_url}/studies", content=file.path.read_bytes(),
                              headers={"content-type": "application/dicom"}, timeout=60)
        assert response.status_code == 200, response.text
    return files


def _url(server: Server, file: SlideFile) -> str:
    return f"{server.base_url}/studies/{file.study_uid}/series/{file.series_uid}/instances/{file.sop_uid}"


def _image(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def _decoded(file: SlideFile) -> list[np.ndarray]:
    """The stored frames as Pillow decodes them (native: as stored)."""
    if file.transfer_syntax == ExplicitVRLittleEndian:
        return [np.frombuffer(f, np.uint8).reshape(256, 256, 3) for f in source_frames(file.path)]
    return [np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in source_frames(file.path)]


def _level_image(file: SlideFile, width: int, height: int) -> np.ndarray:
    """A TILED_FULL level assembled from its decoded frames."""
    tiles = _decoded(file)
    columns = -(-width // 256)
    rows = len(tiles) // columns
    full = np.concatenate([np.concatenate(tiles[r * columns : (r + 1) * columns], axis=1) for r in range(rows)])
    return full[:height, :width]


@pytest.fixture(scope="module")
def slides(server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[SlideFile]]:
    return {name: _store(server, make_slide(tmp_path_factory.mktemp(name), transfer_syntax=syntax, levels=3,
                                            base_size=(700, 500), noise=2))
            for name, syntax in SYNTAXES.items()}


@pytest.mark.parametrize("name", SYNTAXES)
def test_rendered_frames_match_the_source(server: Server, slides: dict[str, list[SlideFile]], name: str) -> None:
    file = slides[name][0]
    decoded = _decoded(file)
    png = _image(httpx.get(f"{_url(server, file)}/frames/2/rendered", headers={"accept": "image/png"}))
    assert np.array_equal(png, decoded[1]), "PNG is lossless: the decoded frame itself"
    jpeg = _image(httpx.get(f"{_url(server, file)}/frames/2/rendered?quality=95"))
    assert _psnr(jpeg, file.tiles[1]) >= 40
    both = httpx.get(f"{_url(server, file)}/frames/1,3/rendered", headers={"accept": "image/png"})
    parts = parse_multipart(both)
    assert [h["content-type"] for h, _ in parts] == ["image/png"] * 2
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(parts[1][1])).convert("RGB")), decoded[2])


@pytest.mark.parametrize("name", SYNTAXES)
def test_rendered_instances_are_composed_from_their_tiles(server: Server, slides: dict[str, list[SlideFile]],
                                                          name: str) -> None:
    file = slides[name][0]
    level = _level_image(file, 700, 500)
    whole = _image(httpx.get(f"{_url(server, file)}/rendered", headers={"accept": "image/png"}))
    assert np.array_equal(whole, level)
    region = _image(httpx.get(f"{_url(server, file)}/rendered?viewport=300,200,200,100,300,200",
                              headers={"accept": "image/png"}))
    assert np.array_equal(region, level[100:300, 200:500]), "a region at its own size is the pixels themselves"
    scaled = _image(httpx.get(f"{_url(server, file)}/rendered?viewport=350,350", headers={"accept": "image/png"}))
    assert scaled.shape == (250, 350, 3), "fitted to the viewport, aspect kept"
    reference = np.asarray(Image.fromarray(level).resize((350, 250), Image.Resampling.LANCZOS))
    assert _psnr(scaled, reference) >= 30
    flipped = _image(httpx.get(f"{_url(server, file)}/rendered?viewport=300,200,500,100,-300,200",
                               headers={"accept": "image/png"}))
    assert np.array_equal(flipped, level[100:300, 200:500][:, ::-1]), "a negative width mirrors"


def test_small_viewports_read_a_smaller_level(emulators: dict[str, str], tmp_path: Path) -> None:
    server = start_server(emulators, tmp_path, DICOMWEB_MAX_RENDERED_FRAMES="2")
    try:
        files = _store(server, make_slide(tmp_path / "slide", levels=3, base_size=(1000, 700), noise=2))
        base = _url(server, files[0])
        refused = httpx.get(f"{base}/rendered?viewport=1000,700")
        assert refused.status_code == 400
        assert "DICOMWEB_MAX_RENDERED_FRAMES" in refused.json()["message"]
        small = _image(httpx.get(f"{base}/rendered?viewport=250,250"))  # level 3 (250×175) has one tile
        assert small.shape == (175, 250, 3)
    finally:
        server.stop()


def test_icc_profile_choices(server: Server, tmp_path: Path) -> None:
    (file,) = _store(server, make_slide(tmp_path, levels=1, base_size=(256, 256), associated=False, wide_gamut=True))
    url = f"{_url(server, file)}/frames/1/rendered"
    plain = Image.open(io.BytesIO(httpx.get(url, headers={"accept": "image/png"}).content))
    stored = _decoded(file)[0]
    assert np.array_equal(np.asarray(plain.convert("RGB")), stored) and "icc_profile" not in plain.info
    embedded = Image.open(io.BytesIO(httpx.get(url + "?iccprofile=yes", headers={"accept": "image/png"}).content))
    assert np.array_equal(np.asarray(embedded.convert("RGB")), stored)
    assert embedded.info["icc_profile"] == wide_gamut_profile()
    managed = Image.open(io.BytesIO(httpx.get(url + "?iccprofile=srgb", headers={"accept": "image/png"}).content))
    pixels = np.asarray(managed.convert("RGB"))
    assert np.abs(pixels.astype(int) - stored).mean() > 3, "wide-gamut pixels shown in sRGB change"
    description = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(managed.info["icc_profile"])))
    assert "sRGB" in description


def test_monochrome_windowing(server: Server, tmp_path: Path) -> None:
    image = _store(server, [make_image(tmp_path / "ct.dcm", modality="CT", study_uid="1.2.826.0.1.3680043.8.498.81",
                                       series_uid="1.2.826.0.1.3680043.8.498.82", patient_id="P-W",
                                       patient_name="Window^Test")])[0]
    stored = np.frombuffer(source_frames(image.path)[0], "<u2").reshape(32, 32).astype(float)
    url = f"{_url(server, image)}/rendered"
    full = np.asarray(Image.open(io.BytesIO(httpx.get(url, headers={"accept": "image/png"}).content)))
    assert np.abs(full - stored / 4095 * 255).max() <= 1, "without a window: the stored bits' full range"
    center, width = 2000, 1000
    windowed = np.asarray(Image.open(io.BytesIO(
        httpx.get(f"{url}?window={center},{width},linear-exact", headers={"accept": "image/png"}).content)))
    expected = np.clip((stored - (center - width / 2)) / width, 0, 1) * 255
    assert np.abs(windowed - expected).max() <= 1


@pytest.mark.parametrize(("query", "words"), [
    ("viewport=0,10", "viewport"), ("viewport=10,10,0,0,0,5", "sw"), ("quality=101", "quality"),
    ("iccprofile=maybe", "iccprofile"), ("window=1,0", "window"), ("annotation=patient", "annotation"),
    ("viewport=4096,4096&viewport=10,10", "more than once"), ("viewport=10,10,5000,5000,10,10", "outside"),
])
def test_bad_parameters_are_400(server: Server, slides: dict[str, list[SlideFile]], query: str, words: str) -> None:
    response = httpx.get(f"{_url(server, slides['jpeg'][0])}/rendered?{query}")
    assert response.status_code == 400
    assert words in response.json()["message"]


def test_media_types_and_revalidation(server: Server, slides: dict[str, list[SlideFile]]) -> None:
    url = f"{_url(server, slides['jpeg'][0])}/rendered?viewport=200,200"
    for accept, pillow in (("image/jpeg", "JPEG"), ("image/png", "PNG"), ("image/gif", "GIF"),
                           ("image/webp", "WEBP"), ("*/*", "JPEG"), ("image/*", "JPEG")):
        response = httpx.get(url, headers={"accept": accept})
        assert Image.open(io.BytesIO(response.content)).format == pillow, accept
    assert httpx.get(url, headers={"accept": "application/dicom"}).status_code == 406
    first = httpx.get(url)
    assert first.headers["cache-control"] == "private, max-age=31536000, immutable"
    again = httpx.get(url, headers={"if-none-match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def _thumbnail(server: Server, path: str) -> bytes:
    response = httpx.get(f"{server.base_url}{path}/thumbnail", headers={"accept": "image/png"}, timeout=60)
    assert response.status_code == 200, response.text
    return response.content


@pytest.mark.parametrize(("associated", "shown"), [
    (True, "THUMBNAIL"), (("LABEL", "OVERVIEW"), "OVERVIEW"), (("LABEL",), "VOLUME")])
def test_thumbnails_pick_the_slide_image_and_never_the_label(server: Server, tmp_path: Path,
                                                            associated: tuple[str, ...] | bool, shown: str) -> None:
    files = _store(server, make_slide(tmp_path, levels=3, base_size=(700, 500), associated=associated))
    study, series = f"/studies/{files[0].study_uid}", f"/studies/{files[0].study_uid}/series/{files[0].series_uid}"
    own = {f.image_type[2] + (f"-{i}" if f.image_type[2] == "VOLUME" else ""): _thumbnail(
        server, f"{series}/instances/{f.sop_uid}") for i, f in enumerate(files)}
    expected = own[shown] if shown != "VOLUME" else own["VOLUME-2"]  # the smallest level
    assert _thumbnail(server, series) == expected
    assert _thumbnail(server, study) == expected
    assert expected != own["LABEL"]
    image = Image.open(io.BytesIO(expected))
    assert max(image.size) == 256, "fits the 256-pixel thumbnail box"


def test_a_thumbnail_is_kept_beside_its_instance(server: Server, slides: dict[str, list[SlideFile]]) -> None:
    from tests.conftest import blob_names

    file = slides["native"][-1]
    _thumbnail(server, f"/studies/{file.study_uid}/series/{file.series_uid}/instances/{file.sop_uid}")
    names = blob_names(server.env, "dicom-sidecars", f"{file.study_uid}/{file.series_uid}/{file.sop_uid}/")
    assert sum(name.endswith(".thumbnail") for name in names) == 1


def test_frames_larger_than_the_service_decodes_are_served_as_stored_only(emulators: dict[str, str],
                                                                          tmp_path: Path) -> None:
    """Rows × Columns are the client's to declare: a frame above DICOMWEB_MAX_RENDERED_PIXELS is never decoded
    (no transcode, no rendering at any viewport), while its stored bytes are served."""
    from tests.conftest import fresh_settings

    (level,) = make_slide(tmp_path / "slide", levels=1, base_size=(1024, 512), tile_size=512, associated=False)
    server = start_server(fresh_settings(emulators), tmp_path, DICOMWEB_MAX_RENDERED_PIXELS=str(256 * 256))
    try:
        _store(server, [level])
        url = _url(server, level)
        stored = httpx.get(f"{url}/frames/1", headers={"accept": "image/jpeg"}, timeout=60)
        assert stored.status_code == 200 and stored.content == source_frames(level.path)[0]
        for path, accept in (("frames/1", "application/octet-stream"), ("frames/1/rendered?viewport=64,64", "image/png"),
                             ("rendered?viewport=64,32", "image/png"), ("thumbnail", "image/png")):
            refused = httpx.get(f"{url}/{path}", headers={"accept": accept}, timeout=60)
            assert refused.status_code == 406, (path, refused.status_code, refused.text)
            assert "DICOMWEB_MAX_RENDERED_PIXELS" in refused.text or "decoded up to" in refused.text, refused.text
    finally:
        server.stop()
