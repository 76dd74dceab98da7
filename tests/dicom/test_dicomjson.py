"""Which binary values the metadata carries inline, and which by BulkDataURI (no service needed)."""

from __future__ import annotations

import base64
import io

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomweb.dicom.dicomjson import SMALL_BINARY, dataset_to_json
from dicomweb.dicom.part10 import Limits, Part10Parser


def _described(icc: bytes, points: bytes, indices: bytes, inline: int) -> dict:
    """DICOM JSON of a stored instance with an ICC profile in its optical path and an annotation group's bulk values."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.91.1"
    ds.SOPInstanceUID = generate_uid()
    path = Dataset()
    path.ICCProfile = icc
    ds.OpticalPathSequence = [path]
    group = Dataset()
    group.PointCoordinatesData = points
    group.LongPrimitivePointIndexList = indices
    ds.AnnotationGroupSequence = [group]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    parser = Part10Parser(Limits(header_bytes=1 << 22))
    parser.feed(out.getvalue())
    parser.close()
    assert parser.header is not None
    dataset, bulk = dataset_to_json(parser.header.dataset, parser.header.dataset_base, inline)
    assert set(bulk) == {"00480105.0.00282000", "006A0002.0.00660016", "006A0002.0.00660040"}, "served either way"
    return {"icc": dataset["00480105"]["Value"][0]["00282000"],
            "points": dataset["006A0002"]["Value"][0]["00660016"],
            "indices": dataset["006A0002"]["Value"][0]["00660040"]}


def test_the_icc_profile_is_inline_up_to_the_setting_other_values_only_when_small() -> None:
    icc, points, small = bytes(range(256)) * 800, b"\x00\x00\x80\x3f" * 600, b"\x01\x00\x00\x00" * (SMALL_BINARY // 4)
    described = _described(icc, points, small, 256 * 1024)
    assert described["icc"] == {"vr": "OB", "InlineBinary": base64.b64encode(icc).decode()}, "200 KB, inline"
    assert described["points"] == {"vr": "OF", "BulkDataURI": "bulkdata/006A0002.0.00660016"}, "2.4 KB, by URI"
    assert described["indices"] == {"vr": "OL", "InlineBinary": base64.b64encode(small).decode()}, "1 KB, inline"


@pytest.mark.parametrize("inline", [0, 1000, 100 * 1024])
def test_the_setting_bounds_every_inline_value(inline: int) -> None:
    icc, small = bytes(range(256)) * 800, b"\x01\x00\x00\x00" * (SMALL_BINARY // 4)
    described = _described(icc, b"\x00\x00\x80\x3f" * 4, small, inline)
    assert "BulkDataURI" in described["icc"], "the profile is larger than the setting"
    assert ("InlineBinary" in described["points"]) == (inline >= 16)
    assert ("InlineBinary" in described["indices"]) == (inline >= SMALL_BINARY)
