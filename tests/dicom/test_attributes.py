"""What index documents hold: catalog attributes per level, and small extra attributes on instances."""

from __future__ import annotations

from dicomweb.dicom.attributes import MAX_ELEMENT_BYTES, level_attributes, match_fields

DATASET = {
    "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.77.1.6"]},
    "00080060": {"vr": "CS", "Value": ["SM"]},
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Smith^John"}]},
    "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
    "00480001": {"vr": "FL", "Value": [2.5]},
    "00480105": {"vr": "SQ", "Value": [
        {"00282000": {"vr": "OB", "InlineBinary": "AAECAw=="}, "00480106": {"vr": "SH", "Value": ["1"]}},
        {"00282000": {"vr": "OB", "BulkDataURI": "bulkdata/00480105.1.00282000"}}]},
    "00091001": {"vr": "LT", "Value": ["x" * (MAX_ELEMENT_BYTES + 1)]},
    "7FE00010": {"vr": "OB", "BulkDataURI": "bulkdata/7FE00010"},
}


def test_study_and_series_documents_hold_only_their_catalog_attributes() -> None:
    assert set(level_attributes(DATASET, "study")) == {"00100010", "0020000D"}
    assert set(level_attributes(DATASET, "series")) == {"00080060", "00100010", "0020000D"}


def test_instance_documents_hold_small_attributes_their_binary_values_by_reference() -> None:
    held = level_attributes(DATASET, "instance")
    assert {"00080016", "00080060", "00100010", "00480001"} <= set(held)
    assert held["00480105"] == {"vr": "SQ", "Value": [
        {"00282000": {"vr": "OB", "BulkDataURI": "bulkdata/00480105.0.00282000"},
         "00480106": {"vr": "SH", "Value": ["1"]}},
        {"00282000": {"vr": "OB", "BulkDataURI": "bulkdata/00480105.1.00282000"}}]}, "inline or not, by URI"
    assert "7FE00010" not in held, "Pixel Data stays in the metadata"
    assert "00091001" not in held, "large values stay in the metadata"
    assert list(held) == sorted(held)


def test_match_fields_normalise_names_into_words() -> None:
    values, words = match_fields(DATASET, "instance")
    assert values["PatientName"] == ["SMITH^JOHN"] and words["PatientName"] == ["JOHN", "SMITH"]
    assert values["Modality"] == ["SM"]
