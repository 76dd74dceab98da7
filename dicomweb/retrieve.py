"""WADO-RS use cases (PS3.18 §10.4): instances, metadata, frames and bulk data.

Frames never touch the whole file: the frame offset record (a sidecar, cached per
process) gives each frame's byte range, and neighbouring frames asked for together
are fetched with one ranged read. Each encapsulated frame's item headers are checked
as it is read, so a record that does not fit its file is refused (and rebuilt), never
served as wrong bytes. The index names each instance's current generation;
a process that cached an older one finds its blobs gone once it is replaced, and
looks the instance up again.
"""

from __future__ import annotations

import asyncio
import functools
import json
import zlib
from typing import AsyncIterator, Sequence

from dicomweb import cpu, jobs
from dicomweb.dicom.dicomjson import PIXEL_DATA_KEY, JsonDict
from dicomweb.dicom.frames import ITEM_HEADER, FrameIndex, RecordMismatch, frame_payload
from dicomweb.dicom.syntax import bounded_int
from dicomweb.errors import Archived, BadRequest, DamagedInstance, NotFound, Rehydrating, StorageFailure
from dicomweb.framecache import FrameCache, Key
from dicomweb.service import CachedIndex, Service
from dicomweb.storage.naming import Location
from dicomweb.storage.cosmos import Document

#: Adjacent frames are read together while the combined read stays below this size.
MAX_COALESCED_READ = 4 * 1024 * 1024
#: Reads of an instance replaced under us (looking its generation up again in between).
REREAD_ATTEMPTS = 3
#: Read-ahead widens a read of uncached neighbours up to this size.
MAX_READ_AHEAD = 1024 * 1024
#: The largest frame number a request may name (NumberOfFrames is an IS: at most 2**31 - 1).
MAX_FRAME_NUMBER = 2**31 - 1
#: Sidecars fetched at once for series and study metadata.
METADATA_FETCH_CONCURRENCY = 16
#: zlib level of gzip answers: DICOM JSON shrinks about tenfold even at the fastest levels.
GZIP_LEVEL = 1


def parse_frame_list(text: str, most: int) -> list[int]:
    """``1,5,9`` → [1, 5, 9] (PS3.18 §10.4.1.1.4), at most ``most`` of them; 400 for anything else."""
    items = text.split(",", most)
    if len(items) > most:
        raise BadRequest(f"a request names at most {most} frames (DICOMWEB_MAX_FRAMES_PER_REQUEST)")
    numbers = []
    for item in items:
        number = bounded_int(item.strip(), 1, MAX_FRAME_NUMBER)
        if number is None:
            raise BadRequest(f"a frame list holds frame numbers from 1 to {MAX_FRAME_NUMBER} separated by commas")
        numbers.append(number)
    return numbers


async def instance_documents(service: Service, study: str, series: str | None = None,
                             instance: str | None = None) -> list[Document]:
    """Index documents of the addressed instances; 404 when there are none."""
    if instance is not None:
        doc = await service.index.find(study, "instance", instance)
        docs = [doc] if doc is not None and doc["seriesInstanceUID"] == series else []
    else:
        docs = await service.index.instances(study, series)
    if not docs:
        raise NotFound("no such " + ("instance" if instance else "series" if series else "study"))
    return docs


def location(doc: Document) -> Location:
    """The current generation an instance document names."""
    return Location(doc["studyInstanceUID"], doc["seriesInstanceUID"], doc["sopInstanceUID"], doc["generation"])


async def check_readable(service: Service, docs: Sequence[Document]) -> None:
    """Raise now (NotFound, Archived, Rehydrating, StorageFailure) if any of ``docs`` could not be read later,
    so that a multi-instance answer fails with a status before its body starts; one error for all the
    instances not online (409 when one is OFFLINE, else 503 while they are rehydrated)."""
    window = METADATA_FETCH_CONCURRENCY
    refused: list[Archived] = []
    for start in range(0, len(docs), window):
        batch = docs[start : start + window]
        results = await asyncio.gather(*(service.blobs.instances.check_readable(location(d)) for d in batch),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, Archived):
                refused.append(result)
            elif isinstance(result, BaseException):
                raise result
    if not refused:
        return
    if len(docs) == 1:
        raise refused[0]
    offline = sum(1 for r in refused if not isinstance(r, Rehydrating))
    which = f"{len(refused)} of {len(docs)} instances are"
    if offline:
        raise Archived(f"{which} OFFLINE (Archive tier): ask for rehydration first", offline)
    raise Rehydrating(f"{which} NEARLINE: rehydration from the Archive tier under way",
                      min(r.retry_after for r in refused if isinstance(r, Rehydrating)), len(refused))


async def load_sidecar(service: Service, doc: Document) -> JsonDict:
    """The metadata sidecar of the generation an instance document names (parsed off the loop)."""
    return await cpu.run(json.loads, await service.blobs.sidecars.get(location(doc).sidecar("json")))


async def metadata(service: Service, docs: Sequence[Document]) -> AsyncIterator[tuple[Document, bytes]]:
    """The metadata sidecars' bytes of ``docs`` in order, fetched a bounded number at a time."""
    window = METADATA_FETCH_CONCURRENCY
    for start in range(0, len(docs), window):
        batch = docs[start : start + window]
        sidecars = await asyncio.gather(*(service.blobs.sidecars.get(location(d).sidecar("json")) for d in batch))
        for doc, sidecar in zip(batch, sidecars):
            yield doc, sidecar


async def gzipped(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``body`` as one gzip stream (RFC 1952), compressed off the event loop chunk by chunk."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    async for chunk in body:
        if out := await cpu.run(compressor.compress, chunk):
            yield out
    yield compressor.flush()


def _key(study: str, series: str, instance: str) -> str:
    return f"{study}/{series}/{instance}"


async def frame_index(service: Service, study: str, series: str, instance: str) -> CachedIndex:
    """The frame offset record of an instance's current generation, from the process cache or its sidecar."""
    key = _key(study, series, instance)
    cached = service.frame_indexes.get(key)
    if cached is None:
        (doc,) = await instance_documents(service, study, series, instance)
        found = location(doc)
        try:
            data = await service.blobs.sidecars.get(found.sidecar("frames"))
        except NotFound:
            raise NotFound("no such instance with pixel data") from None
        cached = CachedIndex(FrameIndex.from_bytes(data), found)
        service.frame_indexes.put(key, cached)
    return cached


def check_frames(index: FrameIndex, numbers: Sequence[int]) -> None:
    """404 for a frame beyond NumberOfFrames (PS3.18 §10.4.1.1.4)."""
    beyond = [n for n in numbers if n > len(index)]
    if beyond:
        raise NotFound(f"frame {beyond[0]} is beyond the instance's {len(index)} frames")


def _runs(index: FrameIndex, numbers: Sequence[int]) -> list[list[int]]:
    """Group requested frames, in request order, into runs that lie back to back in the file."""
    runs: list[list[int]] = []
    for number in numbers:
        if runs:
            run = runs[-1]
            start, _ = index.span(run[0])
            end = sum(index.span(run[-1]))
            offset, length = index.span(number)
            if 0 <= offset - end <= ITEM_HEADER and offset + length - start <= MAX_COALESCED_READ:
                run.append(number)
                continue
        runs.append([number])
    return runs


async def read_frames(service: Service, study: str, series: str, instance: str,
                      numbers: Sequence[int]) -> AsyncIterator[bytes]:
    """Each requested frame's bytes, in order; at most one ranged read per run of neighbouring frames."""
    cached = await frame_index(service, study, series, instance)
    for run in _runs(cached.frames, numbers):
        for attempt in range(REREAD_ATTEMPTS):
            try:
                frames = await _run_frames(service, cached, run)
                break
            except NotFound:
                # Replaced (or deleted) since this process read its generation: look it up again.
                service.frame_indexes.drop(_key(study, series, instance))
                if attempt == REREAD_ATTEMPTS - 1:
                    raise NotFound("no such instance") from None
                cached = await frame_index(service, study, series, instance)
        for data in frames:
            yield data


async def _run_frames(service: Service, cached: CachedIndex, run: list[int]) -> list[bytes]:
    """The frames of ``run`` from the frame cache, from reads in flight, or from one new ranged read."""
    name = cached.location.instance
    generation = cached.frames.generation
    cache = service.frames
    found: dict[int, bytes] = {}
    waiting: dict[int, asyncio.Future[bytes]] = {}
    for number in run:
        data = cache.get((name, generation, number))
        if data is not None:
            found[number] = data
        elif (future := cache.pending((name, generation, number))) is not None:
            waiting[number] = future
    missing = [n for n in run if n not in found and n not in waiting]
    if missing:
        found.update(await _read_window(service, cached, missing[0], missing[-1]))
    for number, future in waiting.items():
        try:
            found[number] = await asyncio.shield(future)
        except (NotFound, StorageFailure):
            found.update(await _read_window(service, cached, number, number, read_ahead=False))
    return [found[n] for n in run]


async def _read_window(service: Service, cached: CachedIndex, first: int, last: int,
                       read_ahead: bool = True) -> dict[int, bytes]:
    """Read frames ``first..last`` (widened by read-ahead over uncached neighbours) with one ranged read."""
    index, cache, name = cached.frames, service.frames, cached.location.instance
    key = functools.partial(_frame_key, name, index.generation)
    low, high = first, last
    if read_ahead:
        want_low, want_high = cache.window(name, first, last, len(index))
        size = sum(index.span(last)) - index.span(first)[0]
        while low > want_low and _joins(index, low - 1, low) and _free(cache, key(low - 1)):
            size += index.span(low - 1)[1]
            if size > MAX_READ_AHEAD:
                break
            low -= 1
        while high < want_high and _joins(index, high, high + 1) and _free(cache, key(high + 1)):
            size += index.span(high + 1)[1]
            if size > MAX_READ_AHEAD:
                break
            high += 1
    futures = cache.begin([key(n) for n in range(low, high + 1)])
    start = index.read_span(low)[0]
    end = sum(index.read_span(high))
    try:
        data = memoryview(await service.blobs.instances.read_range(cached.location, start, end - start))
        frames = {}
        for number in range(low, high + 1):
            offset, length = index.read_span(number)
            try:
                frames[number] = frame_payload(data[offset - start : offset - start + length],
                                               index.fragments[number - 1])
            except RecordMismatch as exc:
                raise await _damaged(service, cached, number, exc) from None
    except BaseException as error:
        cache.fail(futures, error)
        raise
    cache.finish(futures, {key(n): frames[n] for n in frames})
    return frames


async def _damaged(service: Service, cached: CachedIndex, number: int, mismatch: RecordMismatch) -> DamagedInstance:
    """Refuse a frame whose bytes do not fit the record, forget the record, and have it rebuilt from the file."""
    found = cached.location
    service.frame_indexes.drop(_key(found.study, found.series, found.sop))
    await jobs.enqueue(service, "rescan", study=found.study, series=found.series, sop=found.sop,
                       generation=found.generation)
    return DamagedInstance(f"frame {number} does not match the frame offset record ({mismatch}); the record is "
                           "being rebuilt from the stored file")


def _frame_key(name: str, generation: str, number: int) -> Key:
    return name, generation, number


def _joins(index: FrameIndex, before: int, after: int) -> bool:
    """Whether frame ``after`` follows frame ``before`` in the file (at most an item header between them)."""
    return 0 <= index.span(after)[0] - sum(index.span(before)) <= ITEM_HEADER


def _free(cache: FrameCache, key: Key) -> bool:
    """Whether a frame is neither cached nor being read (so read-ahead should fetch it)."""
    return cache.get(key) is None and cache.pending(key) is None


def bulk_span(sidecar: JsonDict, path: str) -> tuple[int, int]:
    """Byte range of the bulk value at ``path`` (as in the metadata's BulkDataURI)."""
    span = sidecar["bulk"].get(path)
    if span is None:
        raise NotFound(f"no bulk data at {path}")
    return span[0], span[1]


def is_pixel_data(path: str) -> bool:
    """Whether a bulkdata path names Pixel Data (served frame by frame)."""
    return path == PIXEL_DATA_KEY
