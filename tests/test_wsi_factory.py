"""The test-data generator itself: what it writes must be real, readable whole-slide DICOM."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import JPEG2000, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit
from wsidicom import WsiDicom

from tests.conftest import source_frames
from tests.wsi_factory import make_large_instance, make_slide


@pytest.mark.parametrize("syntax,table,fragments", [
    (JPEGBaseline8Bit, "bot", 1), (JPEGBaseline8Bit, "eot", 1), (JPEGBaseline8Bit, "empty", 1),
    (JPEGBaseline8Bit, "bot", 3), (JPEG2000Lossless, "bot", 1), (JPEG2000, "empty", 1),
    (ExplicitVRLittleEndian, "native", 1),
])
def test_every_layout_reads_back(tmp_path: Path, syntax: str, table: str, fragments: int) -> None:
    files = make_slide(tmp_path, transfer_syntax=syntax, offset_table=table, fragments_per_frame=fragments)
    assert [f.image_type[2] for f in files] == ["VOLUME"] * 3 + ["LABEL", "OVERVIEW", "THUMBNAIL"]
    assert len({f.series_uid for f in files}) == 1
    for file in files:
        dataset = pydicom.dcmread(file.path)
        assert dataset.file_meta.TransferSyntaxUID == syntax
        assert ("ExtendedOffsetTable" in dataset) == (table == "eot")
        frames = source_frames(file.path)
        assert len(frames) == dataset.NumberOfFrames == file.number_of_frames
        assert len(set(frames)) == len(frames) or len(frames) < 3, "textured frames differ"
        if syntax == JPEGBaseline8Bit:
            assert Image.open(io.BytesIO(frames[0])).size == (dataset.Columns, dataset.Rows)


@pytest.mark.parametrize("syntax", [JPEGBaseline8Bit, ExplicitVRLittleEndian])
def test_wsidicom_reads_every_level(tmp_path: Path, syntax: str) -> None:
    make_slide(tmp_path, transfer_syntax=syntax)
    with WsiDicom.open(tmp_path) as slide:
        assert len(slide.levels) == 3
        assert slide.labels is not None and slide.overviews is not None
        for level in range(3):
            size = slide.levels[level].size
            region = np.asarray(slide.read_region((0, 0), level, (min(200, size.width), min(150, size.height))))
            assert region.std() > 20, "pixels are textured"


def test_large_instance_is_streamed_valid_jpeg_frames(tmp_path: Path) -> None:
    file = make_large_instance(tmp_path / "large.dcm", frames=300, frame_bytes=20000)
    assert abs(file.path.stat().st_size - 300 * 20008) < 20000
    dataset = pydicom.dcmread(file.path)
    assert dataset.NumberOfFrames == 300
    assert dataset.TotalPixelMatrixColumns * dataset.TotalPixelMatrixRows == 300 * 256 * 256
    frames = source_frames(file.path)
    assert len(frames) == 300 and len(set(frames)) == 300
    for frame in (frames[0], frames[150], frames[-1]):
        assert len(frame) == 20000
        assert Image.open(io.BytesIO(frame)).size == (256, 256)
