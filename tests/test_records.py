"""The metadata sidecar and what is derived from it (no service needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom

from dicomweb import records
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
