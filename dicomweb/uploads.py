"""Upload sessions: multi-GB instances go straight to Blob, and are stored without passing through a function.

A documented extension next to STOW-RS, for instances beyond what one Functions request
carries (100 MB and 230 s by default). The protocol:

1. ``create``: the client declares the size and gets a write-only SAS for one staging
   blob plus a block plan. A client still writing the file (``dicomweb upload`` converting
   a scanner file) declares no size: it numbers the blocks itself, block *i* at offset
   *i* × ``blockSize``, and gives the size at the commit, so the blocks travel while the
   file grows.
2. It puts the blocks itself, in parallel, with any HTTP client, the Azure SDK or azcopy.
3. ``commit``, optionally with the file's frame offset record (which ``dicomweb upload``
   computes with the service's own parser while it reads the file): the planned blocks
   are committed (or the blob the client committed itself is taken), the session turns
   ``ingesting`` and an ingest job goes on the queue; the commit answers with the job's
   result, or 202 while it still runs.
4. The ingest job (:func:`ingest`, on any worker) reads the header with ranged reads of
   the committed version of the blob, validates it as STOW-RS does, and takes a frame
   offset record: the client's, once checked against the header; a native one from the
   header alone; or, for a blob committed without one, a scan of the blob with large
   parallel ranged reads, after which the first and the last frame's codestream header is
   checked as STOW-RS checks it. It zeroes the preamble by re-writing only the first block
   (the other committed blocks are committed again as they are), makes the generation a
   server-side copy of the staged blob in the instance container, checks a sample of the
   copy's frames (their items and codestream headers) against a client's record, writes
   the sidecars and publishes the generation, then deletes the staged blob. No byte of the
   instance passes through a function, so the commit costs the same for 400 MB and for 40 GB.

Every read and write of the staged blob is conditioned on the etag of the version that
was parsed, and the stored file is a copy in another container: whatever the client
does with its SAS after the commit never reaches what the service serves. State lives
in Blob (a small JSON record per session, written with etag checks), so any worker can
answer for a session; the queue redelivers an ingest whose worker vanished, and after
the last failed delivery the session says ``failed`` with the reason.
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

from dicomweb import audit, cpu, generations, jobs, records
from dicomweb.config import MIB
from dicomweb.dicom import codestream
from dicomweb.dicom.codecs import PixelFormat
from dicomweb.dicom.dicomjson import JsonDict
from dicomweb.dicom.frames import SAMPLE_TAIL, FrameIndex, check_record, check_sampled, frame_payload, sample
from dicomweb.dicom.part10 import Part10Parser
from dicomweb.dicom.syntax import is_valid_uid
from dicomweb.errors import (
    BadRequest,
    ConcurrentChange,
    DicomWebError,
    InvalidDataset,
    NotFound,
    StateConflict,
    StorageFailure,
)
from dicomweb.service import Service
from dicomweb.storage.naming import TIER_TAG, Location, new_generation
from dicomweb.storage.transfer import StaleBlob
from dicomweb.stow import Outcome, check_codestreams, check_frame, pixel_format, response, tier, validate

log = logging.getLogger(__name__)

SESSIONS = "sessions/"
DATA = "data/"
#: Blob's limit of blocks per blob.
MAX_BLOCKS = 50_000
#: Blob's limit of one block blob (190.7 TiB).
MAX_SIZE = MAX_BLOCKS * 4000 * MIB
#: The header is read with ranged reads growing from this size.
HEAD_CHUNK = MIB
#: A scan (a blob committed without a frame offset record): ranged reads of this size, this many in flight.
SCAN_CHUNK = 8 * MIB
SCAN_AHEAD = 6
#: How often a scan records its progress in the session.
PROGRESS_SECONDS = 5.0
#: Frames of a client's record whose bytes are checked on the stored copy (the first, the last, spread between).
SAMPLED_FRAMES = 64
#: The largest first block re-written to zero the preamble.
MAX_HEAD_BLOCK = 256 * MIB
#: A session still ingesting this long after it expired lost its job (a worker died on the last delivery).
STUCK_SECONDS = 3600
#: The commit looks whether the ingest finished after the first wait (seconds), growing to the second.
COMMIT_POLL = (0.05, 0.2)
PREAMBLE_BYTES = 128
OPEN, INGESTING, STORED, FAILED = "open", "ingesting", "stored", "failed"
INGEST, EXPIRE = "upload-ingest", "upload-expire"


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
    #: None until the commit gives it (a session opened for a file still being written).
    size: int | None
    block_size: int
    study: str | None
    created: str
    expires: str
    generation: str
    #: The principal that created the session: no one else sees it (``dicomweb.auth.Principal.id``).
    owner: str = ""
    status: str = OPEN
    progress: int = 0
    result: JsonDict | None = None
    #: The DICOMweb base URL of the commit, for the URLs in the result.
    base: str = ""
    #: Whether the commit brought a frame offset record (kept next to the session record).
    record: bool = False
    #: The instance's UIDs, once the ingest has read its header.
    instance: dict[str, str] | None = None
    etag: str = field(default="", compare=False)

    @property
    def record_name(self) -> str:
        return f"{SESSIONS}{self.id}.json"

    @property
    def frames_name(self) -> str:
        """Where the client's frame offset record waits for the ingest."""
        return f"{SESSIONS}{self.id}.frames"

    @property
    def data(self) -> str:
        return f"{DATA}{self.id}.dcm"

    @property
    def block_count(self) -> int:
        assert self.size is not None
        return max(1, math.ceil(self.size / self.block_size))

    def block(self, index: int) -> tuple[int, int]:
        """(offset, length) of planned block ``index``."""
        assert self.size is not None
        offset = index * self.block_size
        return offset, min(self.block_size, self.size - offset)

    def missing(self, uncommitted: dict[str, int]) -> list[int]:
        """Planned blocks not (or not fully) among the staged ``uncommitted`` blocks (id → size)."""
        return [i for i in range(self.block_count) if uncommitted.get(block_id(i)) != self.block(i)[1]]

    def expired(self, now: datetime) -> bool:
        return _parse(self.expires) <= now

    def stuck(self, now: datetime) -> bool:
        """Still ingesting long after expiry: its job is gone."""
        return self.status == INGESTING and (now - _parse(self.expires)).total_seconds() > STUCK_SECONDS

    def to_json(self) -> bytes:
        return json.dumps({k: v for k, v in dataclasses.asdict(self).items() if k != "etag"}).encode()


_FIELDS = {f.name for f in dataclasses.fields(Session)} - {"etag"}


def _checked_size(size: object, most: int) -> int:
    """A declared size; 400 unless it is a whole number of bytes from 1 to ``most``."""
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= most:
        raise BadRequest(f"size must be the instance's size in bytes, from 1 to {most}")
    return size


async def create(service: Service, size: object, study: object | None, owner: str) -> Session:
    """A new session of ``owner`` for an instance of ``size`` bytes (optionally bound to ``study``, as in STOW to a
    study); a ``size`` of None is given at the commit, and the blocks are the configured block size."""
    settings = service.settings
    if size is not None:
        size = _checked_size(size, MAX_SIZE)
    if study is not None and (not isinstance(study, str) or not is_valid_uid(study)):
        raise BadRequest(f"studyInstanceUID {study!r} is not a valid UID")
    now = _now()
    block_size = settings.block_size if size is None else plan_block_size(size, settings.block_size)
    session = Session(
        id=uuid.uuid4().hex, size=size, block_size=block_size, study=study,
        created=_text(now), expires=_text(now + timedelta(seconds=settings.upload_session_seconds)),
        generation=new_generation(), owner=owner,
    )
    session.etag = await service.blobs.staging.put_record(session.record_name, session.to_json())
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
    return Session(**{k: v for k, v in json.loads(data).items() if k in _FIELDS}, etag=etag)


async def _save(service: Service, session: Session) -> None:
    session.etag = await service.blobs.staging.put_record(session.record_name, session.to_json(), session.etag)


async def describe(service: Service, session: Session, base: str) -> JsonDict:
    """What a client needs: the plan and a fresh SAS while open, progress while ingesting, the result at the end."""
    url = f"{base}/uploads/{session.id}"
    out: JsonDict = {
        "id": session.id, "status": session.status, "size": session.size, "studyInstanceUID": session.study,
        "expiresAt": session.expires, "blockSize": session.block_size,
        "blockCount": session.block_count if session.size is not None else None,
        "statusUrl": url, "commitUrl": f"{url}/commit",
    }
    if session.status == OPEN:
        expiry = min(_now() + timedelta(seconds=service.settings.upload_sas_seconds), _parse(session.expires))
        out["uploadUrl"] = await service.blobs.staging.write_url(session.data, expiry)
        out["uploadUrlExpiresAt"] = _text(expiry)
        _, uncommitted = await service.blobs.staging.blocks(session.data)
        if session.size is None:  # blocks numbered by the client: which of them arrived
            out["maxSize"] = MAX_BLOCKS * session.block_size
            out["received"] = sorted(int(b) for b in uncommitted if len(b) == len(block_id(0)) and b.isdecimal())
            return out
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
    held = sum(committed.values()) if committed else await _staged_size(service, session)
    if held == session.size:
        return
    if held:
        raise StateConflict(f"the staged blob holds {held} bytes, not the declared {session.size}")
    shown = ", ".join(map(str, missing[:20])) + (" …" if len(missing) > 20 else "")
    raise StateConflict(f"{len(missing)} of {session.block_count} blocks have not arrived: {shown}")


def read_record(data: bytes, most_frames: int) -> bytes | None:
    """The frame offset record a commit brings (empty body: none); 400 unless it is one."""
    if not data:
        return None
    try:
        record = FrameIndex.from_bytes(data)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("a commit's body is the file's frame offset record (dicomweb.dicom.frames.FrameIndex), "
                         "or empty") from None
    if len(record) > most_frames:
        raise BadRequest(f"a frame offset record of {len(record)} frames is beyond DICOMWEB_MAX_FRAMES")
    return data


async def _staged_size(service: Service, session: Session) -> int:
    """Bytes of a staged blob put in one piece (no block list), 0 when there is none."""
    try:
        return (await service.blobs.staging.properties(session.data))[1]
    except NotFound:
        return 0


async def commit(service: Service, session_id: str, owner: str, base: str, record: bytes | None = None,
                 size: object | None = None) -> Session:
    """Commit the blocks and have the ingest job store them; the session once stored or failed, or still
    ingesting after the configured wait. ``size`` is the file's, for a session opened without one (400 when
    such a session's commit lacks it, or when it contradicts the size declared at the start)."""
    if isinstance(size, str) and size.isdecimal() and len(size) < 20:  # from the query
        size = int(size)
    session = await load(service, session_id, owner)
    if session.status == OPEN:
        if session.size is None:
            if size is None:
                raise BadRequest("this session was opened without a size: its commit gives it (commit?size=N)")
            session.size = _checked_size(size, MAX_BLOCKS * session.block_size)
        elif size is not None and _checked_size(size, MAX_SIZE) != session.size:
            raise BadRequest(f"size {size} is not the size declared at the start, {session.size}")
        await _seal(service, session)
        if record is not None:
            await service.blobs.staging.put_record(session.frames_name, record)
        session.status, session.result, session.progress = INGESTING, None, 0
        session.base, session.record = base, record is not None
        try:
            await _save(service, session)
        except StaleBlob:
            # Another commit got there first, or this one did and its answer was lost (the SDK's retry of
            # the write then fails on the etag it changed itself): either way the ingesting session gets its
            # job, since none may have been sent (a second one is harmless).
            session = await load(service, session_id)
            if session.status == INGESTING:
                await jobs.enqueue(service, INGEST, session=session.id)
            return await _wait(service, session)
        try:
            await jobs.enqueue(service, INGEST, session=session.id)
        except DicomWebError:
            session.status = OPEN
            await _save(service, session)
            raise
    elif session.status == INGESTING:
        # A commit again: the first may have failed after the session turned ingesting and before its job
        # was sent (its answer a 503). Another job is harmless: an ingest is idempotent, and the first to
        # finish records the verdict.
        await jobs.enqueue(service, INGEST, session=session.id)
    return await _wait(service, session)


async def _wait(service: Service, session: Session) -> Session:
    """The session once its ingest ended, or as it is after ``commit_wait_seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + service.settings.commit_wait_seconds
    pause, longest = COMMIT_POLL
    while session.status == INGESTING and loop.time() < deadline:
        await asyncio.sleep(pause)
        pause = min(pause * 1.5, longest)
        session = await load(service, session.id)
    return session


async def status(service: Service, session_id: str, owner: str) -> Session:
    """The session: which blocks arrived, the ingest's progress, or its result."""
    return await load(service, session_id, owner)


@jobs.handler(INGEST)
async def _ingest_job(service: Service, delivery: jobs.Delivery) -> None:
    """The queue's delivery of an ingest: run it unless an earlier delivery finished it."""
    try:
        session = await _read(service, f"{SESSIONS}{delivery.fields['session']}.json")
    except NotFound:
        return  # aborted or expired meanwhile
    if session.status != INGESTING:
        return
    log.info("upload %s: ingest starts (delivery %d)", session.id, delivery.attempt)
    try:
        outcome = await ingest(service, session)
    except Exception as exc:
        if not delivery.last:
            log.warning("upload %s: ingest attempt %d failed (%s); the queue delivers it again", session.id,
                        delivery.attempt, exc.__class__.__name__)
            raise
        log.exception("upload %s: the ingest failed on its last delivery", session.id)
        await _undo(service, session, None, late_writes=True)
        reason = exc.message if isinstance(exc, DicomWebError) else exc.__class__.__name__
        await _finish(service, session, Outcome(None, None, error=StorageFailure(
            f"the ingest failed {delivery.attempt} times; the last time: {reason}")))
        raise
    await _finish(service, session, outcome)
    log.info("upload %s: ingest ends %s", session.id, session.status)


async def _finish(service: Service, session: Session, outcome: Outcome) -> None:
    """Record how the ingest ended (unless another delivery recorded it first), and drop the staged blob."""
    code, body, warning = response([outcome], session.base)
    session.result = {"status": code, "body": body, "warning": warning}
    session.status = STORED if outcome.error is None else FAILED
    while True:
        try:
            await _save(service, session)
            break
        except StaleBlob:
            current = await _read(service, session.record_name)
            if current.status != INGESTING:
                return  # its verdict stands
            session.etag = current.etag
    await service.blobs.staging.discard(session.data)
    await service.blobs.staging.delete_record(session.frames_name)
    uids = session.instance or {}
    audit.record("upload-ingest", session.status, session=session.id, status=code,
                 study=uids.get("study"), series=uids.get("series"), instance=uids.get("sop"),
                 generation=session.generation if session.status == STORED else None,
                 reason=outcome.error.reason if outcome.error else None)


async def ingest(service: Service, session: Session) -> Outcome:
    """Store the committed staged blob of ``session`` as its generation, without re-writing its bytes.

    Bad input and a duplicate are an outcome (the session fails with the reason); storage
    failures and a blob changed meanwhile raise, so that the queue delivers the job again.
    Any outcome but success leaves no generation behind.
    """
    parser = Part10Parser(service.settings.limits)
    location: Location | None = None
    try:
        location = await _store(service, session, parser)
    except (StorageFailure, ConcurrentChange):
        raise
    except DicomWebError as error:
        await _undo(service, session, location, late_writes=False)
        dataset = parser.header.dataset if parser.header is not None else None
        uids = [str(dataset.get(k, "") or "") or None if dataset is not None else None
                for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")]
        return Outcome(*uids, error=error)
    header = parser.header
    assert header is not None
    return Outcome(str(header.dataset.SOPClassUID), location.sop, location.study, location.series)


async def _store(service: Service, session: Session, parser: Part10Parser) -> Location:
    staging = service.blobs.staging
    try:
        etag, size = await staging.properties(session.data)
    except NotFound:
        return await _stored_before(service, session)
    if size != session.size:
        raise StateConflict(f"the staged blob holds {size} bytes, not the declared {session.size}")
    preamble = await _read_head(service, session, parser, etag, size)
    header = parser.header
    assert header is not None
    if parser.shift != 0:
        raise InvalidDataset("an upload session takes a DICOM Part 10 file: a 128-byte preamble, DICM and the "
                             "File Meta Information (STOW-RS takes bare datasets)")
    study, series, sop, sop_class = validate(header.dataset, session.study)
    description = await cpu.run(records.describe, header, service.settings.max_inline_binary)
    location = Location(study, series, sop, session.generation)
    await generations.reserve(service, location, replace=False)
    if session.instance is None:
        session.instance = {"study": study, "series": series, "sop": sop, "sopClass": sop_class}
        await _save(service, session)
    frames = await _frame_record(service, session, parser, etag, size)
    if not session.record:
        await check_codestreams(frames, description, parser.frame_heads,
                                lambda offset, length: staging.read_range(session.data, offset, length, etag))
    if preamble.strip(b"\x00"):
        etag = await staging.restage_head(session.data, etag, size, bytes(PREAMBLE_BYTES), MAX_HEAD_BLOCK)
    source = await staging.copy_source(session.data, datetime.now(timezone.utc) + timedelta(hours=1))
    tags = {TIER_TAG: tier(header.dataset, size, service.settings.hot_pin_bytes)}
    await service.blobs.instances.copy_from(location, source, etag, tags)
    if session.record and frames is not None:
        await _check_sample(service, location, frames, pixel_format(description))
    made = await cpu.run(records.make_sidecars, parser, description, session.generation, frames, size)
    await generations.describe(service, location, made)
    await generations.publish(service, made.sidecar, replace=False)
    return location


async def _read_head(service: Service, session: Session, parser: Part10Parser, etag: str, size: int) -> bytes:
    """Feed the parser the header (and an encapsulated Pixel Data's Basic Offset Table); the preamble's bytes."""
    chunk, preamble = HEAD_CHUNK, b""
    while not parser.table_read and parser.position < size:
        data = await service.blobs.staging.read_range(session.data, parser.position,
                                                      min(chunk, size - parser.position), etag)
        preamble = preamble or data[:PREAMBLE_BYTES]
        await cpu.run(parser.feed, data)
        chunk = min(chunk * 2, SCAN_CHUNK)
    if not parser.table_read:
        await cpu.run(parser.close)  # raises: the file ends inside its header
    return preamble


async def _frame_record(service: Service, session: Session, parser: Part10Parser, etag: str,
                        size: int) -> FrameIndex | None:
    """The frame offset record: native from the header, the client's once checked, or from a scan of the blob."""
    header = parser.header
    assert header is not None
    if header.pixel_value_offset is None:
        parser.skip_to(size)
        return None
    if header.pixel_value_length is not None:
        if header.pixel_value_offset + header.pixel_value_length > size:
            raise InvalidDataset(f"truncated: Pixel Data needs {header.pixel_value_offset + header.pixel_value_length}"
                                 f" bytes, got {size}")
        parser.skip_to(size)
        return parser.native_index(session.generation)
    if session.record:
        try:
            raw, _ = await service.blobs.staging.get_record(session.frames_name)
        except NotFound:
            raw = b""
        if raw:
            try:
                record = FrameIndex.from_bytes(raw)
            except (ValueError, UnicodeDecodeError):
                raise InvalidDataset("the commit's frame offset record cannot be read") from None
            await cpu.run(check_record, record, header.transfer_syntax, parser.frame_count, parser.offset_tables(),
                          size)
            return record.with_generation(session.generation)
        session.record = False
    return await _scan(service, session, parser, etag, size)


async def _scan(service: Service, session: Session, parser: Part10Parser, etag: str, size: int) -> FrameIndex | None:
    """Walk the rest of the blob's fragments with large parallel ranged reads (nothing is written)."""
    loop = asyncio.get_running_loop()
    reported = loop.time()
    async for data in service.blobs.staging.read(session.data, parser.position, size, SCAN_CHUNK, SCAN_AHEAD, etag):
        parser.feed(data)
        if loop.time() - reported >= PROGRESS_SECONDS:
            reported = loop.time()
            session.progress = parser.position
            await _save(service, session)
    await cpu.run(parser.close)
    return await cpu.run(parser.frame_index, session.generation)


async def _check_sample(service: Service, location: Location, frames: FrameIndex, fmt: PixelFormat | None) -> None:
    """Read a sample of the stored copy's frames where the client's record puts them; 43264 unless they fit,
    and their codestream headers declare the image ``fmt`` describes."""
    numbers = sample(frames, SAMPLED_FRAMES)

    async def one(number: int) -> None:
        offset, length = frames.read_span(number)
        data = await service.blobs.instances.read_range(location, offset, length + SAMPLE_TAIL)
        check_sampled(data, frames, number)
        if fmt is not None and frames.transfer_syntax in codestream.HEADERS:
            check_frame(frame_payload(data[:length], frames.fragments[number - 1]), number, frames, fmt)

    for start in range(0, len(numbers), 16):
        await asyncio.gather(*(one(n) for n in numbers[start : start + 16]))


async def _stored_before(service: Service, session: Session) -> Location:
    """The staged blob is gone: an earlier (or a concurrent) delivery stored it, or it was lost."""
    uids = session.instance
    if uids is not None:
        claim = await service.claims.get(uids["sop"])
        if claim is not None and claim["generation"] == session.generation:
            await generations.settle_claim(service, claim)  # its publication may have stopped half way
            return Location(uids["study"], uids["series"], uids["sop"], session.generation)
    # Another delivery of this ingest may be publishing it right now: try again; after the last
    # delivery the session says why it failed.
    raise StorageFailure("the staged blob is gone")


async def _undo(service: Service, session: Session, location: Location | None, late_writes: bool) -> None:
    """Settle the generation this ingest copied (removed unless its claim names it); never anything stored before.
    ``late_writes``: it failed on the stores, whose timed-out writes may still land (see generations.abandon)."""
    uids = session.instance
    if uids is None:
        return
    await generations.abandon(service, location or Location(uids["study"], uids["series"], uids["sop"],
                                                            session.generation), late_writes)


async def abort(service: Service, session_id: str, owner: str) -> None:
    """Drop a session and its staged blocks; refused while an ingest runs."""
    session = await load(service, session_id, owner)
    if session.status == INGESTING:
        raise StateConflict("the upload is being ingested; wait for its result")
    await _remove(service, session)
    audit.record("upload-abort", "aborted", session=session.id)


async def _remove(service: Service, session: Session) -> None:
    await service.blobs.staging.discard(session.data)
    await service.blobs.staging.delete_record(session.frames_name)
    await service.blobs.staging.delete_record(session.record_name)


def _removable(session: Session, now: datetime) -> bool:
    return session.expired(now) and (session.status != INGESTING or session.stuck(now))


async def expired(service: Service) -> list[str]:
    """Ids of the sessions to remove: expired, and not ingesting (unless their job is long gone)."""
    now = _now()
    found = []
    async for name in service.blobs.staging.list_records(SESSIONS):
        if not name.endswith(".json"):
            continue
        try:
            session = await _read(service, name)
        except NotFound:
            continue
        if _removable(session, now):
            found.append(session.id)
    return found


@jobs.handler(EXPIRE)
async def _expire_job(service: Service, delivery: jobs.Delivery) -> None:
    """Remove one expired session with its staged blocks (again checked: it may have changed meanwhile)."""
    try:
        session = await _read(service, f"{SESSIONS}{delivery.fields['session']}.json")
    except NotFound:
        return
    if _removable(session, _now()):
        await _remove(service, session)


async def cleanup(service: Service) -> int:
    """Send a removal job for every expired session; how many were sent."""
    ids = await expired(service)
    for session_id in ids:
        await jobs.enqueue(service, EXPIRE, session=session_id)
    return len(ids)

