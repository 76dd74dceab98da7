"""The STOW use case's pure parts: required attributes and the lifecycle class of an instance."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from dicomweb.errors import InvalidDataset, StudyMismatch
from dicomweb.storage.naming import AUTO, HOT
from dicomweb.stow import tier, validate


def _dataset(image_type: list[str] | None = None) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.3", "1.2.3.4", "1.2.3.4.5"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.6"
    ds.PatientID = "P"
    if image_type is not None:
        ds.ImageType = image_type
    return ds


@pytest.mark.parametrize("image_type,size,expected", [
    (["ORIGINAL", "PRIMARY", "VOLUME", "NONE"], 10**9, AUTO),
    (["ORIGINAL", "PRIMARY", "VOLUME", "NONE"], 10**6, HOT),
    (["ORIGINAL", "PRIMARY", "LABEL", "NONE"], 10**9, HOT),
    (["ORIGINAL", "PRIMARY", "overview", "NONE"], 10**9, HOT),
    (["DERIVED", "PRIMARY", "THUMBNAIL", "RESAMPLED"], 10**9, HOT),
    (None, 10**9, AUTO),
])
def test_associated_images_and_small_instances_stay_hot(image_type: list[str] | None, size: int,
                                                        expected: str) -> None:
    assert tier(_dataset(image_type), size, pin_bytes=256 * 2**20) == expected


def test_validation_names_what_is_wrong() -> None:
    assert validate(_dataset(), None) == ("1.2.3", "1.2.3.4", "1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.77.1.6")
    with pytest.raises(StudyMismatch):
        validate(_dataset(), "9.9")
    broken = _dataset()
    broken.SOPInstanceUID = "1.02"
    with pytest.raises(InvalidDataset, match="SOPInstanceUID"):
        validate(broken, None)
    del broken.PatientID
    broken.SOPInstanceUID = "1.2"
    with pytest.raises(InvalidDataset, match="PatientID"):
        validate(broken, None)
