"""The metadata sidecar of an instance, and the index documents derived from it.

The sidecar is the bridge between Blob (system of record) and Cosmos (index): STOW
writes it, ``reindex`` reads it back, and both derive the same documents from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from dicomweb.dicom.attributes import level_attributes, match_fields
from dicomweb.dicom.dicomjson import BULKDATA, PIXEL_DATA_KEY, JsonDict, dataset_to_json
from dicomweb.dicom.frames import FrameIndex
from dicomweb.dicom.part10 import Header, Part10Parser
from dicomweb.errors import InvalidDataset
from dicomweb.storage.naming import Location
from dicomweb.storage.cosmos import Document, document_id

SIDECAR_VERSION = 1
AVAILABLE_TRANSFER_SYNTAX = "00083002"
#: The most one level's attributes may take in the index, as JSON (returned, matched and name words): Cosmos DB
#: refuses an item above 2 MB, and a study summary also holds a count per series. A value may be far longer
#: than its VR allows (an implicit-VR file gives each element a 32-bit length): 1.5 MB in StudyDescription
#: made documents Cosmos refused after the file was stored.
MAX_INDEX_BYTES = 512 * 1024


def _value(dataset: JsonDict, key: str) -> Any:
    values = dataset.get(key, {}).get("Value")
    return values[0] if values else None


def _flavor(dataset: JsonDict) -> str | None:
    """Value 3 of Image Type: VOLUME, THUMBNAIL, OVERVIEW, LABEL for whole-slide images (PS3.3 §C.8.12.4.1.1)."""
    values = dataset.get("00080008", {}).get("Value") or []
    return values[2] if len(values) >= 3 else None


def describe(header: Header, inline_bytes: int = 0) -> JsonDict:
    """What the header says, as the sidecar holds it: DICOM JSON without bulk values, and their byte ranges.

    Binary values up to ``inline_bytes`` are included inline (DICOMWEB_MAX_INLINE_BINARY_KB).
    Made as soon as the header has arrived, so that a value pydicom cannot convert, or
    attributes too large for the index (:data:`MAX_INDEX_BYTES`), are an invalid dataset
    (43264) before any byte is stored. CPU-heavy for large headers: run it with
    :func:`dicomweb.cpu.run`.
    """
    dataset, bulk = dataset_to_json(header.dataset, header.dataset_base, inline_bytes)
    if header.pixel_vr is not None:
        dataset[PIXEL_DATA_KEY] = {"vr": header.pixel_vr, "BulkDataURI": BULKDATA + PIXEL_DATA_KEY}
    dataset[AVAILABLE_TRANSFER_SYNTAX] = {"vr": "UI", "Value": [header.transfer_syntax]}
    for level in ("study", "series", "instance"):
        values, words = match_fields(dataset, level)
        size = len(json.dumps([level_attributes(dataset, level), values, words]))
        if size > MAX_INDEX_BYTES:
            raise InvalidDataset(f"the {level}-level attributes take {size} bytes in the index, more than "
                                 f"{MAX_INDEX_BYTES}")
    return {
        "transferSyntaxUID": header.transfer_syntax,
        "bulk": {path: list(span) for path, span in bulk.items()},
        "dataset": dict(sorted(dataset.items())),
    }


@dataclass(frozen=True)
class Sidecars:
    """The two sidecars of a generation, ready to write."""

    sidecar: JsonDict
    metadata: bytes
    frames: bytes | None


def make_sidecars(parser: Part10Parser, description: JsonDict, generation: str, frame_index: FrameIndex | None = None,
                  size: int | None = None) -> Sidecars:
    """Metadata sidecar (the description and storage facts) and frame offset record of a parsed instance.

    The record and size are the parser's, unless given (an upload's checked record, and
    the staged blob's size, when the parser walked only part of the file).
    CPU-heavy for many frames: run it with :func:`dicomweb.cpu.run`.
    """
    frame_index = frame_index or parser.frame_index(generation)
    sidecar = {
        "version": SIDECAR_VERSION,
        "generation": generation,
        "transferSyntaxUID": description["transferSyntaxUID"],
        "size": parser.stored_size if size is None else size,
        "numberOfFrames": len(frame_index) if frame_index is not None else None,
        "bulk": description["bulk"],
        "dataset": description["dataset"],
    }
    return Sidecars(sidecar, json.dumps(sidecar).encode(), frame_index.to_bytes() if frame_index is not None else None)


#: How the metadata sidecar's bytes open its dataset (written last by :func:`make_sidecars`), and how a
#: relative BulkDataURI looks in them (unescaped quotes: only ever a key and its value, never inside a value).
_DATASET_OPENING = b', "dataset": '
_RELATIVE_BULK_URI = b'"BulkDataURI": "' + BULKDATA.encode()


def served_metadata(raw: bytes, instance_url: str, availability: str | None = None) -> bytes:
    """The DICOM JSON of a metadata sidecar as WADO-RS serves it, straight from the sidecar's bytes; with
    ``availability``, first the instance's Instance Availability (0008,0056), which changes with the tier (so
    the sidecar cannot hold it).

    The dataset is cut out of the bytes and its relative BulkDataURIs made absolute by one
    byte replacement: no parse and no serialisation, whatever the size of the header.
    """
    start = raw.find(_DATASET_OPENING) + len(_DATASET_OPENING)
    if start < len(_DATASET_OPENING) or not raw.endswith(b"}") or raw[start : start + 1] != b"{":
        raise ValueError("not a metadata sidecar")
    dataset = raw[start:-1]
    if availability is not None:
        rest = dataset[1:]
        dataset = b'{"00080056": {"vr": "CS", "Value": ["' + availability.encode() + b'"]}' + (
            b"}" if rest.strip() == b"}" else b", " + rest)
    return dataset.replace(_RELATIVE_BULK_URI, b'"BulkDataURI": "' + instance_url.encode() + b"/" + BULKDATA.encode())


def uids(sidecar: JsonDict) -> tuple[str, str, str]:
    """(study, series, instance) UIDs of a sidecar."""
    dataset = sidecar["dataset"]
    return _value(dataset, "0020000D"), _value(dataset, "0020000E"), _value(dataset, "00080018")


def documents(sidecar: JsonDict) -> list[Document]:
    """Study, series and instance index documents for one stored instance.

    Study and series documents get their counts from :mod:`dicomweb.generations`, which
    changes them in one transactional batch with the instance document.
    """
    dataset = sidecar["dataset"]
    study, series, instance = uids(sidecar)
    docs = []
    for level, uid in (("study", study), ("series", series), ("instance", instance)):
        values, words = match_fields(dataset, level)
        doc: Document = {"id": document_id(level, uid), "type": level, "studyInstanceUID": study,
                         "m": values, "w": words, "attributes": level_attributes(dataset, level)}
        if level != "study":
            doc["seriesInstanceUID"] = series
        docs.append(doc)
    docs[2].update({
        "sopInstanceUID": instance,
        "sopClassUID": _value(dataset, "00080016"),
        "instanceNumber": _value(dataset, "00200013"),
        "transferSyntaxUID": sidecar["transferSyntaxUID"],
        "numberOfFrames": sidecar["numberOfFrames"],
        "size": sidecar["size"],
        "generation": sidecar["generation"],
        "modality": _value(dataset, "00080060"),
        # What thumbnails and pyramid-aware rendering choose instances by (PS3.3 §C.8.12.4).
        "imageType": _flavor(dataset),
        "totalPixelMatrix": [_value(dataset, "00480006"), _value(dataset, "00480007")]
        if _value(dataset, "00480006") else None,
        "frameOfReferenceUID": _value(dataset, "00200052"),
    })
    return docs


def named(doc: Document) -> Location:
    """The generation a claim or a change-feed entry names (both keep it as study, series, sop, generation)."""
    return Location(doc["study"], doc["series"], doc["sop"], doc["generation"])


def location(sidecar: JsonDict) -> Location:
    """Where the generation a sidecar describes lives."""
    study, series, instance = uids(sidecar)
    return Location(study, series, instance, sidecar["generation"])
