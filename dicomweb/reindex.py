"""Rebuilds the Cosmos index from Blob, the system of record, one study at a time.

A study is a partition: its instance files are grouped by SOP Instance UID and
classified against the instance's claim (:func:`dicomweb.generations.classify`, the same
rules ``dicomweb check`` reports by). What no writer can still be working on is acted on:
a deletion or a publication its writer did not finish is finished; an unnamed generation
is published when the instance has no claim (the index was lost), else removed (a store
that failed, a generation a replacement displaced); the generation a current claim names
gets its sidecars back when they are missing (one streaming pass over the file) and its
document where it is missing. Work in flight is left to its writer: a claim
``publishing`` and an unnamed file committed less than ``in_flight_seconds`` ago (an
offline repair passes 0). Then the study's summaries are recounted and its sidecars whose
file is gone (and not about to come) deleted.

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

from dicomweb import availability, cpu, generations, jobs, records
from dicomweb.dicom.part10 import Part10Parser
from dicomweb.errors import Duplicate, InvalidDataset, NotFound
from dicomweb.generations import IN_FLIGHT_SECONDS, StoredFile
from dicomweb.service import Service
from dicomweb.storage.naming import Location, new_generation

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
    #: Deletions and publications their writers left unfinished, finished.
    finished: int = 0
    removed_generations: int = 0
    #: Generations left to a writer still within IN_FLIGHT_SECONDS of its work.
    in_flight: int = 0
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
    await generations.describe(service, location, made)
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
    """Whether the claim names ``location`` as current and its instance document names it too."""
    claim = await service.claims.get(location.sop)
    if claim is None or claim["generation"] != location.generation or generations.state(claim) != generations.CURRENT:
        return False
    doc = await service.index.find(location.study, "instance", location.sop)
    return doc is not None and doc["generation"] == location.generation


async def partitions(service: Service) -> list[str]:
    """``<study>/`` of every study with a file or a sidecar: the partitions of a reindex."""
    found = {prefix async for prefix in service.blobs.instances.studies()}
    found |= {prefix async for prefix in service.blobs.sidecars.studies()}
    return sorted(found)


async def reindex_study(service: Service, prefix: str, in_flight_seconds: float = IN_FLIGHT_SECONDS
                        ) -> ReindexReport:
    """Make the index name what Blob holds under ``prefix`` (a study), leaving work in flight to its writer."""
    report = ReindexReport()
    present: dict[Location, set[str]] = {}
    async for location, kind in service.blobs.sidecars.entries(prefix):
        present.setdefault(location, set()).add(kind)
    files: dict[str, list[StoredFile]] = {}
    async for location, created in service.blobs.instances.list(prefix):
        files.setdefault(location.sop, []).append(StoredFile(location, created))
    now = datetime.now(timezone.utc)
    for sop, found in files.items():
        claim = await service.claims.get(sop)
        plan = generations.classify(found, claim, now, in_flight_seconds, every_study=False)
        report.in_flight += len(plan.in_flight)
        if plan.unfinished and claim is not None:
            await generations.settle_claim(service, claim)
            report.finished += 1
        for location in plan.remove:
            await generations.settle(service, location)  # reads the claim again: it removes only what none names
            report.removed_generations += 1
        for location in filter(None, (plan.kept, plan.publish)):
            try:
                sidecar = await _sidecar(service, location, present.get(location, set()), report)
            except InvalidDataset as exc:
                log.error("reindex: %s/%s/%s (generation %s) cannot be indexed, left as it is: %s", location.study,
                          location.series, location.sop, location.generation, exc.message)
                report.unindexable += 1
                continue
            if location == plan.kept:
                assert claim is not None
                await generations.project(service, sidecar, claim["sequence"])  # where missing or older
                report.indexed += 1
                continue
            try:
                await generations.publish(service, sidecar, replace=False)
                report.indexed += 1
            except Duplicate:
                report.in_flight += 1  # claimed meanwhile (a store, or another study's partition): theirs
    for study in sorted({location.study for found in files.values() for location in (f.location for f in found)}):
        await availability.reconcile_study(service, f"{study}/")  # a rebuilt document says ONLINE until told
        await generations.recount(service, study)
    async for location, written in service.blobs.sidecars.list(prefix):
        # A store writes its sidecars while its file is committed: young ones may be about to have one.
        if (now - written).total_seconds() >= in_flight_seconds and not await service.blobs.instances.exists(location):
            await service.blobs.sidecars.delete(location.sidecars)
            report.removed_sidecars += 1
    return report


async def reindex(service: Service, in_flight_seconds: float = IN_FLIGHT_SECONDS) -> ReindexReport:
    """Rebuild every partition in this process, a few at once (``serve`` on an empty index, ``check --repair``
    with ``in_flight_seconds`` 0: nothing in flight)."""
    report = ReindexReport()
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(prefix: str) -> None:
        async with slots:
            report.add(await reindex_study(service, prefix, in_flight_seconds))

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


async def start(service: Service, in_flight_seconds: float = IN_FLIGHT_SECONDS) -> Run:
    """Send one partition job per study; the run, whose progress :func:`progress` tells."""
    prefixes = await partitions(service)
    run = Run(new_generation(), len(prefixes), datetime.now(timezone.utc).isoformat(timespec="seconds"))
    await service.blobs.staging.put_record(f"{RUNS}{run.id}.json", json.dumps(dataclasses.asdict(run)).encode())
    slots = asyncio.Semaphore(SEND_CONCURRENCY)

    async def send(prefix: str) -> None:
        async with slots:
            await jobs.enqueue(service, PARTITION, run=run.id, prefix=prefix, inFlightSeconds=in_flight_seconds)

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
    report = await reindex_study(service, prefix, float(delivery.fields.get("inFlightSeconds", IN_FLIGHT_SECONDS)))
    await service.blobs.staging.put_record(_marker(run, prefix), json.dumps(dataclasses.asdict(report)).encode())
