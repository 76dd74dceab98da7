"""Rebuilds the Cosmos index from Blob, the system of record.

Instance files are grouped by SOP Instance UID (an instance may have several
generations after a replacement or a move that died half way). Generations marked as
being deleted are deleted to the end, and the deletion recorded unless the change
feed has it (the cleanup path of an interrupted DELETE). Of the rest, the newest
generation is kept and every older one removed; the kept one gets its sidecars back
when they are missing (one streaming pass over the file) and is published like a
store: claim, instance document, summaries and a change-feed entry, unless the index
already names it. Then every touched study's summaries are recounted from its
instance documents, and sidecars whose file is gone are deleted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from dicomweb import cpu, jobs, records
from dicomweb.delete import finish_deletion
from dicomweb.dicom.part10 import Part10Parser
from dicomweb.errors import NotFound
from dicomweb.indexing import publish, recount, remove_generation
from dicomweb.service import Service
from dicomweb.storage.blobs import DELETING, Location


@dataclass
class ReindexReport:
    """What a reindex did."""

    indexed: int = 0
    rebuilt: int = 0
    removed_sidecars: int = 0
    deleted: int = 0
    removed_generations: int = 0


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
    description = await cpu.run(records.describe, parser.header)
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


async def reindex(service: Service) -> ReindexReport:
    """Make the index name the newest generation of every stored instance; drop the rest."""
    report = ReindexReport()
    present: dict[Location, set[str]] = {}
    async for location, kind in service.blobs.sidecars.entries():
        present.setdefault(location, set()).add(kind)
    copies: dict[str, list[tuple[Location, dict[str, str]]]] = {}
    async for location, metadata in service.blobs.instances.list():
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
        sidecar = await _sidecar(service, keep, present.get(keep, set()), report)
        if not await _indexed(service, keep):
            await publish(service, sidecar, replace=True)
        report.indexed += 1
    for study in sorted(studies):
        await recount(service, study)
    async for location in service.blobs.sidecars.list():
        if not await service.blobs.instances.exists(location):
            await service.blobs.sidecars.delete(location.sidecars)
            report.removed_sidecars += 1
    return report
