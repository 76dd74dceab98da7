"""The attributes the search index knows: their level, how they match, what QIDO returns.

Levels and default return keys follow PS3.18 Tables 10.6.3-3/-4/-5; matching follows
PS3.4 §C.2.2.2 (single value, UID list, wildcard, range, and fuzzy person names as the
Azure DICOM service does them). Pathology additions: SOP Class, Image Type, frame and
matrix sizes, container and specimen identifiers, the stored transfer syntax, and the
study columns Slim's worklist shows.

Each index document carries, per searchable attribute, a list of normalised values
under ``m`` (dates as YYYYMMDD, times as HHMMSS.ffffff, person names upper-cased) and,
for person names, the upper-cased name words under ``w``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from dicomweb.dicom.dicomjson import BULKDATA, PIXEL_DATA_KEY, JsonDict

LEVELS = ("study", "series", "instance")
#: Largest DICOM JSON of one attribute an instance document holds beyond the catalog's, and of all of them.
MAX_ELEMENT_BYTES = 16 * 1024
MAX_INSTANCE_EXTRA_BYTES = 128 * 1024


@dataclass(frozen=True)
class Attribute:
    """One attribute of the index."""

    keyword: str
    level: str
    kind: str  # uid | string | pn | date | time | datetime | number, or "" when only returned
    default: bool = True  # among the level's default return keys
    computed: bool = False  # derived by the service, not read from the instance

    @property
    def tag(self) -> str:
        tag = tag_for_keyword(self.keyword)
        assert tag is not None, self.keyword
        return f"{tag:08X}"

    @property
    def searchable(self) -> bool:
        return bool(self.kind)


def _catalog(level: str, rows: str) -> list[Attribute]:
    """Rows of ``Keyword kind [flags]``; flags: ``extra`` (not a default return key), ``computed``."""
    attributes = []
    for row in rows.strip().splitlines():
        keyword, kind, *flags = row.split()
        attributes.append(Attribute(keyword, level, "" if kind == "-" else kind, "extra" not in flags,
                                    "computed" in flags))
    return attributes


CATALOG: tuple[Attribute, ...] = tuple(
    _catalog("study", """
        SpecificCharacterSet -
        StudyDate date
        StudyTime time
        AccessionNumber string
        InstanceAvailability - computed
        ModalitiesInStudy string computed
        ReferringPhysicianName pn
        TimezoneOffsetFromUTC -
        PatientName pn
        PatientID string
        IssuerOfPatientID string extra
        PatientBirthDate date
        PatientSex string
        StudyInstanceUID uid
        StudyID string
        StudyDescription string
        NumberOfStudyRelatedSeries - computed
        NumberOfStudyRelatedInstances - computed
    """)
    + _catalog("series", """
        Modality string
        SeriesInstanceUID uid
        SeriesNumber number
        SeriesDescription string
        SeriesDate date extra
        SeriesTime time extra
        PerformedProcedureStepStartDate date
        PerformedProcedureStepStartTime time
        RequestAttributesSequence -
        BodyPartExamined string extra
        Manufacturer string extra
        ManufacturerModelName - extra
        FrameOfReferenceUID uid extra
        NumberOfSeriesRelatedInstances - computed
    """)
    + _catalog("instance", """
        SOPClassUID uid
        SOPInstanceUID uid
        InstanceNumber number
        ImageType string
        Rows -
        Columns -
        BitsAllocated -
        NumberOfFrames number
        TotalPixelMatrixColumns -
        TotalPixelMatrixRows -
        ContainerIdentifier string
        SpecimenUID uid
        SpecimenDescriptionSequence - extra
        DimensionOrganizationType string extra
        ContentDate date extra
        ContentTime time extra
        AcquisitionDateTime datetime extra
        AvailableTransferSyntaxUID uid
    """)
)

BY_KEYWORD = {a.keyword: a for a in CATALOG}
BY_TAG = {a.tag: a for a in CATALOG}
#: Attributes read from inside a sequence of the instance, not from its top level.
NESTED = {"SpecimenUID": "SpecimenDescriptionSequence"}


def at_level(level: str) -> list[Attribute]:
    """Attributes a document of ``level`` holds: its own and its ancestors'."""
    depth = LEVELS.index(level)
    return [a for a in CATALOG if LEVELS.index(a.level) <= depth]


def lookup(name: str) -> Attribute | None:
    """An attribute by keyword or 8-digit tag; None if the index does not know it."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        return BY_TAG.get(name.upper())
    return BY_KEYWORD.get(name)


def is_dicom_attribute(name: str) -> bool:
    """Whether ``name`` is any attribute of the data dictionary (keyword or tag)."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        try:
            dictionary_VR(int(name, 16))
            return True
        except KeyError:
            return False
    return tag_for_keyword(name) is not None


def keyword_of(name: str) -> str:
    """Keyword for a keyword or tag (tags without a keyword stay as given)."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        return keyword_for_tag(int(name, 16)) or name.upper()
    return name


def normalise_time(value: str, upper: bool = False) -> str:
    """HHMMSS.ffffff, padding missing parts with zeros (or, for an upper bound, with their maximum)."""
    whole, _, fraction = value.partition(".")
    pad = "235959" if upper else "000000"
    whole = whole + pad[len(whole):]
    fraction = (fraction + ("999999" if upper else "000000"))[:6]
    return f"{whole}.{fraction}"


def normalise_datetime(value: str, upper: bool = False) -> str:
    """YYYYMMDDHHMMSS.ffffff (time zone offsets are ignored)."""
    value = re.split(r"[+-]", value, maxsplit=1)[0] if len(value) > 8 else value
    date, time = value[:8], value[8:]
    if len(date) < 8:
        date = date + ("1231" if upper else "0101")[len(date) - 4:]
    return date + normalise_time(time, upper)


def name_words(name: str) -> list[str]:
    """Upper-cased words of a person name, for fuzzy matching (any component, any word)."""
    return [w for w in re.split(r"[\^= ]+", name.upper()) if w]


def _values(element: JsonDict | None) -> list[Any]:
    if not element:
        return []
    return [v for v in element.get("Value", []) if v is not None and v != ""]


def _normalise(attribute: Attribute, value: Any) -> Any:
    if attribute.kind == "pn":
        return str(value.get("Alphabetic", "") if isinstance(value, dict) else value).upper()
    if attribute.kind == "time":
        return normalise_time(str(value))
    if attribute.kind == "datetime":
        return normalise_datetime(str(value))
    if attribute.kind == "number":
        return int(float(value))
    return str(value)


def element_of(dataset: JsonDict, attribute: Attribute) -> JsonDict | None:
    """The DICOM JSON element of ``attribute`` in ``dataset`` (nested ones: every item's values)."""
    parent = NESTED.get(attribute.keyword)
    if parent is None:
        return dataset.get(attribute.tag)
    items = _values(dataset.get(BY_KEYWORD[parent].tag))
    values = [v for item in items for v in _values(item.get(attribute.tag))]
    return {"vr": "UI", "Value": values} if values else None


def match_fields(dataset: JsonDict, level: str) -> tuple[dict[str, list[Any]], dict[str, list[str]]]:
    """The ``m`` (normalised values) and ``w`` (person-name words) fields of a ``level`` document."""
    values: dict[str, list[Any]] = {}
    words: dict[str, list[str]] = {}
    for attribute in at_level(level):
        if not attribute.searchable or attribute.computed:
            continue
        found = [_normalise(attribute, v) for v in _values(element_of(dataset, attribute))]
        if found:
            values[attribute.keyword] = found
            if attribute.kind == "pn":
                words[attribute.keyword] = sorted({w for name in found for w in name_words(name)})
    return values, words


def _by_reference(element: JsonDict, path: str) -> JsonDict:
    """``element`` (at tag ``path``) with each binary value in it, inline or not, as a relative BulkDataURI, which
    the bulkdata resource serves either way: what QIDO can return of it (PS3.18 §10.6.3.3 lets a search return any
    attribute, and clients such as EZ-WSI find the ICC profile there)."""
    if "BulkDataURI" in element or "InlineBinary" in element:
        return {"vr": element["vr"], "BulkDataURI": BULKDATA + path}
    if element.get("vr") != "SQ" or not element.get("Value"):
        return element
    return {"vr": "SQ", "Value": [{key: _by_reference(child, f"{path}.{i}.{key}") for key, child in item.items()}
                                  for i, item in enumerate(element["Value"])]}


def level_attributes(dataset: JsonDict, level: str) -> JsonDict:
    """The stored (not computed) attributes a ``level`` document returns, as DICOM JSON.

    Study and series documents hold the catalog's attributes of their level. Instance
    documents also hold every other top-level attribute whose DICOM JSON is small, binary
    values by relative BulkDataURI (an optical path's ICC profile), so ``includefield`` can name
    any of them (PS3.18 §8.3.4.3); large ones (per-frame functional groups of a sparse slide) and
    Pixel Data are read from the metadata.
    """
    out = {}
    for attribute in at_level(level):
        if attribute.computed or attribute.keyword in NESTED:
            continue
        if attribute.tag in dataset:
            out[attribute.tag] = dataset[attribute.tag]
    if level == "instance":
        budget = MAX_INSTANCE_EXTRA_BYTES
        for tag, element in dataset.items():
            if tag in out or tag == PIXEL_DATA_KEY:
                continue
            element = _by_reference(element, tag)
            size = len(json.dumps(element))
            if size <= MAX_ELEMENT_BYTES and size <= budget:
                out[tag] = element
                budget -= size
    return dict(sorted(out.items()))
