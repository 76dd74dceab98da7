"""STOW-RS use case (PS3.18 §10.5): stream instances into Blob, then index them.

Per instance, in this order, so that a failure at any step leaves nothing behind:
1. parse the header as bytes arrive and validate it;
2. stage the bytes as blocks (bounded parallelism) while walking the fragments, refusing a
   SOP Instance UID that is already stored (POST) before the first block goes out;
3. commit the blocks as a new generation (a blob name never used before; one Put Blob for an
   instance smaller than a block) while its metadata and frame-offset sidecars are written
   (:func:`dicomweb.generations.describe`);
4. check the first and the last frame's codestream header against the Image Pixel attributes
   (from the bytes the walk kept; a ranged read when the header lies beyond them);
5. publish it (:func:`dicomweb.generations.publish`): the claim is the atomic store-wide
   uniqueness check and the moment the store happens; the index and the change feed follow.
A failure before step 5 removes what this request wrote (until step 3 the uncommitted blocks
never become a blob); a failure after the claim is rolled forward, by the next attempt or a
job, never back (:mod:`dicomweb.generations`). Nothing stored before is touched until step 5
displaces it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from typing import AsyncIterable, Awaitable, Callable, Mapping

from pydicom.dataset import Dataset

from dicomweb import audit, changefeed, cpu, generations, records
from dicomweb.dicom import codestream
from dicomweb.dicom.codecs import CodecError, PixelFormat
from dicomweb.dicom.dicomjson import JsonDict
from dicomweb.dicom.frames import FrameIndex, payload_head
from dicomweb.dicom.part10 import Part10Parser
from dicomweb.dicom.syntax import is_valid_uid
from dicomweb.errors import DicomWebError, InvalidDataset, PayloadTooLarge, StorageFailure, StudyMismatch
from dicomweb.service import Service
from dicomweb.storage.naming import AUTO, HOT, TIER_TAG, Location, new_generation
from dicomweb.storage.transfer import BlockUpload

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

    ``replace`` (PUT) makes it the current generation of its SOP Instance UID wherever
    that is stored (moving it when study or series differ); without it a stored SOP
    Instance UID is refused (reason 45070). ``generation`` names this copy (an upload
    session brings its own). Only a request body beyond the size limit (413) and
    cancellation escape, after the undo. Every outcome is audited.
    """
    generation = generation or new_generation()
    outcome = await _store(service, chunks, expected_study, replace, generation)
    error = outcome.error
    audit.record("replace" if replace else "store", "stored" if error is None else "failed",
                 **{field: uid if uid and is_valid_uid(uid) else None
                    for field, uid in (("study", outcome.study), ("series", outcome.series),
                                       ("instance", outcome.sop_instance))},
                 generation=generation if error is None else None,
                 status=error.status if error else None, reason=error.reason if error else None)
    return outcome


async def _store(service: Service, chunks: AsyncIterable[bytes], expected_study: str | None, replace: bool,
                 generation: str) -> Outcome:
    settings = service.settings
    parser = Part10Parser(settings.limits)
    upload: BlockUpload | None = None
    location: Location | None = None
    description: records.JsonDict = {}
    staged = 0
    written = False
    sequence: int | None = None

    async def stage(data: bytes) -> None:
        """Stage bytes of the instance; a stored SOP Instance UID (POST) is refused before its first block goes
        out (an instance smaller than a block is refused by its claim instead, which costs less than a read)."""
        nonlocal staged
        assert upload is not None and location is not None
        if staged < settings.block_size <= staged + len(data):
            await generations.reserve(service, location, replace)
        staged += len(data)
        await upload.write(data)

    try:
        async for chunk in chunks:
            # The header is parsed off the loop; after it, feeding only walks fragment item headers.
            out = await cpu.run(parser.feed, chunk) if parser.header is None else parser.feed(chunk)
            if upload is None and parser.header is not None:
                location, upload, description = await _begin(service, parser, expected_study, generation)
            if out:
                await stage(out)
        out = await cpu.run(parser.close)
        if upload is None:
            location, upload, description = await _begin(service, parser, expected_study, generation)
        await stage(out)
        assert location is not None
        record, made = await cpu.run(_sidecars, parser, description, generation)
        header = parser.header
        assert header is not None
        written = True  # from here on the file, the sidecars or both may exist: a failure settles the generation
        # The change-feed number is taken meanwhile; unused (the store fails first), it is skipped.
        results = await asyncio.gather(
            upload.commit({}, {TIER_TAG: tier(header.dataset, parser.stored_size, settings.hot_pin_bytes)}),
            generations.describe(service, location, made), service.changes.next_sequence(), return_exceptions=True)
        sequence = results[2] if isinstance(results[2], int) else None
        for result in results:
            if isinstance(result, BaseException):
                raise result
        await check_codestreams(record, description, parser.frame_heads,
                                functools.partial(service.blobs.instances.read_range, location))
        taken, sequence = sequence, None  # the number is publish's now: it records or skips it
        await generations.publish(service, made.sidecar, replace, taken)
        return Outcome(_text(header.dataset, "SOPClassUID"), location.sop, location.study, location.series)
    except (asyncio.CancelledError, PayloadTooLarge):
        await _undo(service, upload, location, written, sequence, late_writes=True)
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes a FailedSOPSequence item
        error = exc if isinstance(exc, DicomWebError) else StorageFailure(f"processing failed: {exc}")
        if not isinstance(exc, DicomWebError):
            log.exception("STOW failed")
        await _undo(service, upload, location, written, sequence, late_writes=isinstance(error, StorageFailure))
        dataset = parser.header.dataset if parser.header is not None else Dataset()
        return Outcome(
            _text(dataset, "SOPClassUID"), _text(dataset, "SOPInstanceUID"),
            _text(dataset, "StudyInstanceUID"), _text(dataset, "SeriesInstanceUID"), error,
        )


def pixel_format(description: records.JsonDict) -> PixelFormat | None:
    """The Image Pixel attributes of a described instance; None when it has none to decode its frames with."""
    try:
        return PixelFormat.from_json(description["dataset"])
    except CodecError:
        return None


def check_frame(head: bytes, number: int, record: FrameIndex, fmt: PixelFormat) -> bool:
    """43264 unless frame ``number``'s codestream header, in ``head`` (the frame or its first bytes), declares
    the image ``fmt`` describes; False when ``head`` ends before the header does."""
    try:
        codestream.check(head, record.transfer_syntax, fmt, record.payload_length(number))
    except codestream.Truncated:
        return False
    except codestream.HeaderError as exc:
        raise InvalidDataset(f"frame {number} is not the image the instance describes: {exc}") from None
    return True


async def check_codestreams(record: FrameIndex | None, description: records.JsonDict, heads: Mapping[int, bytes],
                            read: Callable[[int, int], Awaitable[bytes]]) -> None:
    """43264 unless the first and the last frame's codestream header (JPEG SOF, JPEG 2000 SIZ, JPEG-LS SOF55, RLE
    header) declares the image the Image Pixel attributes describe: decoders allocate what the header says, so a
    frame claiming 30000×30000 pixels is refused before it is ever decoded.

    Each header comes from ``heads`` (what the parser kept of the fragments it walked), else from ``read``
    (offset, length) of at most :data:`~dicomweb.dicom.codestream.MAX_HEADER` bytes of the stored frame.
    """
    if record is None or record.transfer_syntax not in codestream.HEADERS or (fmt := pixel_format(description)) is None:
        return
    for number in sorted({1, len(record)}):
        head = heads.get(record.item_start(number))
        if head is not None and check_frame(head, number, record, fmt):
            continue
        offset, length = record.read_span(number)
        data = await read(offset, min(length, codestream.MAX_HEADER))
        if not check_frame(payload_head(data, record.fragments[number - 1]), number, record, fmt):
            raise InvalidDataset(f"frame {number}'s codestream header does not end within its first "
                                 f"{codestream.MAX_HEADER} bytes")


def response(outcomes: list[Outcome], base: str) -> tuple[int, JsonDict, str | None]:
    """The STOW response (PS3.18 §10.5.3): status, dataset, warning text.

    200 all stored, 202 some, 409 none; 503 when none was stored only because storage
    failed (the client should simply try again after Retry-After).
    """
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
    if status == 409 and all(isinstance(o.error, StorageFailure) for o in failed):
        status = 503
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


async def _begin(service: Service, parser: Part10Parser, expected_study: str | None, generation: str
                 ) -> tuple[Location, BlockUpload, records.JsonDict]:
    """Validate and describe the header before any byte is staged."""
    assert parser.header is not None
    study, series, sop, _ = validate(parser.header.dataset, expected_study)
    description = await cpu.run(records.describe, parser.header, service.settings.max_inline_binary)
    location = Location(study, series, sop, generation)
    settings = service.settings
    upload = service.blobs.instances.upload(location, settings.block_size, settings.upload_concurrency)
    return location, upload, description


def _sidecars(parser: Part10Parser, description: records.JsonDict, generation: str
              ) -> tuple[FrameIndex | None, records.Sidecars]:
    """The frame offset record and both sidecars, in one hop to the CPU pool."""
    record = parser.frame_index(generation)
    return record, records.make_sidecars(parser, description, generation, record)


async def _undo(service: Service, upload: BlockUpload | None, location: Location | None, written: bool,
                sequence: int | None, late_writes: bool) -> None:
    """Drop uncommitted blocks, skip an unused change-feed number, and settle a generation this request may have
    written (removed unless its claim names it, then finished; once more shortly when a write of it timed out).
    Never anything stored before it."""
    try:
        if upload is not None:
            await upload.abort()
    except DicomWebError:
        log.warning("could not drop the uncommitted blocks of a failed STOW; Blob discards them within 7 days")
    if sequence is not None:
        try:
            await changefeed.skip(service, sequence)
        except DicomWebError:
            pass  # a hole the change feed skips by itself after DICOMWEB_CHANGEFEED_GAP_SECONDS
    if written and location is not None:
        await generations.abandon(service, location, late_writes)
