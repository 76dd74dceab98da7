"""Frames in another transfer syntax than the stored one: every input the factory writes × every output offered."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import imagecodecs
import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from PIL import Image
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from dicomweb.dicom import codecs
from dicomweb.dicom.media import frame_label
from dicomweb.dicom.syntax import frame_media_type
from tests.conftest import Server, parse_multipart, source_frames
from tests.wsi_factory import LOSSY_METHODS, SYNTAXES, SlideFile, make_image, make_slide

LOSSY = {JPEGBaseline8Bit, *LOSSY_METHODS}
#: What the service offers for 8-bit RGB frames.
OUTPUTS = sorted(codecs.ENCODABLE)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else 10 * np.log10(255**2 / error)


def _decode(data: bytes, syntax: str, columns: int, rows: int) -> np.ndarray:
    """Frames decoded without the service's code: numpy for native, Pillow where it reads the syntax."""
    if syntax == ExplicitVRLittleEndian:
        return np.frombuffer(data, np.uint8).reshape(rows, columns, 3)
    if frame_media_type(syntax) in ("image/jpeg", "image/jp2", "image/jphc") and syntax != codecs.JPEG_LOSSLESS_SV1:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    if frame_media_type(syntax) == "image/jls":
        return imagecodecs.jpegls_decode(data)
    if syntax == codecs.JPEG_LOSSLESS_SV1:
        return imagecodecs.jpeg8_decode(data, colorspace="RGB", outcolorspace="RGB")
    fmt = codecs.PixelFormat(rows, columns, 3, 8, 8, False, "RGB", 0)
    return codecs.decode(data, syntax, fmt)


def _url(server: Server, file: SlideFile) -> str:
    return f"{server.base_url}/studies/{file.study_uid}/series/{file.series_uid}/instances/{file.sop_uid}"


@pytest.fixture(scope="module")
def slides(server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, SlideFile]:
    """One smooth 2-frame level per stored syntax (smooth: lossy codecs stay above 40 dB)."""
    stored = {}
    for syntax in SYNTAXES:
        (file,) = make_slide(tmp_path_factory.mktemp("transcode"), transfer_syntax=syntax, levels=1,
                             base_size=(400, 200), associated=False, noise=2)
        response = httpx.post(f"{server.base_url}/studies", content=file.path.read_bytes(),
                              headers={"content-type": "application/dicom"}, timeout=60)
        assert response.status_code == 200, response.text
        stored[syntax] = file
    return stored


@pytest.mark.parametrize("source", SYNTAXES)
def test_every_input_in_every_output(server: Server, slides: dict[str, SlideFile], source: str) -> None:
    file = slides[source]
    stored = source_frames(file.path)
    with httpx.Client(timeout=60) as http:
        for target in OUTPUTS:
            media_type = frame_media_type(target)
            response = http.get(f"{_url(server, file)}/frames/1,2", headers={
                "accept": f'multipart/related; type="{media_type}"; transfer-syntax={target}'})
            assert response.status_code == 200, (target, response.text)
            parts = parse_multipart(response)
            assert [h["content-type"] for h, _ in parts] == [f"{media_type}; transfer-syntax={target}"] * 2
            for number, (_, body) in enumerate(parts):
                got = _decode(body, target, 256, 256)
                original = file.tiles[number]
                if target == frame_label(source):
                    assert body == stored[number], "the stored syntax is served as stored"
                if source not in LOSSY and target not in LOSSY:
                    assert np.array_equal(got, original), f"{source} → {target}: frame {number + 1} differs"
                else:
                    assert _psnr(got, original) >= 40 - (source in LOSSY) * 5, (source, target, _psnr(got, original))


def test_stored_bytes_when_the_syntax_is_stored(server: Server, slides: dict[str, SlideFile]) -> None:
    file = slides[JPEGBaseline8Bit]
    response = httpx.get(f"{_url(server, file)}/frames/1", headers={"accept": "image/jpeg"})
    assert response.content == source_frames(file.path)[0]


def test_octet_stream_without_a_syntax_is_native(server: Server, slides: dict[str, SlideFile]) -> None:
    file = slides[JPEGBaseline8Bit]
    response = httpx.get(f"{_url(server, file)}/frames/2", headers={"accept": "application/octet-stream"})
    assert response.status_code == 200
    assert response.headers["content-type"] == f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}"
    pixels = np.frombuffer(response.content, np.uint8).reshape(256, 256, 3)
    reference = np.asarray(Image.open(io.BytesIO(source_frames(file.path)[1])).convert("RGB"))
    assert np.abs(pixels.astype(int) - reference).max() <= 1


def test_dicomweb_client_defaults_on_a_jpeg_slide(server: Server, slides: dict[str, SlideFile]) -> None:
    file = slides[JPEGBaseline8Bit]
    client = DICOMwebClient(server.base_url)
    frames = client.retrieve_instance_frames(file.study_uid, file.series_uid, file.sop_uid, [1, 2])
    assert frames == source_frames(file.path)
    (metadata,) = client.retrieve_series_metadata(file.study_uid, file.series_uid)
    pixel_data = client.retrieve_bulkdata(metadata["7FE00010"]["BulkDataURI"])
    assert pixel_data == source_frames(file.path)  # it accepts any type: the stored frames


def test_a_syntax_the_pixels_cannot_take_is_406(server: Server, tmp_path: Path) -> None:
    image = make_image(tmp_path / "ct.dcm", modality="CT", study_uid="1.2.826.0.1.3680043.8.498.71",
                       series_uid="1.2.826.0.1.3680043.8.498.72", patient_id="P-CT", patient_name="Ct^Patient")
    response = httpx.post(f"{server.base_url}/studies", content=image.path.read_bytes(),
                          headers={"content-type": "application/dicom"})
    assert response.status_code == 200, response.text
    url = _url(server, image) + "/frames/1"
    refused = httpx.get(url, headers={"accept": "image/jpeg"})  # baseline JPEG holds 8 bits; this CT has 12
    assert refused.status_code == 406
    assert "cannot be produced" in refused.json()["message"]
    lossless = httpx.get(url, headers={"accept": "image/jp2"})
    assert lossless.status_code == 200
    pixels = imagecodecs.jpeg2k_decode(lossless.content)
    assert np.array_equal(pixels, np.frombuffer(source_frames(image.path)[0], "<u2").reshape(32, 32))


def test_a_frame_answer_is_revalidated_with_its_etag(server: Server, slides: dict[str, SlideFile]) -> None:
    file = slides[JPEGBaseline8Bit]
    url = f"{_url(server, file)}/frames/1"
    first = httpx.get(url, headers={"accept": "application/octet-stream"})
    tag = first.headers["etag"]
    assert first.headers["cache-control"] == "private, max-age=31536000, immutable"
    assert first.headers["vary"] == "Accept"
    again = httpx.get(url, headers={"accept": "application/octet-stream", "if-none-match": tag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == tag
    other = httpx.get(url, headers={"accept": "image/jpeg", "if-none-match": tag})
    assert other.status_code == 200 and other.headers["etag"] != tag, "another representation, another tag"
    multipart = httpx.get(f"{_url(server, file)}/frames/1,2")
    assert multipart.content == httpx.get(f"{_url(server, file)}/frames/1,2").content, "a strong tag: same bytes"


@pytest.mark.parametrize("target", [ExplicitVRLittleEndian, codecs.JPEG_2000_LOSSLESS, codecs.HTJ2K_LOSSLESS,
                                    JPEGBaseline8Bit, codecs.RLE_LOSSLESS])
@pytest.mark.parametrize("source", [JPEGBaseline8Bit, codecs.JPEG_2000_LOSSLESS, ExplicitVRLittleEndian,
                                    codecs.JPEG_LS_LOSSLESS])
def test_instances_in_another_syntax(server: Server, slides: dict[str, SlideFile], source: str, target: str) -> None:
    file = slides[source]
    response = httpx.get(_url(server, file), headers={"accept": f"application/dicom; transfer-syntax={target}"},
                         timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == f"application/dicom; transfer-syntax={target}"
    dataset = pydicom.dcmread(io.BytesIO(response.content))
    assert dataset.file_meta.TransferSyntaxUID == target
    assert dataset.SOPInstanceUID == file.sop_uid and dataset.NumberOfFrames == 2
    if target == ExplicitVRLittleEndian:
        frames = [dataset.PixelData[i * 256 * 256 * 3 : (i + 1) * 256 * 256 * 3] for i in range(2)]
    else:
        frames = list(generate_frames(dataset.PixelData, number_of_frames=2))
        assert "ExtendedOffsetTable" not in dataset
    assert (dataset.LossyImageCompression == "01") == (source in LOSSY or target in LOSSY)
    for number, frame in enumerate(frames):
        got = _decode(frame, target, 256, 256)
        if source not in LOSSY and target not in LOSSY:
            assert np.array_equal(got, file.tiles[number])
        else:
            assert _psnr(got, file.tiles[number]) >= 35


def test_native_pixels_beyond_four_gigabytes_are_406(server: Server, tmp_path: Path) -> None:
    """17 frames of 16384² grey: 4.5 GB of native pixels, more than the 32-bit length of Pixel Data holds."""
    side, count = 16384, 17
    frame = bytes(imagecodecs.jpeg8_encode(np.zeros((side, side), np.uint8), level=50))
    ds = pydicom.dcmread(make_image(tmp_path / "small.dcm", modality="CT", study_uid="1.2.826.0.1.3680043.8.498.91",
                                    series_uid="1.2.826.0.1.3680043.8.498.92", patient_id="P-4G",
                                    patient_name="Four^Gigabytes").path)
    ds.Rows = ds.Columns = side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.NumberOfFrames = count
    ds.PixelData = encapsulate([frame] * count)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    path = tmp_path / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert httpx.post(f"{server.base_url}/studies", content=path.read_bytes(),
                      headers={"content-type": "application/dicom"}).status_code == 200
    url = f"{server.base_url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    refused = httpx.get(url, headers={"accept": "application/dicom"})
    assert refused.status_code == 406 and "4 GB" in refused.json()["message"]
    assert httpx.get(url, headers={"accept": "application/dicom; transfer-syntax=*"}).content == path.read_bytes()
