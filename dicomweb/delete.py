"""DELETE of studies, series and instances, as the Azure DICOM service offers it.

Order per instance: take a change-feed sequence, mark the instance's file as being
deleted (in Blob, the system of record, with that sequence), drop its claim and its
index document (its summaries count down), record the change, then delete the
generation's blobs. If the deletion fails half way, a job on the queue finishes it
(and so do a repeated DELETE and ``reindex``, which find the mark), recording it
unless the feed already has it.
"""

from __future__ import annotations

import asyncio

from dicomweb import audit, changefeed, jobs, records, retrieve
from dicomweb.errors import DicomWebError, NotFound
from dicomweb.indexing import DELETE, remove_generation, withdraw
from dicomweb.service import Service
from dicomweb.storage.naming import DELETING, Location
from dicomweb.storage.index import Conflict, Document

#: Instances deleted at once.
DELETE_CONCURRENCY = 16
FINISH = "finish-delete"
#: A deletion that failed half way is finished by a job this much later (the store may need a moment).
FINISH_DELAY_SECONDS = 5


async def delete(service: Service, study: str, series: str | None = None, instance: str | None = None) -> int:
    """Delete the addressed instances (404 when there are none); the number deleted.

    A DELETE repeated after one that failed half way (503) finds nothing in the index, but
    its files marked as being deleted: it finishes those instead of answering 404.
    """
    try:
        docs = await retrieve.instance_documents(service, study, series, instance)
    except NotFound:
        if not (finished := await _finish_marked(service, "/".join(u for u in (study, series, instance) if u) + "/")):
            raise
        return finished
    slots = asyncio.Semaphore(DELETE_CONCURRENCY)

    async def one(doc: Document) -> None:
        async with slots:
            found = retrieve.location(doc)
            try:
                await delete_instance(service, found)
            except DicomWebError:
                await _finish_later(service, found)
                raise

    await asyncio.gather(*(one(doc) for doc in docs))
    return len(docs)


async def _finish_marked(service: Service, prefix: str) -> int:
    """Finish the deletions that died half way under ``prefix``; how many there were."""
    marked = [(location, metadata[DELETING]) async for location, metadata in service.blobs.instances.list(prefix)
              if metadata.get(DELETING)]
    for location, mark in marked:
        await finish_deletion(service, location, mark)
    return len(marked)


async def _finish_later(service: Service, location: Location) -> None:
    """Have a job finish a deletion that failed here (if the file got its mark; else nothing began)."""
    try:
        await jobs.enqueue(service, FINISH, FINISH_DELAY_SECONDS, study=location.study, series=location.series,
                           sop=location.sop, generation=location.generation)
    except DicomWebError:
        pass  # the mark stays: a repeated DELETE or reindex finishes it


@jobs.handler(FINISH)
async def _finish_job(service: Service, delivery: jobs.Delivery) -> None:
    """Finish the deletion of one generation if its file carries the mark (raises to be delivered again)."""
    fields = delivery.fields
    location = Location(fields["study"], fields["series"], fields["sop"], fields["generation"])
    mark = await service.blobs.instances.deletion_mark(location)
    if mark:
        await finish_deletion(service, location, mark)


async def finish_deletion(service: Service, location: Location, mark: str) -> None:
    """Finish the deletion of a file marked (with ``mark``, the value of its DELETING tag) as being deleted."""
    await delete_instance(service, location, marked=int(mark) if mark.isdigit() else None)


async def delete_instance(service: Service, location: Location, marked: int | None = None) -> None:
    """Delete one generation in the crash-safe order; ``marked``: the sequence a deletion that died left on it."""
    index = service.index
    recorded = await index.change(marked) if marked is not None else None
    if recorded is not None and (recorded["action"], recorded["generation"]) == (DELETE, location.generation):
        sequence = recorded["sequence"]
    else:
        sequence = await index.next_sequence()
        if marked is None:
            await service.blobs.instances.mark_deleting(location, sequence)
    doomed = {location}
    while True:
        claim = await index.claim(location.sop)
        if claim is None or claim["sequence"] > sequence:
            break  # gone already, or stored again by a later change, which stays
        try:
            await index.delete(claim["studyInstanceUID"], "claim", location.sop, etag=claim["_etag"])
        except Conflict:
            continue
        doomed.add(records.named(claim))
        break
    for study in sorted({doomed_location.study for doomed_location in doomed}):
        await withdraw(service, study, location.sop, sequence)
    await changefeed.record(service, sequence, DELETE, location)
    for doomed_location in sorted(doomed, key=lambda d: d.generation):
        await remove_generation(service, doomed_location)
    audit.record("delete", "deleted", study=location.study, series=location.series, instance=location.sop,
                 generation=location.generation)
