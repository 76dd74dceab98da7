"""DELETE of studies, series and instances, as the Azure DICOM service offers it.

Each instance is deleted by :func:`dicomweb.generations.delete`: its claim turns
``deleting`` first, then the document, counts, change-feed entry, files and claim go. If
that fails half way, a job finishes it, and so do a repeated DELETE (which finds the
``deleting`` claims where the index no longer lists the instances) and ``reindex``.
"""

from __future__ import annotations

import asyncio

from dicomweb import generations, retrieve
from dicomweb.errors import DicomWebError, NotFound
from dicomweb.service import Service
from dicomweb.storage.cosmos import Document

#: Instances deleted at once.
DELETE_CONCURRENCY = 16


async def delete(service: Service, study: str, series: str | None = None, instance: str | None = None) -> int:
    """Delete the addressed instances (404 when there are none); the number deleted.

    A DELETE repeated after one that failed half way (503) may find nothing in the index but
    the claims of those deletions: it finishes them instead of answering 404.
    """
    try:
        docs = await retrieve.instance_documents(service, study, series, instance)
    except NotFound:
        unfinished = await generations.deleting(service, study, series, instance)
        if not unfinished:
            raise
        for claim in unfinished:
            await generations.finish_deletion(service, claim)
        return len(unfinished)
    slots = asyncio.Semaphore(DELETE_CONCURRENCY)

    async def one(doc: Document) -> None:
        async with slots:
            found = retrieve.location(doc)
            try:
                await generations.delete(service, found)
            except DicomWebError:
                await generations.defer(service, found)
                raise

    await asyncio.gather(*(one(doc) for doc in docs))
    return len(docs)

