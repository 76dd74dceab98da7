"""STOW-RS use case (PS3.18 §10.5): stream instances into Blob, then index them.

Per instance, in this order, so that a failure at any step leaves nothing behind:
1. parse the header as bytes arrive, validate it, refuse known duplicates early;
2. stage the bytes as blocks (bounded parallelism) while walking the fragments;
3. commit the block list with ``If-None-Match: *`` (the atomic duplicate check);
4. write the metadata and frame-offset sidecars;
5. index study, series and instance in Cosmos.
Any failure after step 3 deletes what this request wrote; before it, the
uncommitted blocks never become a blob.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from typing import AsyncIterable

from pydicom.dataset import Dataset

from dicomweb import records
from dicomweb.dicom.dicomjson import JsonDict
from dicomweb.dicom.part10 import Part10Parser
from dicomweb.dicom.syntax import is_valid_uid
from dicomweb.errors import DicomWebError, Duplicate, InvalidDataset, PayloadTooLarge, StorageFailure, StudyMismatch
from dicomweb.indexing import index_instance
from dicomweb.service import Service
from dicomweb.storage.blobs import AUTO, GENERATION, HOT, TIER_TAG, BlockUpload, instance_name, sidecar_name

log = logging.getLogger(__name__)

REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
#: Image Type values (PS3.3 C.8.12.4.1.1, value 3) of the slide's associated images: always at hand.
ASSOCIATED_IMAGES = frozenset({"LABEL", "OVERVIEW", "THUMBNAIL"})


@dataclass(frozen=True)
class Outcome:
    """What happened to one instance of a STOW request."""

    sop_class: str | None
    sop_instance: str | None
    study: str | None = None
    series: str | None = None
    error: DicomWebError | None = None


def validate(dataset: Dataset, expected_study: str | None) -> tuple[str, str, str, str]:
    """Required attributes (as the Azure DICOM service requires them) and UID syntax (PS3.5 §9.1)."""
    values = []
    for keyword in REQUIRED_UIDS:
        value = str(dataset.get(keyword, "") or "").strip()
        if not value:
            raise InvalidDataset(f"{keyword} is missing or empty")
        if not is_valid_uid(value):
            raise InvalidDataset(f"{keyword} {value!r} is not a valid UID")
        values.append(value)
    if "PatientID" not in dataset:
        raise InvalidDataset("PatientID is missing")
    if expected_study is not None and values[0] != expected_study:
        raise StudyMismatch(f"StudyInstanceUID {values[0]} is not the study {expected_study} of the request")
    study, series, instance, sop_class = values
    return study, series, instance, sop_class


def tier(dataset: Dataset, size: int, pin_bytes: int) -> str:
    """The lifecycle class of an instance: labels, overviews, thumbnails and small levels stay hot.

    A viewer opening a slide reads them first (the worklist thumbnail, the label, the
    overview, the low-resolution levels); only the large levels can wait for cooler tiers.
    """
    image_type = [str(v).upper() for v in (dataset.get("ImageType") or [])]
    if ASSOCIATED_IMAGES & set(image_type[2:3]) or size <= pin_bytes:
        return HOT
    return AUTO


async def store_instance(service: Service, chunks: AsyncIterable[bytes], expected_study: str | None,
                         replace: bool = False, generation: str | None = None) -> Outcome:
    """Store one instance read from ``chunks``; never raises for bad input or storage failures.

    ``replace`` (PUT) overwrites a stored instance of the same SOP Instance UID; without
    it a stored one makes the instance a duplicate (reason 45070). ``generation`` names
    this copy of the instance (an upload session brings its own). Only a request body
    beyond the size limit (413) and cancellation escape, after the undo.
    """
    settings = service.settings
    parser = Part10Parser(settings.max_header_bytes)
    upload: BlockUpload | None = None
    name = None
    ids: tuple[str, str, str, str] | None = None
    committed = False
    generation = generation or uuid.uuid4().hex
    try:
        async for chunk in chunks:
            out = parser.feed(chunk)
            if upload is None and parser.header is not None:
                ids, name, upload = await _begin(service, parser, expected_study, replace)
            if out:
                assert upload is not None
                await upload.write(out)
        out = parser.close()
        if upload is None:
            ids, name, upload = await _begin(service, parser, expected_study, replace)
        await upload.write(out)
        frame_index = parser.frame_index(generation)
        study, series, instance, sop_class = ids
        header = parser.header
        assert header is not None
        tags = {TIER_TAG: tier(header.dataset, parser.stored_size, settings.hot_pin_bytes)}
        await upload.commit({GENERATION: generation}, tags, overwrite=replace)
        committed = True
        if replace:
            service.frame_indexes.drop(name)
            service.frames.drop_instance(name)
        sidecar = records.make_sidecar(
            header, generation, parser.stored_size, len(frame_index) if frame_index is not None else None
        )
        await service.blobs.put_sidecar(sidecar_name(study, series, instance, "json"), json.dumps(sidecar).encode())
        if frame_index is not None:
            await service.blobs.put_sidecar(sidecar_name(study, series, instance, "frames"), frame_index.to_bytes())
        await index_instance(service, sidecar, replace)
        return Outcome(sop_class, instance, study, series)
    except (asyncio.CancelledError, PayloadTooLarge):
        await _undo(service, upload, name, ids, committed and not replace)
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes a FailedSOPSequence item
        error = exc if isinstance(exc, DicomWebError) else StorageFailure(f"processing failed: {exc}")
        if not isinstance(exc, DicomWebError):
            log.exception("STOW failed")
        # A replacement's old bytes are gone once committed: keep the new ones; reindex repairs the rest.
        await _undo(service, upload, name, ids, committed and not replace)
        dataset = parser.header.dataset if parser.header is not None else Dataset()
        return Outcome(
            _text(dataset, "SOPClassUID"), _text(dataset, "SOPInstanceUID"),
            _text(dataset, "StudyInstanceUID"), _text(dataset, "SeriesInstanceUID"), error,
        )


def response(outcomes: list[Outcome], base: str) -> tuple[int, JsonDict, str | None]:
    """The STOW response (PS3.18 §10.5.3): status (200 all stored, 202 some, 409 none), dataset, warning text."""
    stored = [o for o in outcomes if o.error is None]
    failed = [o for o in outcomes if o.error is not None]
    body: JsonDict = {}
    studies = {o.study for o in stored}
    if len(studies) == 1:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{studies.pop()}"]}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [
            {**_reference(o), "00081190": {"vr": "UR", "Value": [
                f"{base}/studies/{o.study}/series/{o.series}/instances/{o.sop_instance}"]}}
            for o in stored
        ]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [
            {**_reference(o), "00081197": {"vr": "US", "Value": [o.error.reason]}}  # type: ignore[union-attr]
            for o in failed
        ]}
    status = 200 if not failed else 202 if stored else 409
    warning = "; ".join(f"{o.sop_instance or 'unknown instance'}: {o.error.message}"  # type: ignore[union-attr]
                        for o in failed) or None
    return status, body, warning


def _reference(outcome: Outcome) -> JsonDict:
    item = {}
    if outcome.sop_class:
        item["00081150"] = {"vr": "UI", "Value": [outcome.sop_class]}
    if outcome.sop_instance:
        item["00081155"] = {"vr": "UI", "Value": [outcome.sop_instance]}
    return item


def _text(dataset: Dataset, keyword: str) -> str | None:
    value = dataset.get(keyword)
    return str(value) if value else None


async def _begin(
    service: Service, parser: Part10Parser, expected_study: str | None, replace: bool
) -> tuple[tuple[str, str, str, str], str, BlockUpload]:
    """Validate the header and refuse a known duplicate before any byte is staged."""
    assert parser.header is not None
    ids = validate(parser.header.dataset, expected_study)
    study, series, instance, _ = ids
    name = instance_name(study, series, instance)
    if not replace and (
        await service.index.find(study, "instance", instance) is not None or await service.blobs.exists(name)
    ):
        raise Duplicate(f"SOP instance {instance} is already stored")
    settings = service.settings
    return ids, name, service.blobs.upload(name, settings.block_size, settings.upload_concurrency)


async def _undo(
    service: Service,
    upload: BlockUpload | None,
    name: str | None,
    ids: tuple[str, str, str, str] | None,
    committed: bool,
) -> None:
    """Remove what this request wrote; never what was stored before it."""
    try:
        if upload is not None and not committed:
            await upload.abort()
        if committed and ids is not None:
            study, series, instance, _ = ids
            await service.blobs.delete(
                name,
                [sidecar_name(study, series, instance, "json"), sidecar_name(study, series, instance, "frames")],
            )
    except DicomWebError:
        log.exception("cleanup after a failed STOW failed; reindex will reconcile")
