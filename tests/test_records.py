"""The metadata sidecar and what is derived from it (no service needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomweb import records
from dicomweb.errors import InvalidDataset
from dicomweb.dicom.dicomjson import JsonDict
from dicomweb.dicom.part10 import Limits, Part10Parser
from tests.wsi_factory import make_slide

URL = "https://dicom.example/v1/studies/1/series/2/instances/3"


def _absolute(dataset: JsonDict, url: str) -> JsonDict:
    """The oracle: ``dataset`` parsed, with every relative BulkDataURI (nested ones too) made absolute."""
    out = {}
    for key, element in dataset.items():
        if "BulkDataURI" in element:
            element = {**element, "BulkDataURI": f"{url}/{element['BulkDataURI']}"}
        elif element.get("vr") == "SQ" and "Value" in element:
            element = {**element, "Value": [_absolute(item, url) for item in element["Value"]]}
        out[key] = element
    return out


def _sidecars(path: Path) -> records.Sidecars:
    parser = Part10Parser(Limits())
    data = path.read_bytes()
    for start in range(0, len(data), 65536):
        parser.feed(data[start : start + 65536])
    parser.close()
    assert parser.header is not None
    return records.make_sidecars(parser, records.describe(parser.header), "g1")


def test_served_metadata_is_the_dataset_with_absolute_bulk_data_uris(tmp_path: Path) -> None:
    (file,) = make_slide(tmp_path, levels=1, base_size=(256, 256), associated=False)
    ds = pydicom.dcmread(file.path)
    ds.ImageComments = 'a value that reads "BulkDataURI": "bulkdata/00000000" stays as it is'
    ds.save_as(file.path, enforce_file_format=True)
    made = _sidecars(file.path)
    served = json.loads(records.served_metadata(made.metadata, URL))
    assert served == _absolute(made.sidecar["dataset"], URL)
    assert served["00480105"]["Value"][0]["00282000"]["BulkDataURI"] == f"{URL}/bulkdata/00480105.0.00282000"
    assert served["7FE00010"]["BulkDataURI"] == f"{URL}/bulkdata/7FE00010"
    assert served["00204000"]["Value"] == [ds.ImageComments]


def test_attributes_too_large_for_the_index_are_refused_before_anything_is_stored(tmp_path: Path) -> None:
    """An implicit-VR file gives each value a 32-bit length: a 1.5 MB StudyDescription made index documents
    that Cosmos DB refuses (above 2 MB), after the file had been stored."""
    (file,) = make_slide(tmp_path, levels=1, base_size=(256, 256), associated=False,
                         transfer_syntax=ExplicitVRLittleEndian)
    ds = pydicom.dcmread(file.path)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.StudyDescription = "fits " * 20_000  # 100 kB
    ds.save_as(file.path, implicit_vr=True, little_endian=True)
    assert _sidecars(file.path).sidecar["dataset"]["00081030"]["Value"] == [ds.StudyDescription.strip()]
    ds.StudyDescription = "x" * (records.MAX_INDEX_BYTES // 2)  # twice in the index: returned and matched
    ds.save_as(file.path, implicit_vr=True, little_endian=True)
    with pytest.raises(InvalidDataset, match="study-level attributes take"):
        _sidecars(file.path)
