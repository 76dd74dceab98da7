"""Rebuilds the Cosmos index from Blob, the system of record, one study at a time.

A study is a partition: its instance files are grouped by SOP Instance UID (an
instance may have several generations after a replacement that died half way).
Generations marked as being deleted are deleted to the end, and the deletion recorded
unless the change feed has it (the cleanup path of an interrupted DELETE). Of the
rest, the newest generation is kept and every older one removed; the kept one gets its
sidecars back when they are missing (one streaming pass over the file) and is
published like a store, unless the index already names it. A generation of the same
instance in another study (a move that died half way) may be met by another partition
at the same time: publishing keeps the newer one, whichever partition comes first.
Then the study's summaries are recounted and its sidecars whose file is gone deleted.

``dicomweb reindex`` (and ``POST /operations/reindex``) fans the partitions out over
the job queue, one job per study, so that many workers rebuild at once; each finished
partition leaves its report next to the run's record, which is how progress is told.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from dicomweb import cpu, jobs, records
from dicomweb.delete import finish_deletion
from dicomweb.dicom.part10 import Part10Parser
from dicomweb.errors import InvalidDataset, NotFound
from dicomweb.indexing import publish, recount, remove_generation
from dicomweb.service import Service
from dicomweb.storage.naming import DELETING, Location, new_generation

log = logging.getLogger(__name__)

#: Where runs keep their record (``<run>.json``) and their partitions' reports (``<run>/<hash>.json``).
RUNS = "operations/reindex/"
PARTITION = "reindex"
#: Partitions rebuilt at once in one process (``reindex`` in place), and jobs sent at once.
CONCURRENCY = 4
SEND_CONCURRENCY = 32


@dataclass
class ReindexReport:
    """What a reindex did."""

    indexed: int = 0
    rebuilt: int = 0
    removed_sidecars: int = 0
    deleted: int = 0
    removed_generations: int = 0
    #: Files the index cannot take (stored before a limit they break, e.g. attributes beyond the 2 MB item).
    unindexable: int = 0

    def add(self, other: "ReindexReport") -> None:
        for name, value in dataclasses.asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


async def derive_sidecars(service: Service, location: Location) -> records.JsonDict:
    """Parse a stored file again and rewrite both sidecars of its generation."""
    parser = Part10Parser(service.settings.limits)
    async for chunk in service.blobs.instances.stream(location):
        if parser.header is None:
            await cpu.run(parser.feed, chunk)
        else:
            parser.feed(chunk)
    await cpu.run(parser.close)
    assert parser.header is not None
    description = await cpu.run(records.describe, parser.header, service.settings.max_inline_binary)
    made = await cpu.run(records.make_sidecars, parser, description, location.generation)
    await service.blobs.sidecars.put(location.sidecar("json"), made.metadata)
    if made.frames is not None:
        await service.blobs.sidecars.put(location.sidecar("frames"), made.frames)
    return made.sidecar


@jobs.handler("rescan")
async def _rescan_job(service: Service, delivery: jobs.Delivery) -> None:
    """Rebuild the sidecars of a generation whose file did not match its frame offset record."""
    fields = delivery.fields
    location = Location(fields["study"], fields["series"], fields["sop"], fields["generation"])
    if await _indexed(service, location):
        await derive_sidecars(service, location)
        service.forget(location)


async def _sidecar(service: Service, location: Location, kinds: set[str], report: ReindexReport
                   ) -> records.JsonDict:
    """The metadata sidecar of ``location``, both sidecars derived again when one is missing or wrong."""
    try:
        sidecar = json.loads(await service.blobs.sidecars.get(location.sidecar("json")))
        if records.location(sidecar) == location and (sidecar["numberOfFrames"] is None or "frames" in kinds):
            return sidecar
    except NotFound:
        pass
    report.rebuilt += 1
    return await derive_sidecars(service, location)


async def _indexed(service: Service, location: Location) -> bool:
    """Whether the claim and the instance document already name ``location``."""
    claim = await service.index.claim(location.sop)
    if claim is None or claim["generation"] != location.generation:
        return False
    doc = await service.index.find(location.study, "instance", location.sop)
    return doc is not None and doc["generation"] == location.generation


async def partitions(service: Service) -> list[str]:
    """``<study>/`` of every study with a file or a sidecar: the partitions of a reindex."""
    found = {prefix async for prefix in service.blobs.instances.studies()}
    found |= {prefix async for prefix in service.blobs.sidecars.studies()}
    return sorted(found)


async def reindex_study(service: Service, prefix: str) -> ReindexReport:
    """Make the index name the newest generation of every instance stored under ``prefix`` (a study)."""
    report = ReindexReport()
    present: dict[Location, set[str]] = {}
    async for location, kind in service.blobs.sidecars.entries(prefix):
        present.setdefault(location, set()).add(kind)
    copies: dict[str, list[tuple[Location, dict[str, str]]]] = {}
    async for location, metadata in service.blobs.instances.list(prefix):
        copies.setdefault(location.sop, []).append((location, metadata))
    studies: set[str] = set()
    for found in copies.values():
        live = []
        for location, metadata in found:
            studies.add(location.study)
            if metadata.get(DELETING):
                await finish_deletion(service, location, metadata[DELETING])
                report.deleted += 1
            else:
                live.append(location)
        if not live:
            continue
        live.sort(key=lambda loc: loc.generation)
        keep = live[-1]
        for old in live[:-1]:
            await remove_generation(service, old)
            report.removed_generations += 1
        try:
            sidecar = await _sidecar(service, keep, present.get(keep, set()), report)
        except InvalidDataset as exc:
            log.error("reindex: %s/%s/%s (generation %s) cannot be indexed, left as it is: %s", keep.study,
                      keep.series, keep.sop, keep.generation, exc.message)
            report.unindexable += 1
            continue
        if await _indexed(service, keep) or await publish(service, sidecar, replace=True, newest_wins=True):
            report.indexed += 1
        else:
            report.removed_generations += 1  # a newer generation of it lives in another study
    for study in sorted(studies):
        await recount(service, study)
    async for location in service.blobs.sidecars.list(prefix):
        if not await service.blobs.instances.exists(location):
            await service.blobs.sidecars.delete(location.sidecars)
            report.removed_sidecars += 1
    return report


async def reindex(service: Service) -> ReindexReport:
    """Rebuild every partition in this process, a few at once (``serve`` on an empty index, ``check --repair``)."""
    report = ReindexReport()
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(prefix: str) -> None:
        async with slots:
            report.add(await reindex_study(service, prefix))

    await asyncio.gather(*(one(prefix) for prefix in await partitions(service)))
    return report


@dataclass(frozen=True)
class Run:
    """A reindex fanned out over the job queue: its id, partitions, and when it started."""

    id: str
    total: int
    started: str


@dataclass(frozen=True)
class Progress:
    """How far a run got: partitions done, and (once all are) what they did together."""

    run: Run
    done: int
    report: ReindexReport | None

    @property
    def finished(self) -> bool:
        return self.done >= self.run.total


def _marker(run: str, prefix: str) -> str:
    return f"{RUNS}{run}/{hashlib.sha1(prefix.encode()).hexdigest()}.json"


async def start(service: Service) -> Run:
    """Send one partition job per study; the run, whose progress :func:`progress` tells."""
    prefixes = await partitions(service)
    run = Run(new_generation(), len(prefixes), datetime.now(timezone.utc).isoformat(timespec="seconds"))
    await service.blobs.staging.put_record(f"{RUNS}{run.id}.json", json.dumps(dataclasses.asdict(run)).encode())
    slots = asyncio.Semaphore(SEND_CONCURRENCY)

    async def send(prefix: str) -> None:
        async with slots:
            await jobs.enqueue(service, PARTITION, run=run.id, prefix=prefix)

    await asyncio.gather(*(send(prefix) for prefix in prefixes))
    return run


async def progress(service: Service, run_id: str) -> Progress:
    """The run ``run_id`` (NotFound when unknown) and how many of its partitions are done."""
    if not run_id.isalnum():
        raise NotFound("no such reindex run")
    try:
        raw, _ = await service.blobs.staging.get_record(f"{RUNS}{run_id}.json")
    except NotFound:
        raise NotFound("no such reindex run") from None
    run = Run(**json.loads(raw))
    markers = [name async for name in service.blobs.staging.list_records(f"{RUNS}{run_id}/")]
    if len(markers) < run.total:
        return Progress(run, len(markers), None)
    report = ReindexReport()
    slots = asyncio.Semaphore(SEND_CONCURRENCY)

    async def read(name: str) -> None:
        async with slots:
            report.add(ReindexReport(**json.loads((await service.blobs.staging.get_record(name))[0])))

    await asyncio.gather(*(read(name) for name in markers))
    return Progress(run, len(markers), report)


@jobs.handler(PARTITION)
async def _partition_job(service: Service, delivery: jobs.Delivery) -> None:
    """Rebuild one study of a run and leave its report (a redelivery rebuilds it again: that is harmless)."""
    run, prefix = delivery.fields["run"], delivery.fields["prefix"]
    report = await reindex_study(service, prefix)
    await service.blobs.staging.put_record(_marker(run, prefix), json.dumps(dataclasses.asdict(report)).encode())
