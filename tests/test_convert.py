"""Scanner files made DICOM (``dicomweb/convert.py``): tiles copied, not re-encoded, where the format allows;
the associated images kept; the metadata given; the same UIDs for the same file and metadata; and a clear
refusal, with nothing left behind, for files that cannot be converted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

import imagecodecs
import numpy as np
import pydicom
import pytest
import tifffile
from pydicom.encaps import generate_frames
from pydicom.uid import JPEGBaseline8Bit
from wsidicom import WsiDicom

from dicomweb.convert import SlideMetadata, convert, load_metadata
from dicomweb.errors import BadRequest, InvalidDataset
from tests.conftest import ROOT, Server
from tests.scanner_files import TILE, make_ome_tiff, make_pyramidal_tiff, make_svs, source_tiles

FLAVOURS = ("VOLUME", "LABEL", "OVERVIEW", "THUMBNAIL")


def _read(paths: list[Path]) -> dict[str, list[pydicom.Dataset]]:
    by_flavour: dict[str, list[pydicom.Dataset]] = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        by_flavour.setdefault(ds.ImageType[2], []).append(ds)
    for volumes in by_flavour.values():
        volumes.sort(key=lambda d: -int(d.TotalPixelMatrixColumns))
    return by_flavour


def _decoded_source(path: Path, level: int) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        return tif.series[0].levels[level].asarray()


@pytest.mark.parametrize("make", [make_svs, make_ome_tiff], ids=["svs", "ome-tiff"])
def test_tiles_are_copied_into_frames_and_decode_to_the_source_pixels(tmp_path: Path, make) -> None:
    source = tmp_path / ("slide.svs" if make is make_svs else "slide.ome.tiff")
    pyramid = make(source)
    instances = _read(convert(source, tmp_path / "out"))
    volumes = instances["VOLUME"]
    assert [(int(d.TotalPixelMatrixColumns), int(d.TotalPixelMatrixRows)) for d in volumes] == [
        (level.shape[1], level.shape[0]) for level in pyramid]
    for number, ds in enumerate(volumes):
        assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit, "copied as the scanner wrote it"
        frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
        tiles = source_tiles(source, number)
        assert len(frames) == len(tiles)
        expected = _decoded_source(source, number)
        across = -(-expected.shape[1] // TILE)
        for index, (frame, (tile, _)) in enumerate(zip(frames, tiles)):
            scan = tile[tile.index(b"\xff\xda"):]
            assert frame.rstrip(b"\x00").endswith(scan.rstrip(b"\x00")), f"level {number} tile {index} re-encoded"
            row, column = divmod(index, across)
            want = expected[row * TILE:(row + 1) * TILE, column * TILE:(column + 1) * TILE]
            got = imagecodecs.jpeg8_decode(frame)[: want.shape[0], : want.shape[1]]
            assert np.array_equal(got, want), f"level {number} tile {index}"
    if make is make_svs:
        assert {flavour: len(instances.get(flavour, [])) for flavour in FLAVOURS} == {
            "VOLUME": 3, "LABEL": 1, "OVERVIEW": 1, "THUMBNAIL": 1}
    for ds in (d for group in instances.values() for d in group):
        assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (volumes[0].StudyInstanceUID, volumes[0].SeriesInstanceUID)


def test_wsidicom_opens_the_converted_slide_and_reads_the_source_pixels(tmp_path: Path) -> None:
    source = tmp_path / "slide.svs"
    make_svs(source)
    convert(source, tmp_path / "out")
    expected = _decoded_source(source, 0)
    with WsiDicom.open(tmp_path / "out") as wsi:
        region = np.asarray(wsi.read_region((300, 200), 0, (512, 384)).convert("RGB"))
    assert np.array_equal(region, expected[200:584, 300:812])


def test_a_plain_pyramidal_tiff_is_converted_by_re_encoding(tmp_path: Path) -> None:
    source = tmp_path / "plain.tiff"
    make_pyramidal_tiff(source)
    volumes = _read(convert(source, tmp_path / "out"))["VOLUME"]
    assert len(volumes) == 3
    expected = _decoded_source(source, 0).astype(float)
    with WsiDicom.open(tmp_path / "out") as wsi:
        region = np.asarray(wsi.read_region((0, 0), 0, (1536, 1024)).convert("RGB")).astype(float)
    psnr = 10 * np.log10(255**2 / np.mean((region - expected) ** 2))
    assert psnr > 35, psnr


def test_the_same_file_and_metadata_give_the_same_uids(tmp_path: Path) -> None:
    source = tmp_path / "slide.svs"
    make_svs(source)

    def uids(out: str, metadata: SlideMetadata = SlideMetadata()) -> set[tuple[str, str, str]]:
        return {(d.StudyInstanceUID, d.SeriesInstanceUID, d.SOPInstanceUID)
                for group in _read(convert(source, tmp_path / out, metadata)).values() for d in group}

    first = uids("a")
    assert len(first) == 6 and uids("b") == first
    assert not uids("c", SlideMetadata(patient_id="P-2")) & first, "other metadata: another slide"


def test_metadata_comes_from_options_and_files(tmp_path: Path) -> None:
    source = tmp_path / "slide.svs"
    make_svs(source)
    (tmp_path / "meta.json").write_text(json.dumps({"slide.svs": {
        "PatientID": "P-7", "PatientName": "Doe^John", "AccessionNumber": "A-1", "StudyInstanceUID": "1.2.3.4",
        "ContainerIdentifier": "S-1", "SpecimenDescription": "H&E, colon"}}))
    (tmp_path / "meta.csv").write_text("file,PatientID,AccessionNumber\nslide.svs,P-8,A-2\n")
    from_json = load_metadata(tmp_path / "meta.json")["slide.svs"]
    assert load_metadata(tmp_path / "meta.csv")["slide.svs"] == SlideMetadata(patient_id="P-8", accession_number="A-2")
    metadata = from_json.merged(SlideMetadata(accession_number="A-9"))
    for group in _read(convert(source, tmp_path / "out", metadata)).values():
        for ds in group:
            assert (ds.PatientID, str(ds.PatientName), ds.AccessionNumber, ds.StudyInstanceUID,
                    ds.ContainerIdentifier) == ("P-7", "Doe^John", "A-9", "1.2.3.4", "S-1")
            assert ds.SpecimenDescriptionSequence[0].SpecimenShortDescription == "H&E, colon"
    for bad in ('{"slide.svs": {"PatientAge": "9"}}', '{"slide.svs": {"StudyInstanceUID": "1.2.abc"}}', "[1]"):
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(BadRequest):
            load_metadata(tmp_path / "bad.json")


def test_files_that_cannot_be_converted_are_refused_and_leave_nothing(tmp_path: Path) -> None:
    whole = tmp_path / "whole.svs"
    make_svs(whole)
    data = whole.read_bytes()
    cases = {"truncated.svs": data[: len(data) // 2], "corrupt.svs": data[:8] + bytes(len(data) - 8),
             "random.ndpi": np.random.default_rng(0).bytes(100_000), "notes.tiff": b"hello, not a slide\n"}
    out = tmp_path / "out"
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InvalidDataset, match=f"{name} cannot be converted: "):
            convert(tmp_path / name, out)
        assert list(out.iterdir()) == [], name


def test_the_scanner_s_icc_profile_is_kept(tmp_path: Path) -> None:
    """PS3.3 C.8.12.5: a colour slide's Optical Path carries the ICC profile a viewer renders it through."""
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    make_svs(tmp_path / "slide.svs", icc=icc)
    by_flavour = _read(convert(tmp_path / "slide.svs", tmp_path / "out"))
    for ds in by_flavour["VOLUME"] + by_flavour["THUMBNAIL"]:
        assert ds.OpticalPathSequence[0].ICCProfile == icc, ds.ImageType


def test_a_tiff_cut_anywhere_or_with_a_damaged_tile_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """The readers take a TIFF whose chain of images breaks off for a slide with fewer images: without the check
    a file cut at 90 % became a slide with no label, macro or lowest level."""
    whole = tmp_path / "whole.svs"
    make_svs(whole)
    data = whole.read_bytes()
    with tifffile.TiffFile(whole) as tif:
        directories = [page.offset for page in tif.pages][1:]
        first_tile, first_count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    cuts = {f"at {fraction}": int(len(data) * fraction) for fraction in (0.5, 0.7, 0.9, 0.99)}
    cuts |= {f"before image {n + 1}": offset for n, offset in enumerate(directories)}
    cuts["one byte short"] = len(data) - 1
    out = tmp_path / "out"
    for case, length in cuts.items():
        (tmp_path / "cut.svs").write_bytes(data[:length])
        with pytest.raises(InvalidDataset, match="cut.svs cannot be converted: the file is cut short"):
            convert(tmp_path / "cut.svs", out)
        assert list(out.iterdir()) == [], case
    damaged = bytearray(data)
    damaged[first_tile + first_count - 2 : first_tile + first_count] = b"\0\0"  # the first tile's EOI
    (tmp_path / "damaged.svs").write_bytes(damaged)
    with pytest.raises(InvalidDataset, match=r"damaged.svs cannot be converted: the file is damaged \(a JPEG tile"):
        convert(tmp_path / "damaged.svs", out)
    assert len(convert(whole, out)) == 6, "the whole file passes the same check"


def test_a_progress_bar_shows_the_level_the_tiles_and_the_rate(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    make_svs(tmp_path / "slide.svs")
    convert(tmp_path / "slide.svs", tmp_path / "out", progress=True)
    shown = capsys.readouterr().err
    tiles = sum(-(-w // TILE) * -(-h // TILE) for w, h in ((1536, 1024), (768, 512), (384, 256)))
    assert "convert slide.svs" in shown and "level 1/3, 0/" in shown, shown
    assert f"3 levels, {tiles} tiles" in shown and "B/s" in shown, shown


def test_the_convert_command_reports_each_file_and_fails_when_one_does(tmp_path: Path) -> None:
    (tmp_path / "in" / "deeper").mkdir(parents=True)
    make_svs(tmp_path / "in" / "a.svs")
    make_ome_tiff(tmp_path / "in" / "deeper" / "b.ome.tiff")
    (tmp_path / "broken.svs").write_bytes(b"II*\x00" + bytes(64))
    (tmp_path / "in" / "notes.txt").write_text("not a slide")  # in a folder: not a scanner file, not looked at
    command = [sys.executable, "-m", "dicomweb", "convert", str(tmp_path / "in"), str(tmp_path / "broken.svs"),
               "--out", str(tmp_path / "out"), "--patient-id", "P-3", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 1, done.stderr
    rows = {Path(row["file"]).name: row for row in map(json.loads, done.stdout.splitlines())}
    assert set(rows) == {"a.svs", "b.ome.tiff", "broken.svs"}
    assert rows["a.svs"]["status"] == "converted" and rows["a.svs"]["instances"] == 6
    assert rows["b.ome.tiff"]["status"] == "converted" and rows["b.ome.tiff"]["instances"] == 3
    assert rows["broken.svs"]["status"] == "failed" and "broken.svs cannot be converted" in rows["broken.svs"]["reason"]
    assert all(pydicom.dcmread(p).PatientID == "P-3" for p in (tmp_path / "out" / "a.svs").glob("*.dcm"))
    assert not (tmp_path / "out" / "broken.svs").exists() or not any((tmp_path / "out" / "broken.svs").iterdir())
    ok = subprocess.run([*command[:4], str(tmp_path / "in" / "a.svs"), *command[6:]], capture_output=True, text=True,
                        timeout=300, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([*command[:4], str(tmp_path / "in" / "a.svs"), "--out", str(tmp_path / "x"), "--study-uid",
                          "1.2.abc"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert bad.returncode == 2 and "not a valid UID" in bad.stderr


def test_a_converted_slide_is_stored_found_and_served_frame_for_frame(server: Server, tmp_path: Path) -> None:
    source = tmp_path / "slide.svs"
    make_svs(source)
    files = convert(source, tmp_path / "out", SlideMetadata(patient_id="P-4"))
    for path in files:
        stored = httpx.post(f"{server.base_url}/studies", content=path.read_bytes(),
                            headers={"content-type": "application/dicom"}, timeout=60)
        assert stored.status_code == 200, stored.text
    volumes = _read(files)["VOLUME"]
    study = volumes[0].StudyInstanceUID
    found = httpx.get(f"{server.base_url}/instances", params={"StudyInstanceUID": study}).json()
    assert len(found) == 6 and {i["00100020"]["Value"][0] for i in found} == {"P-4"}
    base = volumes[0]
    frames = list(generate_frames(base.PixelData, number_of_frames=int(base.NumberOfFrames)))
    url = f"{server.base_url}/studies/{study}/series/{base.SeriesInstanceUID}/instances/{base.SOPInstanceUID}/frames/"
    for number in (1, len(frames)):
        answer = httpx.get(url + str(number), headers={"accept": "image/jpeg"})
        assert answer.status_code == 200 and answer.content == frames[number - 1]
    again = httpx.post(f"{server.base_url}/studies", content=files[0].read_bytes(),
                       headers={"content-type": "application/dicom"})
    assert again.status_code == 409, "converting the same file again gives the same instance: already stored"


def test_a_hamamatsu_vms_is_converted_through_openslide(tmp_path: Path) -> None:
    """A format only OpenSlide reads (openslide-python and openslide-bin in requirements.txt): wsidicomizer picks its
    OpenSlide source by itself when neither opentile nor tiffslide opens the file, and re-encodes the tiles."""
    from openslide import OpenSlide
    from wsidicomizer.extras.openslide import OpenSlideSource
    from wsidicomizer.sources import OpenTileSource, TiffSlideSource

    from tests.scanner_files import make_vms

    source = tmp_path / "scan" / "slide.vms"
    source.parent.mkdir()
    expected = make_vms(source)
    assert OpenSlideSource.is_supported(source)
    assert not OpenTileSource.is_supported(source) and not TiffSlideSource.is_supported(source)
    instances = _read(convert(source, tmp_path / "out"))
    assert {flavour: len(group) for flavour, group in instances.items()} == {"VOLUME": 7, "OVERVIEW": 1}
    volumes = instances["VOLUME"]
    assert [(int(d.TotalPixelMatrixColumns), int(d.TotalPixelMatrixRows)) for d in volumes] == [
        (1024 >> n, 768 >> n) for n in range(7)]
    base = volumes[0]
    assert base.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    spacing = base.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert [float(v) for v in spacing] == pytest.approx([0.0005, 0.0005])  # mm: the key file's 0.5 µm per pixel
    with WsiDicom.open(tmp_path / "out") as wsi:
        region = np.asarray(wsi.read_region((0, 0), 0, (1024, 768)).convert("RGB")).astype(float)
        lower = np.asarray(wsi.read_region((0, 0), 2, (256, 192)).convert("RGB")).astype(float)
    assert np.abs(region - expected).mean() < 3
    with OpenSlide(source) as slide:  # the lower levels OpenSlide makes by decoding at a quarter of the size
        quarter = np.asarray(slide.read_region((0, 0), 2, (256, 192)).convert("RGB")).astype(float)
    assert np.abs(lower - quarter).mean() < 3


def test_a_hamamatsu_vms_missing_an_image_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    from tests.scanner_files import make_vms

    source = tmp_path / "slide.vms"
    make_vms(source)
    (tmp_path / "slide(1,1).jpg").unlink()
    out = tmp_path / "out"
    with pytest.raises(InvalidDataset, match=r"slide.vms cannot be converted: OpenSlideError: .*slide\(1,1\)\.jpg"):
        convert(source, out)
    assert list(out.iterdir()) == []
