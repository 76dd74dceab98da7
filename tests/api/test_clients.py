"""Third-party DICOMweb clients against the running service: dicomweb-client, wsidicom and Google's EZ-WSI."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
from dicomweb_client import DICOMwebClient
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit
from wsidicom import WsiDicom, WsiDicomWebClient

from dicomweb.convert import convert
from tests.conftest import ROOT, Server, source_frames
from tests.scanner_files import make_svs
from tests.wsi_factory import SlideFile, make_slide, wide_gamut_profile

#: EZ-WSI's own environment (see tests/ezwsi_client.py), which `.ci/run` makes.
EZWSI = ROOT / ".venv" / "ezwsi" / "bin" / "python"


@pytest.fixture(scope="module")
def client(server: Server) -> DICOMwebClient:
    return DICOMwebClient(server.base_url)


def _stow(client: DICOMwebClient, files: list[SlideFile]) -> None:
    """dicomweb-client's STOW: multipart, chunked above 1 MB, datasets sent without preamble."""
    response = client.store_instances([pydicom.dcmread(f.path) for f in files])
    stored = {item.ReferencedSOPInstanceUID for item in response.ReferencedSOPSequence}
    assert stored == {f.sop_uid for f in files}
    assert "FailedSOPSequence" not in response


@pytest.mark.parametrize("syntax", [JPEGBaseline8Bit, ExplicitVRLittleEndian], ids=["jpeg", "native"])
def test_dicomweb_client_round_trip(client: DICOMwebClient, tmp_path: Path, syntax: str) -> None:
    files = make_slide(tmp_path, transfer_syntax=syntax, levels=2, base_size=(700, 500))
    _stow(client, files)
    volume = files[0]
    metadata = client.retrieve_instance_metadata(volume.study_uid, volume.series_uid, volume.sop_uid)
    dataset = pydicom.Dataset.from_json(metadata)
    assert dataset.SOPInstanceUID == volume.sop_uid
    assert dataset.NumberOfFrames == volume.number_of_frames
    numbers = list(range(1, volume.number_of_frames + 1))
    frames = client.retrieve_instance_frames(volume.study_uid, volume.series_uid, volume.sop_uid, numbers)
    assert frames == source_frames(volume.path)
    instance = client.retrieve_instance(volume.study_uid, volume.series_uid, volume.sop_uid,
                                        media_types=(("application/dicom", "*"),))
    assert instance.SOPInstanceUID == volume.sop_uid
    assert instance.PixelData == pydicom.dcmread(volume.path).PixelData
    series = client.retrieve_series_metadata(volume.study_uid, volume.series_uid)
    assert {item["00080018"]["Value"][0] for item in series} == {f.sop_uid for f in files}


def test_dicomweb_client_frames_as_jpeg(client: DICOMwebClient, tmp_path: Path) -> None:
    files = make_slide(tmp_path, levels=1, base_size=(512, 512), associated=False)
    _stow(client, files)
    volume = files[0]
    frames = client.retrieve_instance_frames(volume.study_uid, volume.series_uid, volume.sop_uid, [2, 1],
                                             media_types=(("image/jpeg", JPEGBaseline8Bit),))
    expected = source_frames(volume.path)
    assert frames == [expected[1], expected[0]]


def test_dicomweb_client_sees_a_duplicate(client: DICOMwebClient, tmp_path: Path) -> None:
    files = make_slide(tmp_path, levels=1, base_size=(256, 256), associated=False)
    _stow(client, files)
    with pytest.raises(Exception) as failure:
        client.store_instances([pydicom.dcmread(files[0].path)])
    assert "409" in str(failure.value)


# Native frames are left out: wsidicom 0.36 hands dicomweb-client's bytearray frames to pydicom, which
# rejects them for uncompressed syntaxes whatever the server sends (a client-side limitation).
@pytest.mark.parametrize("syntax", [JPEGBaseline8Bit, JPEG2000Lossless], ids=["jpeg", "j2k"])
def test_wsidicom_opens_the_slide_over_dicomweb(client: DICOMwebClient, server: Server, tmp_path: Path,
                                                syntax: str) -> None:
    files = make_slide(tmp_path / "slide", transfer_syntax=syntax, levels=3, base_size=(1000, 800), wide_gamut=True)
    _stow(client, files)
    local = WsiDicom.open(tmp_path / "slide")
    remote = WsiDicom.open_web(WsiDicomWebClient(DICOMwebClient(server.base_url)), files[0].study_uid,
                               files[0].series_uid)
    with local, remote:
        assert len(remote.levels) == len(local.levels) == 3
        assert remote.labels is not None and remote.overviews is not None
        for level in range(len(local.levels)):
            size = local.levels[level].size
            region = (min(300, size.width), min(300, size.height))
            want = np.asarray(local.read_region((0, 0), level, region))
            got = np.asarray(remote.read_region((0, 0), level, region))
            assert np.array_equal(got, want), f"level {level} differs"
            corner = (max(size.width - 200, 0), max(size.height - 150, 0))
            assert np.array_equal(np.asarray(remote.read_region(corner, level, (200, 150))),
                                  np.asarray(local.read_region(corner, level, (200, 150))))
        assert np.array_equal(np.asarray(remote.read_label()), np.asarray(local.read_label()))
        # wsidicom builds datasets from the metadata alone: the profile reaches it inline (it would
        # otherwise put its own sRGB default in place).
        assert remote.metadata.pyramid.optical_paths[0].icc_profile == wide_gamut_profile()


def test_ezwsi_reads_every_level_of_a_converted_slide_as_the_scanner_wrote_it(client: DICOMwebClient, server: Server,
                                                                             tmp_path: Path) -> None:
    """Google's EZ-WSI finds the levels by QIDO (naming Transfer Syntax UID among the tags it needs, and the optical
    path for the ICC profile's BulkDataURI), then reads frames untranscoded and decodes them itself: its patches of
    every level are the scanner file's pixels."""
    assert EZWSI.exists(), f"{EZWSI} is missing: bash .ci/run installs ez-wsi-dicomweb into its own environment"
    make_svs(tmp_path / "slide.svs", size=(1536, 1024), count=3, icc=wide_gamut_profile())
    paths = convert(tmp_path / "slide.svs", tmp_path / "dicom")
    response = client.store_instances([pydicom.dcmread(path) for path in paths])
    assert len(response.ReferencedSOPSequence) == len(paths) and "FailedSOPSequence" not in response
    header = pydicom.dcmread(paths[0], stop_before_pixels=True)
    out = tmp_path / "patches.npz"
    run = subprocess.run([str(EZWSI), str(ROOT / "tests" / "ezwsi_client.py"), server.base_url,
                          header.StudyInstanceUID, header.SeriesInstanceUID, str(out)],
                         check=False, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.splitlines()[-1])
    levels = found["levels"]
    assert found["icc"] == hashlib.sha256(wide_gamut_profile()).hexdigest(), "the scanner's profile"
    assert found["iccUri"].startswith(server.base_url) and found["iccUri"].endswith("/bulkdata/00480105.0.00282000"), \
        "found in the QIDO answer (else EZ-WSI reads the smallest level whole for it)"
    with tifffile.TiffFile(tmp_path / "slide.svs") as svs:
        source = [page.asarray() for page in svs.pages if page.is_tiled]
    assert [(level["width"], level["height"]) for level in levels] == [(s.shape[1], s.shape[0]) for s in source]
    assert {level["transferSyntaxUID"] for level in levels} == {JPEGBaseline8Bit}
    with np.load(out) as patches:
        for level, pixels in zip(levels, source):
            name = f"level{level['index']}"
            assert np.array_equal(patches[name], pixels), f"{name} differs"
            x, y, width, height = level["inner"]
            assert np.array_equal(patches[f"{name}-inner"], pixels[y : y + height, x : x + width]), name
