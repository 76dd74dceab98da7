"""Upload sessions: multi-GB instances go straight to Blob, then one ingest pass stores them.

A documented extension next to STOW-RS, for instances beyond what one Functions request
carries (100 MB and 230 s by default). The client declares the size and gets a
write-only SAS for one staging blob plus a block plan; it puts the blocks itself, in
parallel, with any HTTP client or the Azure SDK. ``commit`` commits the block list and
streams the staged blob (ranged reads) through the STOW path: the same parser, frame
offset record, validation, duplicate check, block upload to the final name, sidecars
and index, so both paths store identical files. The staged blob is deleted afterwards.

State lives in Blob (a small JSON record per session, written with etag checks), so any
worker can answer for a session. An ingest that outlives one HTTP request goes on in the
background and reports through the record; if its worker dies, the record's heartbeat
goes stale and the next status request resumes the ingest.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import AsyncIterator

from dicomweb import audit
from dicomweb.config import MIB
from dicomweb.dicom.dicomjson import JsonDict
from dicomweb.dicom.syntax import is_valid_uid
from dicomweb.errors import BadRequest, DicomWebError, NotFound, StateConflict, StorageFailure
from dicomweb.service import Service
from dicomweb.storage.blobs import StaleBlob, new_generation
from dicomweb.stow import Outcome, response, store_instance

log = logging.getLogger(__name__)

SESSIONS = "sessions/"
DATA = "data/"
#: Blob's limit of blocks per blob.
MAX_BLOCKS = 50_000
#: Blob's limit of one block blob (190.7 TiB).
MAX_SIZE = MAX_BLOCKS * 4000 * MIB
#: How often an ingest records its progress, and when a silent one counts as dead.
HEARTBEAT_SECONDS = 15.0
STALE_SECONDS = 90.0
#: Ranged reads of the staged blob during the ingest pass: size and how many in flight.
READ_CHUNK = 8 * MIB
READ_AHEAD = 3
OPEN, INGESTING, STORED, FAILED = "open", "ingesting", "stored", "failed"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _text(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def block_id(index: int) -> str:
    """The id of planned block ``index`` as the Blob SDK takes it (all ids of a blob have one length)."""
    return f"{index:06d}"


def wire_block_id(index: int) -> str:
    """The ``blockid`` a client puts in its Put Block URL (the base64 of :func:`block_id`)."""
    return base64.b64encode(block_id(index).encode()).decode()


def plan_block_size(size: int, preferred: int) -> int:
    """``preferred``, grown in whole MiB when the blob would need more than 50,000 blocks."""
    needed = math.ceil(size / MAX_BLOCKS)
    return max(preferred, math.ceil(needed / MIB) * MIB)


@dataclass
class Session:
    """One upload session, as its record in the staging container holds it."""

    id: str
    size: int
    block_size: int
    study: str | None
    created: str
    expires: str
    generation: str
    #: The principal that created the session: no one else sees it (``dicomweb.auth.Principal.id``).
    owner: str = ""
    status: str = OPEN
    heartbeat: str | None = None
    progress: int = 0
    result: JsonDict | None = None
    etag: str = field(default="", compare=False)

    @property
    def record(self) -> str:
        return f"{SESSIONS}{self.id}.json"

    @property
    def data(self) -> str:
        return f"{DATA}{self.id}.dcm"

    @property
    def block_count(self) -> int:
        return max(1, math.ceil(self.size / self.block_size))

    def block(self, index: int) -> tuple[int, int]:
        """(offset, length) of planned block ``index``."""
        offset = index * self.block_size
        return offset, min(self.block_size, self.size - offset)

    def missing(self, uncommitted: dict[str, int]) -> list[int]:
        """Planned blocks not (or not fully) among the staged ``uncommitted`` blocks (id → size)."""
        return [i for i in range(self.block_count) if uncommitted.get(block_id(i)) != self.block(i)[1]]

    def expired(self, now: datetime) -> bool:
        return _parse(self.expires) <= now

    def stale(self, now: datetime) -> bool:
        """An ingest whose worker stopped reporting."""
        return self.status == INGESTING and (
            self.heartbeat is None or (now - _parse(self.heartbeat)).total_seconds() > STALE_SECONDS)

    def to_json(self) -> bytes:
        return json.dumps({k: v for k, v in dataclasses.asdict(self).items() if k != "etag"}).encode()


async def create(service: Service, size: object, study: object | None, owner: str) -> Session:
    """A new session of ``owner`` for an instance of ``size`` bytes (optionally bound to ``study``, as in STOW to a study)."""
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_SIZE:
        raise BadRequest(f"size must be the instance's size in bytes, from 1 to {MAX_SIZE}")
    if study is not None and (not isinstance(study, str) or not is_valid_uid(study)):
        raise BadRequest(f"studyInstanceUID {study!r} is not a valid UID")
    now = _now()
    settings = service.settings
    session = Session(
        id=uuid.uuid4().hex, size=size, block_size=plan_block_size(size, settings.block_size), study=study,
        created=_text(now), expires=_text(now + timedelta(seconds=settings.upload_session_seconds)),
        generation=new_generation(), owner=owner,
    )
    session.etag = await service.blobs.staging.put_record(session.record, session.to_json())
    return session


async def load(service: Service, session_id: str, owner: str | None = None) -> Session:
    """The session ``session_id``; 404 when unknown, expired, or (given an ``owner``) someone else's.

    Another principal's session answers exactly as a missing one, so ids cannot be probed.
    """
    if not session_id.isalnum():
        raise NotFound("no such upload session")
    try:
        session = await _read(service, f"{SESSIONS}{session_id}.json")
    except NotFound:
        raise NotFound("no such upload session") from None
    if owner is not None and session.owner != owner:
        raise NotFound("no such upload session")
    if session.expired(_now()) and session.status != INGESTING:
        raise NotFound("the upload session has expired")
    return session


async def _read(service: Service, record: str) -> Session:
    data, etag = await service.blobs.staging.get_record(record)
    return Session(**json.loads(data), etag=etag)


async def _save(service: Service, session: Session) -> None:
    session.etag = await service.blobs.staging.put_record(session.record, session.to_json(), session.etag)


async def _beat(service: Service, session: Session) -> bool:
    """Record that this worker is ingesting ``session`` now; False when another worker changed the record."""
    session.heartbeat = _text(_now())
    try:
        await _save(service, session)
    except StaleBlob:
        return False
    return True


async def describe(service: Service, session: Session, base: str) -> JsonDict:
    """What a client needs: the plan and a fresh SAS while open, progress while ingesting, the result at the end."""
    url = f"{base}/uploads/{session.id}"
    out: JsonDict = {
        "id": session.id, "status": session.status, "size": session.size, "studyInstanceUID": session.study,
        "expiresAt": session.expires, "blockSize": session.block_size, "blockCount": session.block_count,
        "statusUrl": url, "commitUrl": f"{url}/commit",
    }
    if session.status == OPEN:
        expiry = min(_now() + timedelta(seconds=service.settings.upload_sas_seconds), _parse(session.expires))
        out["uploadUrl"] = await service.blobs.staging.write_url(session.data, expiry)
        out["uploadUrlExpiresAt"] = _text(expiry)
        _, uncommitted = await service.blobs.staging.blocks(session.data)
        missing = session.missing(uncommitted)
        absent = set(missing)
        out["blocks"] = [{"index": i, "id": wire_block_id(i), "offset": session.block(i)[0],
                          "length": session.block(i)[1]} for i in range(session.block_count)]
        out["received"] = [i for i in range(session.block_count) if i not in absent]
        out["missing"] = missing
    elif session.status == INGESTING:
        out["progress"] = session.progress
    if session.result is not None:
        out["result"] = session.result
    return out


async def _seal(service: Service, session: Session) -> None:
    """Commit the planned blocks (or accept a blob the client committed itself, as azcopy does)."""
    committed, uncommitted = await service.blobs.staging.blocks(session.data)
    missing = session.missing(uncommitted)
    if not missing:
        await service.blobs.staging.commit(session.data, [block_id(i) for i in range(session.block_count)])
        return
    if committed:
        held = sum(committed.values())
        if held == session.size:
            return
        raise StateConflict(f"the staged blob holds {held} bytes, not the declared {session.size}")
    shown = ", ".join(map(str, missing[:20])) + (" …" if len(missing) > 20 else "")
    raise StateConflict(f"{len(missing)} of {session.block_count} blocks have not arrived: {shown}")


async def commit(service: Service, session_id: str, owner: str, base: str) -> Session:
    """Commit and ingest; the session once stored or failed, or still ingesting after the configured wait."""
    session = await load(service, session_id, owner)
    if session.status == OPEN:
        await _seal(service, session)
        session.status, session.heartbeat, session.result = INGESTING, _text(_now()), None
        try:
            await _save(service, session)
            _start(service, session, base)
        except StaleBlob:
            session = await load(service, session_id)  # another request committed it first
    else:
        session = await _resume_if_stale(service, session, base)
    task = service.tasks.get(session.id)
    if task is None:
        return session
    try:
        return await asyncio.wait_for(asyncio.shield(task), service.settings.commit_wait_seconds)
    except asyncio.TimeoutError:
        return await load(service, session_id)


def _start(service: Service, session: Session, base: str) -> None:
    """Run the ingest of ``session`` in this worker (unless it already does), beyond any one request."""
    if session.id in service.tasks:
        return
    task = asyncio.create_task(_ingest(service, session, base))
    service.tasks[session.id] = task
    task.add_done_callback(lambda _: service.tasks.pop(session.id, None))


async def _resume_if_stale(service: Service, session: Session, base: str) -> Session:
    """Resume here an ingest whose worker stopped reporting; the heartbeat's etag check lets one worker win."""
    if not session.stale(_now()):
        return session
    if not await _beat(service, session):
        return await load(service, session.id)  # another worker resumed it first
    _start(service, session, base)
    return session


async def status(service: Service, session_id: str, owner: str, base: str) -> Session:
    """The session, resuming its ingest here when the worker that ran it stopped reporting."""
    return await _resume_if_stale(service, await load(service, session_id, owner), base)


async def _staged_chunks(service: Service, session: Session) -> AsyncIterator[bytes]:
    """The staged bytes, recording progress in the session every few seconds (the heartbeat)."""
    loop = asyncio.get_running_loop()
    beat = loop.time()
    session.progress = 0
    async for chunk in service.blobs.staging.read(session.data, session.size, READ_CHUNK, READ_AHEAD):
        session.progress += len(chunk)
        if loop.time() - beat >= HEARTBEAT_SECONDS:
            beat = loop.time()
            if not await _beat(service, session):
                log.warning("upload %s: another worker took over the ingest", session.id)
                session.etag = (await load(service, session.id)).etag
        yield chunk


async def _slot(service: Service, session: Session) -> bool:
    """Wait for the worker's ingest slot, heartbeat going; False when another worker took the session over."""
    while True:
        try:
            await asyncio.wait_for(service.ingest_slots.acquire(), HEARTBEAT_SECONDS)
            return True
        except asyncio.TimeoutError:
            if not await _beat(service, session):
                return False


async def _ingest(service: Service, session: Session, base: str) -> Session:
    """One streaming pass of the staged blob through the STOW path, then the result into the record."""
    try:
        if not await _slot(service, session):
            return await load(service, session.id)
        try:
            # A resumed ingest stores the same generation again: the claim recognises it and finishes the work.
            outcome = await store_instance(service, _staged_chunks(service, session), session.study,
                                           generation=session.generation)
        finally:
            service.ingest_slots.release()
    except Exception as exc:  # noqa: BLE001 - the record must say how the ingest ended
        log.exception("upload %s: ingest failed", session.id)
        outcome = Outcome(None, None, error=exc if isinstance(exc, DicomWebError) else
                          StorageFailure(f"the ingest failed: {exc.__class__.__name__}"))
    code, body, warning = response([outcome], base)
    session.result = {"status": code, "body": body, "warning": warning}
    # Storage failing is no verdict on the upload: the session opens again with its staged blob kept,
    # and the commit answers 503, so that committing again (after Retry-After) ingests it once more.
    retry = isinstance(outcome.error, StorageFailure)
    session.status = STORED if outcome.error is None else OPEN if retry else FAILED
    session.heartbeat = _text(_now())
    for _ in range(3):
        try:
            await _save(service, session)
            break
        except StaleBlob:
            session.etag = (await load(service, session.id)).etag
    if not retry:
        await service.blobs.staging.discard(session.data)
    audit.record("upload-ingest", session.status, session=session.id, status=code,
                 generation=session.generation if session.status == STORED else None)
    return session


async def abort(service: Service, session_id: str, owner: str) -> None:
    """Drop a session and its staged blocks; refused while an ingest runs."""
    session = await load(service, session_id, owner)
    if session.status == INGESTING and not session.stale(_now()):
        raise StateConflict("the upload is being ingested; wait for its result")
    await service.blobs.staging.discard(session.data)
    await service.blobs.staging.delete_record(session.record)
    audit.record("upload-abort", "aborted", session=session.id)


async def cleanup(service: Service) -> int:
    """Remove expired sessions with their staged blocks (and dead ingests past expiry); the number removed."""
    now = _now()
    removed = 0
    async for name in service.blobs.staging.list_records(SESSIONS):
        try:
            session = await _read(service, name)
        except NotFound:
            continue
        if session.expired(now) and (session.status != INGESTING or session.stale(now)):
            await service.blobs.staging.discard(session.data)
            await service.blobs.staging.delete_record(session.record)
            removed += 1
    return removed
