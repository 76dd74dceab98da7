"""``dicomweb upload``: store DICOM files and folders in a DICOMweb service at full speed.

Small instances go by single-part STOW-RS; large ones (or any the service refuses with
413) through upload sessions, their blocks put straight to Blob in parallel, and the
file's frame offset record, computed here with the service's own parser while the
blocks travel, sent with the commit: the service checks it instead of reading the
file again. Several instances travel at once. Transient failures (connection errors, 408/429/5xx) are
retried with backoff; an interrupted session is resumed from a state file, sending only
the blocks that have not arrived. Only HTTP is spoken: no Azure SDK, no credentials
but an optional bearer token for the service itself.

Scanner files are converted (:mod:`dicomweb.convert`) a part at a time into a temporary
folder, and each part travels while the next is written: its blocks are put, but nothing is
committed (nor sent by STOW-RS) before the whole file is converted, so a file that turns out
truncated or corrupt halfway stores nothing; its open sessions are dropped. The base level,
most of the bytes, travels even while it is written: through a session whose size its
commit gives, its blocks are put as the file grows past them, all but those holding the
header and the Basic Offset Table, which the converter fills in last and which go once the
level is written.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, BinaryIO, Callable, TextIO

import aiohttp
from tqdm import tqdm

from dicomweb import convert
from dicomweb.converter import Converter
from dicomweb.dicom.part10 import frame_record, frames_start
from dicomweb.dicom.syntax import is_part10_file
from dicomweb.errors import BadRequest, InvalidDataset

MIB = 1024 * 1024
DUPLICATE = 45070
#: A processing failure (PS3.18 Table 10.5.3-1): transient on the service's side, so worth another try.
PROCESSING_FAILURE = 272
#: Tries of an instance whose store failed with a processing failure, and the first backoff (doubling).
STORE_ATTEMPTS = 5
STORE_BACKOFF = 1.0
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
ATTEMPTS = 6
STOW_CHUNK = MIB
POLL_SECONDS = 2.0
#: How often the size of a file being written is looked at, to put the blocks it has grown past.
FOLLOW_SECONDS = 0.02
#: Where a file being written has no first frame within this many bytes, all its blocks wait for its end.
FOLLOW_HEAD_BYTES = 128 * MIB


class UploadError(Exception):
    """An instance could not be stored; the message says why."""


@dataclass
class Result:
    """What happened to one file."""

    path: Path
    size: int
    status: str  # stored | exists | failed | skipped
    sop: str = ""
    detail: str = ""
    seconds: float = 0.0
    #: Of ``seconds``, the time from the commit of an upload session to its result (the service's ingest pass).
    ingest_seconds: float = 0.0
    #: Times the instance was sent (more than 1 after processing failures the service reported as transient).
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.status in ("stored", "exists", "skipped")


@dataclass
class Slide:
    """A scanner file to convert and upload."""

    source: Path
    metadata: convert.SlideMetadata
    #: Where its parts are written (removed as each is stored).
    work: Path


def _block_id(index: int) -> str:
    """The Put Block id of block ``index`` of a session opened without a size: the base64 of the index as six
    digits (``dicomweb.uploads.wire_block_id``, the id every planned block has)."""
    return base64.b64encode(f"{index:06d}".encode()).decode()


class _Abandoned(Exception):
    """The file an instance was converted from could not be converted: the instance must not be stored."""


def find_files(paths: list[Path]) -> tuple[list[Path], list[Path], list[Result]]:
    """DICOM Part 10 files named or inside the folders named, the files to convert first (scanner files in the
    folders, and every other file named explicitly: naming one that cannot be converted is a failure, not a
    skip), and the rest of the folders' files as skipped results."""
    files, scanner, skipped = [], [], []
    for path in paths:
        named = not path.is_dir()
        candidates = [path] if named else sorted(p for p in path.rglob("*") if p.is_file())
        for candidate in candidates:
            if not candidate.is_file():
                skipped.append(Result(candidate, 0, "failed", detail="no such file"))
                continue
            if is_part10_file(candidate):
                files.append(candidate)
            elif named or convert.is_scanner_file(candidate):
                scanner.append(candidate)
            else:
                skipped.append(Result(candidate, candidate.stat().st_size, "skipped",
                                      detail="not a DICOM Part 10 file"))
    return files, scanner, skipped


class _Transient(Exception):
    """The service failed to process the instance in a way that may pass (reason 272): send it again."""

    def __init__(self, sop: str, detail: str) -> None:
        super().__init__(detail)
        self.sop = sop
        self.detail = detail


def _stow_outcome(status: int, body: Any) -> tuple[str, str, str]:
    """(status, SOP Instance UID, detail) from a STOW-RS answer (PS3.18 §10.5.3); _Transient for reason 272."""
    body = body if isinstance(body, dict) else {}
    stored = body.get("00081199", {}).get("Value", [])
    failed = body.get("00081198", {}).get("Value", [])
    if status == 200 and stored:
        return "stored", stored[0].get("00081155", {}).get("Value", [""])[0], ""
    if failed:
        item = failed[0]
        sop = item.get("00081155", {}).get("Value", [""])[0]
        reason = item.get("00081197", {}).get("Value", [0])[0]
        if reason == DUPLICATE:
            return "exists", sop, "already stored"
        if reason == PROCESSING_FAILURE:
            raise _Transient(sop, f"failure reason {reason}")
        return "failed", sop, f"failure reason {reason}"
    message = body.get("message") or body.get("00000902", {}).get("Value", [""])[0]
    raise UploadError(f"HTTP {status}: {message or 'unexpected answer'}")


class Uploader:
    """Uploads files to one DICOMweb service; :meth:`run` returns a result per file."""

    def __init__(self, url: str, *, token: str | None = None, parallel: int = 4, block_concurrency: int = 32,
                 stow_max_bytes: int = 64 * MIB, state_path: Path | None = None, progress: bool | None = None) -> None:
        self._url = url.rstrip("/")
        self._headers = {"authorization": f"Bearer {token}"} if token else {}
        self._instances = asyncio.Semaphore(parallel)
        self._blocks = asyncio.Semaphore(block_concurrency)
        self._stow_max = stow_max_bytes
        self._state_path = state_path or Path.home() / ".cache" / "dicomweb" / "uploads.json"
        self._progress_enabled = progress
        self._bar: tqdm | None = None
        self._session: aiohttp.ClientSession | None = None

    # --- state of unfinished sessions, for resuming ----------------------------------------

    def _key(self, path: Path) -> str:
        stat = path.stat()
        return f"{self._url}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"

    def _state(self) -> dict[str, str]:
        try:
            return json.loads(self._state_path.read_text())
        except (OSError, ValueError):
            return {}

    def _remember(self, key: str, session_id: str | None) -> None:
        state = self._state()
        if session_id is None:
            state.pop(key, None)
        else:
            state[key] = session_id
        self._state_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self._state_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, indent=1))
        temporary.replace(self._state_path)

    # --- HTTP ----------------------------------------------------------------------------------

    async def _request(self, method: str, url: str, *, service: bool = True,
                       body: Callable[[], Any] | None = None, headers: dict[str, str] | None = None,
                       ok: tuple[int, ...] = ()) -> tuple[int, dict[str, str], bytes]:
        """One request with retries of transient failures; ``body`` makes a fresh body per attempt."""
        assert self._session is not None
        all_headers = {**(self._headers if service else {}), **(headers or {})}
        for attempt in range(ATTEMPTS):
            try:
                async with self._session.request(method, url, data=body() if body else None,
                                                 headers=all_headers) as response:
                    content = await response.read()
                    if response.status not in RETRY_STATUSES or response.status in ok or attempt == ATTEMPTS - 1:
                        return response.status, dict(response.headers), content
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                if attempt == ATTEMPTS - 1:
                    raise UploadError(f"{method} {url.split('?')[0]} failed: {exc.__class__.__name__}") from exc
            await asyncio.sleep(min(0.5 * 2 ** attempt, 8.0))
        raise AssertionError("unreachable")

    async def _json(self, method: str, url: str, payload: object | None = None) -> tuple[int, Any]:
        body = (lambda: json.dumps(payload).encode()) if payload is not None else None
        headers = {"content-type": "application/json"} if payload is not None else {}
        status, _, content = await self._request(method, url, body=body, headers=headers)
        try:
            return status, json.loads(content) if content else None
        except ValueError:
            raise UploadError(f"HTTP {status}: {content[:200].decode('latin-1')}") from None

    def _advance(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count)

    # --- one file ------------------------------------------------------------------------------

    async def _file_chunks(self, path: Path, sent: list[int]) -> AsyncIterator[bytes]:
        with path.open("rb") as handle:
            while chunk := await asyncio.to_thread(handle.read, STOW_CHUNK):
                sent[0] += len(chunk)
                self._advance(len(chunk))
                yield chunk

    async def _stow(self, path: Path, size: int) -> tuple[str, str, str]:
        sent = [0]

        def body() -> AsyncIterator[bytes]:
            self._advance(-sent[0])
            sent[0] = 0
            return self._file_chunks(path, sent)

        status, _, content = await self._request(
            "POST", f"{self._url}/studies", body=body,
            headers={"content-type": "application/dicom", "content-length": str(size),
                     "accept": "application/dicom+json"},
            ok=(413,))
        if status == 413:
            self._advance(-sent[0])
            raise _TooLarge
        try:
            answer = json.loads(content) if content else {}
        except ValueError:
            raise UploadError(f"HTTP {status}: {content[:200].decode('latin-1')}") from None
        return _stow_outcome(status, answer)

    async def _put_block(self, path: Path, session: dict, block: dict) -> None:
        async with self._blocks:
            data = await asyncio.to_thread(_pread, path, block["offset"], block["length"])
            for _ in range(3):
                status, _, content = await self._request(
                    "PUT", f"{session['uploadUrl']}&comp=block&blockid={block['id']}", service=False,
                    body=lambda: data, headers={"content-length": str(len(data))}, ok=(403,))
                if status == 201:
                    self._advance(len(data))
                    return
                if status != 403:
                    raise UploadError(f"Blob Storage answered {status} to block {block['index']}: {content[:200]!r}")
                # The write SAS expired: the session hands out a fresh one.
                status, fresh = await self._json("GET", session["statusUrl"])
                if status != 200 or fresh.get("status") != "open":
                    raise UploadError(f"the upload session is no longer open (HTTP {status})")
                session["uploadUrl"] = fresh["uploadUrl"]
            raise UploadError(f"Blob Storage refused block {block['index']} with a fresh SAS")

    async def _follow(self, folder: Path, written: asyncio.Future[list[Path]]) -> dict | None:
        """Put the blocks of the file being written into ``folder`` as it grows past them, through a session whose
        commit gives the size; the session once the file is complete (``written``) and every block is put, with
        the file's size and frame offset record (read while the last blocks travel).

        Bytes before the first frame (the header and the offset tables, filled in once the last frame is
        written: :func:`dicomweb.dicom.part10.frames_start`) go last. None, and the session dropped, for a part
        that is not one file finished where it was written (a writer may replace a file instead of finishing it
        in place), or when a block could not be put: the file then goes as any other.
        """
        status, session = await self._json("POST", f"{self._url}/uploads", {"size": None})
        if status != 201:
            return None
        block, start, look_at = session["blockSize"], None, 0
        puts: dict[int, tuple[asyncio.Task[None], int]] = {}
        handle = None

        def put(index: int, length: int) -> None:
            assert handle is not None
            task = asyncio.create_task(self._put_block(Path(handle.name), session, {
                "index": index, "id": _block_id(index), "offset": index * block, "length": length}))
            puts[index] = task, length

        try:
            while True:
                finished = written.done()
                if handle is None:
                    handle = _open_only_file(folder)
                if handle is not None:
                    size = os.fstat(handle.fileno()).st_size
                    if start is None and look_at <= size <= FOLLOW_HEAD_BYTES:
                        start = await asyncio.to_thread(frames_start, handle.fileno(), size)
                        look_at = 2 * size  # each look reads the header again: at most twice its bytes in all
                    if start is not None:
                        for index in range(math.ceil(start / block), size // block):
                            if index not in puts:
                                put(index, block)
                if finished:
                    break
                await asyncio.sleep(FOLLOW_SECONDS)
            files = written.result()
            if handle is None or len(files) != 1 or os.stat(files[0]).st_ino != os.fstat(handle.fileno()).st_ino:
                raise _NotFollowed
            size = os.fstat(handle.fileno()).st_size
            for index in range(math.ceil(size / block)):
                if index not in puts:
                    put(index, min(block, size - index * block))
            *_, record = await asyncio.gather(*(task for task, _ in puts.values()),
                                              asyncio.to_thread(frame_record, files[0]))
            return {**session, "size": size, "record": record}
        except (_NotFollowed, UploadError, OSError):
            for task, _ in puts.values():
                task.cancel()
            await asyncio.gather(*(task for task, _ in puts.values()), return_exceptions=True)
            self._advance(-sum(length for task, length in puts.values() if not task.cancelled() and not task.exception()))
            await self._request("DELETE", session["statusUrl"], ok=(404,))
            return None
        finally:
            if handle is not None:
                handle.close()

    async def _upload_session(self, path: Path, size: int, timing: dict[str, float],
                              gate: asyncio.Future[bool] | None, streamed: dict | None = None) -> tuple[str, str, str]:
        """Store ``path`` through an upload session: a resumed one, a new one, or the ``streamed`` one whose blocks
        :meth:`_follow` put while the file was written (its commit gives the size)."""
        key = self._key(path)
        session = streamed
        known = self._state().get(key) if streamed is None else None
        if known:
            status, described = await self._json("GET", f"{self._url}/uploads/{known}")
            if status == 200:
                session = described
        if session is None:
            status, session = await self._json("POST", f"{self._url}/uploads", {"size": size})
            if status != 201:
                raise UploadError(f"HTTP {status}: {(session or {}).get('message', 'the session was refused')}")
            self._remember(key, session["id"])
        if session["status"] == "open":
            if streamed is None:
                missing = set(session["missing"])
                blocks = [b for b in session["blocks"] if b["index"] in missing]
                self._advance(size - sum(b["length"] for b in blocks))
                *_, record = await asyncio.gather(*(self._put_block(path, session, b) for b in blocks),
                                                  asyncio.to_thread(frame_record, path))
            else:
                record = streamed["record"]
            if gate is not None and not await gate:
                self._remember(key, None)
                await self._request("DELETE", session["statusUrl"], ok=(404,))
                raise _Abandoned
            timing["commit"] = time.perf_counter()
            commit_url = session["commitUrl"] + (f"?size={size}" if streamed is not None else "")
            status, _, content = await self._request(
                "POST", commit_url, ok=(202,), body=lambda: record or b"",
                headers={"content-type": "application/octet-stream"})
            if status != 202:
                self._remember(key, None)
                return _stow_outcome(status, json.loads(content) if content else {})
        else:
            self._advance(size)
            if session["status"] == "ingesting":
                # Resumed while ingesting: committing again makes sure an ingest job is on its way.
                await self._request("POST", session["commitUrl"], ok=(202,))
        while True:
            status, described = await self._json("GET", session["statusUrl"])
            if status != 200:
                raise UploadError(f"HTTP {status} while waiting for the ingest")
            if described.get("result"):
                self._remember(key, None)
                return _stow_outcome(described["result"]["status"], described["result"]["body"])
            await asyncio.sleep(POLL_SECONDS)

    async def _store(self, path: Path, size: int, timing: dict[str, float],
                     gate: asyncio.Future[bool] | None, streamed: dict | None) -> tuple[str, str, str]:
        if streamed is not None:
            return await self._upload_session(path, size, timing, gate, streamed)
        try:
            if size > self._stow_max:
                raise _TooLarge
            if gate is not None and not await gate:
                raise _Abandoned
            return await self._stow(path, size)
        except _TooLarge:
            return await self._upload_session(path, size, timing, gate)

    async def _one(self, path: Path, gate: asyncio.Future[bool] | None = None,
                   following: asyncio.Task[dict | None] | None = None) -> Result:
        """Store one file; with a ``gate``, nothing is committed before it resolves, and nothing at all when it
        resolves False. ``following`` puts the blocks of a file being written (:meth:`_follow`): its session,
        once the file is complete, is committed, unless it went wrong (None), and the file goes as any other."""
        streamed = await following if following is not None else None
        if gate is not None and streamed is None and path.stat().st_size <= self._stow_max:
            await asyncio.wait([gate])  # a STOW-RS part has nothing to do before then: it holds no slot meanwhile
        async with self._instances:
            size = path.stat().st_size
            started = time.perf_counter()
            timing: dict[str, float] = {}
            attempt = 1
            while True:
                try:
                    status, sop, detail = await self._store(path, size, timing, gate, streamed)
                    break
                except _Transient as transient:
                    if attempt == STORE_ATTEMPTS:
                        status, sop, detail = "failed", transient.sop, f"{transient.detail} after {attempt} tries"
                        break
                    self._advance(-size)
                    streamed = None  # committed: another try opens a session of its own
                    await asyncio.sleep(STORE_BACKOFF * 2 ** (attempt - 1) * random.uniform(0.5, 1.0))
                    attempt += 1
                except _Abandoned:
                    self._advance(-size)
                    return Result(path, size, "failed", detail="abandoned: its scanner file could not be converted")
                except (UploadError, OSError) as exc:
                    return Result(path, size, "failed", detail=str(exc), seconds=time.perf_counter() - started,
                                  attempts=attempt)
            ended = time.perf_counter()
            return Result(path, size, status, sop, detail, ended - started, ended - timing.get("commit", ended),
                          attempt)

    async def run(self, files: list[Path], slides: list[Slide] = (), converter: Converter | None = None
                  ) -> list[Result]:
        """Upload ``files`` and convert and upload ``slides`` (in ``converter``'s process, started or not): a result
        per file, then per converted instance (or one per slide that could not be converted). The converter's
        process is ended at the end."""
        total = sum(path.stat().st_size for path in files) + sum(slide.source.stat().st_size for slide in slides)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=600)
        self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                         disable=None if self._progress_enabled is None else not self._progress_enabled,
                         desc="upload", dynamic_ncols=True)
        conversions = _Conversions(converter or Converter(self._progress_enabled), len(slides))
        try:
            async with aiohttp.ClientSession(timeout=timeout, trust_env=False,
                                             connector=aiohttp.TCPConnector(limit=64)) as self._session:
                done = await asyncio.gather(*(self._one(path) for path in files),
                                            *(self._slide(slide, conversions) for slide in slides))
        finally:
            await conversions.close()
            self._bar.close()
            self._session = None
        return [result for item in done for result in (item if isinstance(item, list) else [item])]

    async def _slide(self, slide: Slide, conversions: "_Conversions") -> list[Result]:
        """Convert one scanner file in the converter's process (one conversion at a time: it keeps a core busy)
        and upload each part as it is written; commit them once the whole file is converted."""
        loop = asyncio.get_running_loop()
        parts: asyncio.Queue[list[Path] | BaseException | None] = asyncio.Queue()
        gate: asyncio.Future[bool] = loop.create_future()
        started = time.perf_counter()
        following: dict[Path, tuple[asyncio.Task[dict | None], asyncio.Future[list[Path]]]] = {}

        def follow(folder: Path) -> None:
            """The first part, the base level, travels while it is written (unless the slide is one for STOW-RS)."""
            if not following and slide.source.stat().st_size > self._stow_max:
                written: asyncio.Future[list[Path]] = loop.create_future()
                following[folder] = (asyncio.create_task(self._follow(folder, written)), written)

        def produce() -> None:
            try:
                for part in conversions.converter.parts(
                        slide.source, slide.work, slide.metadata, check=False,
                        starting=lambda folder: loop.call_soon_threadsafe(follow, folder)):
                    loop.call_soon_threadsafe(parts.put_nowait, part)
                loop.call_soon_threadsafe(parts.put_nowait, None)
            except BaseException as exc:  # noqa: BLE001 - handed to the event loop, which decides
                loop.call_soon_threadsafe(parts.put_nowait, exc)

        async def upload(path: Path, follower: asyncio.Task[dict | None] | None) -> Result:
            result = await self._one(path, gate, follower)
            path.unlink(missing_ok=True)  # disk holds a part only until it is stored
            return result

        uploads: list[asyncio.Task[Result]] = []
        async with conversions.one_at_a_time:
            self._bar.total -= slide.source.stat().st_size  # the estimate gives way to the parts' sizes
            producing = asyncio.create_task(asyncio.to_thread(produce))
            # The file is checked here while the converter's process starts and writes: the check, not the
            # converter, decides a damaged file (it may convert into fewer levels), and nothing is committed before.
            checked = asyncio.create_task(asyncio.to_thread(convert.check_source, slide.source, slide.source.name))
            while isinstance(part := await parts.get(), list):
                self._bar.total += sum(path.stat().st_size for path in part)
                self._bar.refresh()
                follower, written = following.get(part[0].parent, (None, None)) if part else (None, None)
                if written is not None:
                    written.set_result(part)
                uploads += [asyncio.create_task(upload(path, follower)) for path in part]
            for _, written in following.values():
                if not written.done():
                    written.set_result([])  # never written: its follower drops its session
            await producing
        conversions.ended()
        try:
            await checked
        except Exception as refused:  # noqa: BLE001 - the check decides, whatever the converter made
            part = refused
        gate.set_result(part is None)
        results = list(await asyncio.gather(*uploads))
        await asyncio.gather(*(follower for follower, _ in following.values()))
        if isinstance(part, BaseException):
            reason = part.message if isinstance(part, InvalidDataset) else f"{part.__class__.__name__}: {part}"
            return [Result(slide.source, slide.source.stat().st_size, "failed", detail=reason,
                           seconds=time.perf_counter() - started)]
        for result in results:
            result.detail = f"from {slide.source.name}" + (f": {result.detail}" if result.detail else "")
            result.path = slide.source
        return results


class _Conversions:
    """The run's converter (its process started at once, to ready itself while the uploads start), one file at a
    time, and ended as soon as the last file is converted."""

    def __init__(self, converter: Converter, files: int) -> None:
        self.converter = converter.start() if files else converter
        self.one_at_a_time = asyncio.Lock()
        self._left = files
        self._closing: asyncio.Task[None] | None = None

    def ended(self) -> None:
        """One file is converted: after the last, the process ends while the uploads go on."""
        self._left -= 1
        if self._left == 0:
            self._closing = asyncio.create_task(asyncio.to_thread(self.converter.close))

    async def close(self) -> None:
        await (self._closing or asyncio.to_thread(self.converter.close))


class _TooLarge(Exception):
    """The instance goes through an upload session instead of STOW-RS."""


class _NotFollowed(Exception):
    """A part's file was not finished where it was followed: its blocks may not be its bytes."""


def _open_only_file(folder: Path) -> BinaryIO | None:
    """The one file in ``folder``, open for reading; None while there is none (or there are several)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return None
    return (folder / names[0]).open("rb") if len(names) == 1 else None


def _pread(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as handle:
        return os.pread(handle.fileno(), length, offset)


def report(results: list[Result], seconds: float, out: TextIO, as_json: bool = False, verbose: bool = False) -> None:
    """The per-instance table and a summary line, or one JSON object per file.

    Files skipped as not DICOM (a source tree holds thousands) are counted in one line, and
    listed only with ``verbose``.
    """
    shown = [r for r in results if verbose or r.status != "skipped"]
    if as_json:
        for result in shown:
            print(json.dumps({**dataclasses.asdict(result), "path": str(result.path)}), file=out)
        return
    print(f"{'status':<8} {'MB':>9} {'s':>7} {'ingest s':>8} {'tries':>5}  {'SOP Instance UID':<64}  file / detail",
          file=out)
    for result in shown:
        detail = f"{result.path}" + (f": {result.detail}" if result.detail else "")
        ingest = f"{result.ingest_seconds:.1f}" if result.ingest_seconds else ""
        print(f"{result.status:<8} {result.size / 1e6:>9.1f} {result.seconds:>7.1f} {ingest:>8} {result.attempts:>5}  "
              f"{result.sop:<64}  {detail}", file=out)
    counts = {s: sum(r.status == s for r in results) for s in ("stored", "exists", "failed", "skipped")}
    if counts["skipped"] and not verbose:
        files = "file" if counts["skipped"] == 1 else "files"
        print(f"{counts['skipped']} {files} skipped as not DICOM (--verbose lists them)", file=out)
    moved = sum(r.size for r in results if r.status == "stored")
    rate = moved / 1e6 / seconds if seconds > 0 else 0.0
    retried = sum(r.attempts > 1 for r in results)
    print(f"{counts['stored']} stored, {counts['exists']} already stored, {counts['failed']} failed, "
          f"{counts['skipped']} skipped, {retried} retried after a processing failure; "
          f"{moved / 1e6:.1f} MB in {seconds:.1f} s ({rate:.1f} MB/s)", file=out)


def main(paths: list[Path], url: str, token: str | None, parallel: int, block_concurrency: int, stow_max_mb: int,
         state: Path | None, progress: bool | None, as_json: bool = False, verbose: bool = False,
         options: convert.SlideMetadata = convert.SlideMetadata(), metadata_file: Path | None = None,
         converter: Converter | None = None) -> int:
    """Run an upload from the command line; exit code 1 when anything failed.

    Scanner files are converted (:mod:`dicomweb.convert`) into a temporary folder (disk, never
    memory, holds the converted levels, each until it is stored) while the parts already
    written travel; a converted instance's result names its scanner file. ``converter`` is one
    started already (or None: one starts if there are scanner files).
    """
    converter = converter or Converter(progress)
    files, scanner, results = find_files(paths)
    try:
        per_file = convert.load_metadata(metadata_file) if metadata_file is not None else {}
    except (OSError, BadRequest) as exc:
        print(f"dicomweb upload: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dicomweb-convert-") as work:
        slides = [Slide(source, per_file.get(source.name, convert.SlideMetadata()).merged(options),
                        Path(work) / str(number)) for number, source in enumerate(scanner)]
        uploader = Uploader(url, token=token, parallel=parallel, block_concurrency=block_concurrency,
                            stow_max_bytes=stow_max_mb * MIB, state_path=state, progress=progress)
        results = asyncio.run(uploader.run(files, slides, converter)) + results
    report(results, time.perf_counter() - started, sys.stdout, as_json, verbose)
    return 0 if results and all(r.ok for r in results) else 1
