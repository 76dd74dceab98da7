"""DELETE of studies, series and instances, as the Azure DICOM service offers it.

Order per instance: mark the instance blob as being deleted (in Blob, the system of
record), remove its index document, record the change, then delete its sidecars and
the blob. If the process dies half way, ``reindex`` finds the mark and finishes the
deletion instead of indexing the instance again.
"""

from __future__ import annotations

import asyncio

from dicomweb import changefeed
from dicomweb.indexing import refresh
from dicomweb.retrieve import instance_documents
from dicomweb.service import Service
from dicomweb.storage.blobs import instance_name, sidecar_name

#: Instances deleted at once.
DELETE_CONCURRENCY = 16


async def delete(service: Service, study: str, series: str | None = None, instance: str | None = None) -> int:
    """Delete the addressed instances (404 when there are none); the number deleted."""
    docs = await instance_documents(service, study, series, instance)
    slots = asyncio.Semaphore(DELETE_CONCURRENCY)

    async def one(doc: dict) -> None:
        async with slots:
            await delete_instance(service, study, doc["seriesInstanceUID"], doc["sopInstanceUID"])

    await asyncio.gather(*(one(doc) for doc in docs))
    for series_uid in sorted({doc["seriesInstanceUID"] for doc in docs}):
        await refresh(service, study, series_uid)
    return len(docs)


async def delete_instance(service: Service, study: str, series: str, sop: str, record: bool = True) -> None:
    """Delete one instance in the crash-safe order; its summaries are refreshed by the caller."""
    name = instance_name(study, series, sop)
    await service.blobs.mark_deleting(name)
    await service.index.delete(study, "instance", sop)
    if record:
        await changefeed.record(service, "delete", study, series, sop)
    await finish(service, study, series, sop)


async def finish(service: Service, study: str, series: str, sop: str) -> None:
    """Remove an instance's blobs and forget what this process cached of it."""
    name = instance_name(study, series, sop)
    await service.blobs.delete(name, [sidecar_name(study, series, sop, "json"),
                                      sidecar_name(study, series, sop, "frames")])
    service.frame_indexes.drop(name)
    service.frames.drop_instance(name)
