"""Which attributes belong to the study, series and instance levels of the index.

The sets follow PS3.18 Tables 10.6.3-3/-4/-5 (QIDO-RS return keys), plus what
pathology viewers show or filter on: Slim's worklist columns at study level and the
WSI attributes wsidicom and Slim read at instance level.
"""

from __future__ import annotations

from pydicom.datadict import tag_for_keyword

from dicomweb.dicom.dicomjson import JsonDict

STUDY = (
    "SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability",
    "ReferringPhysicianName", "TimezoneOffsetFromUTC", "StudyDescription", "PatientName", "PatientID",
    "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
)
SERIES = (
    "Modality", "SeriesDescription", "SeriesNumber", "SeriesInstanceUID", "SeriesDate", "SeriesTime",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "RequestAttributesSequence",
    "Manufacturer", "ManufacturerModelName", "BodyPartExamined", "FrameOfReferenceUID",
)
INSTANCE = (
    "SOPClassUID", "SOPInstanceUID", "InstanceNumber", "ImageType", "Rows", "Columns", "BitsAllocated",
    "NumberOfFrames", "TotalPixelMatrixColumns", "TotalPixelMatrixRows", "ContainerIdentifier",
    "ContentDate", "ContentTime", "AcquisitionDateTime", "DimensionOrganizationType",
    "SpecimenDescriptionSequence",
)

LEVELS = {"study": STUDY, "series": SERIES, "instance": INSTANCE}


def _key(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return f"{tag:08X}"


_KEYS = {level: tuple(_key(k) for k in keywords) for level, keywords in LEVELS.items()}


def level_json(dataset: JsonDict, level: str) -> JsonDict:
    """The attributes of ``level`` present in a DICOM JSON ``dataset``."""
    return {key: dataset[key] for key in _KEYS[level] if key in dataset}
