"""The inbox: a scanner file written to the inbox container is converted to DICOM and stored, with no client
involved (``DICOMWEB_INBOX_CONTAINER``; Event Grid delivers its ``BlobCreated`` events to
``DICOMWEB_INBOX_QUEUE``, whose queue-triggered function hands each message to :func:`handle`).

One file, one conversion, on whichever worker gets the message:

1. **Claimed** in its status record (``operations/inbox/<hash of its name>.json`` in the staging
   container), conditioned on the record's etag: a duplicate event finds it ``converting`` (or
   ended) and stops; a worker that vanished leaves a claim that lapses after the function timeout.
2. **Downloaded** to local disk, streamed, and **converted** (:class:`dicomweb.converter.Converter`,
   in a process of its own: it keeps a core busy), the metadata coming from the blob's own metadata
   (``x-ms-meta-PatientID``: azcopy ``--metadata``, Storage Explorer).
3. **Stored** once the whole file is converted, each instance through an upload session
   (:mod:`dicomweb.uploads`, the path clients use: the same checks, the same generation owner).
   UIDs are stable for the same file and metadata, so a file dropped again answers "exists".
4. **Ended**: ``stored`` with the study and series UIDs, or ``failed`` with the reason; the
   instances this run stored are deleted again when any other failed (nothing half-stored). The
   file then moves under ``done/`` or ``failed/`` (``DICOMWEB_INBOX_SOURCES=delete`` deletes a stored one).

A file the converter refuses fails at once; storage failures raise so that the queue
delivers the message again, and its last delivery records ``failed``. Files beyond
``DICOMWEB_INBOX_MAX_GB`` fail with the reason: the instance's disk, memory and the
function timeout bound what one worker converts (README: "The inbox").
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pydicom

from dicomweb import audit, auth, blobevents, convert, delete, jobs, uploads
from dicomweb.converter import Converter
from dicomweb.dicom.part10 import frame_record
from dicomweb.errors import REASON_DUPLICATE, REASON_PROCESSING_FAILURE, DicomWebError, InvalidDataset, NotFound
from dicomweb.service import Service
from dicomweb.storage.inbox import InboxFile
from dicomweb.storage.transfer import StaleBlob

log = logging.getLogger(__name__)

RECORDS = "operations/inbox/"
DONE, FAILED = "done/", "failed/"
CONVERTING, RETRYING, STORED, FAILURE = "converting", "retrying", "stored", "failed"
#: Events that put a file in the inbox (a Put Blob, a Put Block List, a copy).
CREATED = {"Microsoft.Storage.BlobCreated"}
#: A claim older than this lost its worker (the function timeout of host.json is 30 minutes).
CLAIM_SECONDS = 35 * 60
#: The job that looks at a file again once another delivery's claim on it would have lapsed.
RECHECK = "inbox-recheck"
#: Conversions one worker runs at once: each keeps a core busy and holds a slide on disk twice.
CONVERSIONS = 1
#: Instances of one slide stored at once, and blocks of one instance written at once (each block of
#: DICOMWEB_BLOCK_SIZE_MB: 128 MiB in flight by default).
STORE_CONCURRENCY = 2
BLOCK_CONCURRENCY = 8
#: The inbox acts as this principal (audit records, upload sessions).
PRINCIPAL = auth.Principal("inbox", None, auth.ALL)
#: How often an instance's ingest is looked at, and how long it may take.
POLL_SECONDS = 0.25
INGEST_SECONDS = 20 * 60
#: Status records ``GET /inbox`` lists at most.
MOST_LISTED = 200

_slots: asyncio.Semaphore | None = None


class Refused(DicomWebError):
    """The file cannot be stored, whatever the delivery: too large, or an instance the service refuses."""

    status = 422


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def record_name(file: str) -> str:
    """Where the status of inbox file ``file`` is kept (a hash: names are any length and may hold anything)."""
    return f"{RECORDS}{hashlib.sha256(file.encode()).hexdigest()[:40]}.json"


async def status(service: Service, file: str) -> dict[str, Any]:
    """The status record of inbox file ``file`` (404 when the inbox never saw it)."""
    try:
        data, _ = await service.blobs.staging.get_record(record_name(file))
    except NotFound:
        raise NotFound("the inbox has no record of that file") from None
    return _public(json.loads(data))


async def recent(service: Service) -> list[dict[str, Any]]:
    """The status records, the latest first (at most :data:`MOST_LISTED`)."""
    names = [name async for name in service.blobs.staging.list_records(RECORDS)]
    found = await asyncio.gather(*(service.blobs.staging.get_record(name) for name in names[: MOST_LISTED * 4]),
                                 return_exceptions=True)
    records = [_public(json.loads(item[0])) for item in found if isinstance(item, tuple)]
    return sorted(records, key=lambda r: r.get("updated", ""), reverse=True)[:MOST_LISTED]


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "recordEtag"}


def _metadata(file: InboxFile) -> convert.SlideMetadata:
    """The slide metadata a file's blob metadata carries (keys as the CLI's metadata files name them)."""
    fields = {key.lower(): field for field, key in convert.KEYS.items()}
    return convert.SlideMetadata(**{fields[k]: v for k, v in file.metadata.items() if k in fields and v})


async def handle(service: Service, text: str, last: bool) -> int:
    """Convert and store the inbox files one queue message's events put there; how many were looked at.

    ``last``: this is the message's last delivery, so a failure records ``failed`` instead of
    only raising for another delivery.
    """
    container = service.settings.inbox_container
    names = {name for event in blobevents.parse(text)
             if (name := blobevents.blob_name(event, container, CREATED)) and not name.startswith((DONE, FAILED))}
    for name in sorted(names):
        await _one(service, name, last)
    return len(names)


async def _one(service: Service, name: str, last: bool) -> None:
    global _slots
    try:
        file = await service.blobs.inbox.describe(name)
    except NotFound:
        return  # moved or deleted by an earlier delivery
    record = await _claim(service, file)
    if record is None:
        return
    if record["status"] in (STORED, FAILURE):
        await _settle(service, file, record["status"])  # ended, but the worker vanished before moving the file
        return
    token = auth.act_as(PRINCIPAL)
    try:
        _slots = _slots or asyncio.Semaphore(CONVERSIONS)
        async with _slots:
            found = await _convert_and_store(service, file)
        await _end(service, file, record, STORED, **found)
    except (InvalidDataset, Refused) as refused:
        await _end(service, file, record, FAILURE, reason=refused.message)
    except Exception as exc:
        reason = exc.message if isinstance(exc, DicomWebError) else exc.__class__.__name__
        if not last:
            log.warning("inbox: a conversion failed (%s); the queue delivers it again", exc.__class__.__name__)
            await _save(service, file, record, RETRYING, reason=reason)  # the next delivery may claim it
            raise
        await _end(service, file, record, FAILURE, reason=f"failed on the last delivery: {reason}")
        raise
    finally:
        auth.reset(token)


async def _claim(service: Service, file: InboxFile) -> dict[str, Any] | None:
    """This delivery's claim on ``file`` (its record, now ``converting``); the record as it is when this version
    ended already; None when another delivery is on it."""
    name = record_name(file.name)
    try:
        data, etag = await service.blobs.staging.get_record(name)
        record: dict[str, Any] | None = json.loads(data)
    except NotFound:
        record, etag = None, None
    if record is not None and record.get("etag") == file.etag:
        if record["status"] in (STORED, FAILURE):
            return record
        age = (datetime.now(timezone.utc) - datetime.fromisoformat(record["updated"].replace("Z", "+00:00")))
        if record["status"] == CONVERTING and age < timedelta(seconds=CLAIM_SECONDS):
            # Another delivery is on it. If its worker vanished, nothing else would bring the file back (its
            # message may have been settled already): look again once that claim would have lapsed.
            wait = CLAIM_SECONDS - int(age.total_seconds()) + 5
            await jobs.enqueue(service, RECHECK, delay_seconds=wait, file=file.name)
            return None
    claim = {"file": file.name, "etag": file.etag, "size": file.size, "status": CONVERTING,
             "started": _now(), "updated": _now(),
             "attempts": (record or {}).get("attempts", 0) + 1 if (record or {}).get("etag") == file.etag else 1}
    try:
        claim["recordEtag"] = await service.blobs.staging.put_record(name, json.dumps(claim).encode(), etag,
                                                                     create=etag is None)
    except StaleBlob:
        return None  # another delivery claimed it first
    return claim


@jobs.handler(RECHECK)
async def _recheck(service: Service, delivery: jobs.Delivery) -> None:
    """A file another delivery had claimed: handled by now (moved away), or claimed again here."""
    await _one(service, str(delivery.fields["file"]), delivery.last)


async def _convert_and_store(service: Service, file: InboxFile) -> dict[str, Any]:
    """Download, convert and store ``file``; what the record says of it once stored."""
    if file.size > service.settings.inbox_max_bytes:
        raise Refused(f"the file has {file.size / 2**30:.1f} GiB, more than DICOMWEB_INBOX_MAX_GB "
                      f"({service.settings.inbox_max_bytes // 2**30}): convert it with `dicomweb upload`")
    work = Path(tempfile.mkdtemp(prefix="dicomweb-inbox-"))
    started = time.perf_counter()
    try:
        name = Path(file.name).name
        # A neutral local name keeping the suffix the readers go by: blob names may name a patient, and the
        # libraries log paths.
        source = work / f"slide{name[name.index('.'):] if '.' in name else ''}"
        await service.blobs.inbox.download(file, source)
        downloaded = time.perf_counter()
        metadata = _metadata(file)

        def convert_file() -> list[Path]:  # in a process of its own: the worker's event loop goes on answering
            with Converter() as converter:
                return [path for part in converter.parts(source, work / "dicom", metadata, name=name) for path in part]

        paths = await asyncio.to_thread(convert_file)
        source.unlink()
        converted = time.perf_counter()
        slots = asyncio.Semaphore(STORE_CONCURRENCY)

        async def bounded(path: Path) -> tuple[str, dict[str, str], str]:
            async with slots:
                return await _store(service, path)

        outcomes = await asyncio.gather(*(bounded(p) for p in paths), return_exceptions=True)
        log.info("inbox: %.0f MB downloaded in %.1f s, converted in %.1f s, %d instances stored in %.1f s",
                 file.size / 1e6, downloaded - started, converted - downloaded, len(paths),
                 time.perf_counter() - converted)
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
    made = [uids for outcome in outcomes if not isinstance(outcome, BaseException) and outcome[0] == STORED
            for uids in [outcome[1]]]
    problems = [o for o in outcomes if isinstance(o, BaseException) or o[0] == FAILURE]
    if problems:
        await _undo(service, made)  # nothing half-stored: a new delivery (or none) starts from nothing
        first = problems[0]
        if isinstance(first, BaseException):
            raise first
        raise Refused(f"the service refused an instance of the converted slide: {first[2]}")
    uids = [o[1] for o in outcomes if not isinstance(o, BaseException)]
    return {"study": uids[0]["study"], "series": sorted({u["series"] for u in uids}), "instances": len(uids),
            "newlyStored": len(made)}


def _uids(path: Path) -> dict[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SeriesInstanceUID",
                                                                       "SOPInstanceUID"])
    return {"study": str(ds.StudyInstanceUID), "series": str(ds.SeriesInstanceUID), "sop": str(ds.SOPInstanceUID)}


async def _store(service: Service, path: Path) -> tuple[str, dict[str, str], str]:
    """Store one converted instance through an upload session: (stored | exists | failed, its UIDs, the reason)."""
    uids = await asyncio.to_thread(_uids, path)
    session = await uploads.create(service, path.stat().st_size, None, PRINCIPAL.id)
    try:
        await service.blobs.staging.upload_file(session.data, path, BLOCK_CONCURRENCY)
        record = await asyncio.to_thread(frame_record, path)
        session = await uploads.commit(service, session.id, PRINCIPAL.id, service.settings.public_base_url, record)
        waited = 0.0
        while session.status == uploads.INGESTING and waited < INGEST_SECONDS:
            await asyncio.sleep(POLL_SECONDS)
            waited += POLL_SECONDS
            session = await uploads.status(service, session.id, PRINCIPAL.id)
    except BaseException:
        await uploads.abort(service, session.id, PRINCIPAL.id)
        raise
    if session.status == uploads.STORED:
        return STORED, uids, ""
    if session.status == uploads.INGESTING:
        raise TimeoutError("an instance's ingest did not end in time")
    reasons = [item.get("00081197", {}).get("Value", [0])[0]
               for item in (session.result or {}).get("body", {}).get("00081198", {}).get("Value", [])]
    if reasons == [REASON_DUPLICATE]:
        return "exists", uids, ""
    if REASON_PROCESSING_FAILURE in reasons:
        raise DicomWebError(f"an instance's ingest failed: {(session.result or {}).get('warning')}")
    return FAILURE, uids, str((session.result or {}).get("warning") or f"failure reason {reasons}")


async def _undo(service: Service, made: list[dict[str, str]]) -> None:
    """Delete the instances this run stored (not those that were stored before it)."""
    for uids in made:
        try:
            await delete.delete(service, uids["study"], uids["series"], uids["sop"])
        except NotFound:
            pass


async def _save(service: Service, file: InboxFile, record: dict[str, Any], state: str, **fields: Any) -> bool:
    """Write the record in ``state``; False when another delivery took the file over meanwhile."""
    saved = {**{k: v for k, v in record.items() if k not in ("recordEtag", "reason")}, **fields, "status": state,
             "updated": _now()}
    try:
        await service.blobs.staging.put_record(record_name(file.name), json.dumps(saved).encode(),
                                               record["recordEtag"])
    except StaleBlob:
        return False
    return True


async def _end(service: Service, file: InboxFile, record: dict[str, Any], state: str, **fields: Any) -> None:
    """Record how the file ended (unless another delivery took it over meanwhile), then move it out of the way."""
    if not await _save(service, file, record, state, **fields):
        return  # another delivery took the file over: it ends it
    audit.record("inbox-convert", state, study=fields.get("study"), status=fields.get("instances"),
                 reason="cannot be converted or stored" if state == FAILURE else None)
    await _settle(service, file, state)


async def _settle(service: Service, file: InboxFile, state: str) -> None:
    """Move the file under ``done/`` or ``failed/`` (or delete a stored one, as ``DICOMWEB_INBOX_SOURCES`` says)."""
    if state == STORED and service.settings.inbox_sources == "delete":
        await service.blobs.inbox.delete(file)
    else:
        await service.blobs.inbox.move(file, (DONE if state == STORED else FAILED) + file.name)
