"""The metadata sidecar of an instance, and the index documents derived from it.

The sidecar is the bridge between Blob (system of record) and Cosmos (index): STOW
writes it, ``reindex`` reads it back, and both derive the same documents from it.
"""

from __future__ import annotations

from typing import Any

from dicomweb.dicom.attributes import level_attributes, match_fields
from dicomweb.dicom.dicomjson import BULKDATA, PIXEL_DATA_KEY, JsonDict, dataset_to_json
from dicomweb.dicom.part10 import Header
from dicomweb.storage.blobs import Location
from dicomweb.storage.index import Document, document_id

SIDECAR_VERSION = 1
AVAILABLE_TRANSFER_SYNTAX = "00083002"


def _value(dataset: JsonDict, key: str) -> Any:
    values = dataset.get(key, {}).get("Value")
    return values[0] if values else None


def make_sidecar(header: Header, generation: str, size: int, frame_count: int | None) -> JsonDict:
    """Metadata sidecar: DICOM JSON without bulk values, bulk byte ranges, and storage facts."""
    dataset, bulk = dataset_to_json(header.dataset, header.dataset_base)
    if header.pixel_vr is not None:
        dataset[PIXEL_DATA_KEY] = {"vr": header.pixel_vr, "BulkDataURI": BULKDATA + PIXEL_DATA_KEY}
    dataset[AVAILABLE_TRANSFER_SYNTAX] = {"vr": "UI", "Value": [header.transfer_syntax]}
    return {
        "version": SIDECAR_VERSION,
        "generation": generation,
        "transferSyntaxUID": header.transfer_syntax,
        "size": size,
        "numberOfFrames": frame_count,
        "bulk": {path: list(span) for path, span in bulk.items()},
        "dataset": dict(sorted(dataset.items())),
    }


def uids(sidecar: JsonDict) -> tuple[str, str, str]:
    """(study, series, instance) UIDs of a sidecar."""
    dataset = sidecar["dataset"]
    return _value(dataset, "0020000D"), _value(dataset, "0020000E"), _value(dataset, "00080018")


def documents(sidecar: JsonDict) -> list[Document]:
    """Study, series and instance index documents for one stored instance.

    Study and series documents get their counts and per-modality counts from
    :mod:`dicomweb.indexing`, which keeps them with atomic increments.
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
    })
    return docs


def named(doc: Document) -> Location:
    """The generation a claim or a change-feed entry names (both keep it as study, series, sop, generation)."""
    return Location(doc["study"], doc["series"], doc["sop"], doc["generation"])


def location(sidecar: JsonDict) -> Location:
    """Where the generation a sidecar describes lives."""
    study, series, instance = uids(sidecar)
    return Location(study, series, instance, sidecar["generation"])
