"""Index writes: instance documents, and the study and series summaries derived from them.

A series document carries NumberOfSeriesRelatedInstances; a study document carries
ModalitiesInStudy and the study's series and instance counts. They are recomputed
from the index after every change (so repeating a refresh is harmless) and written
with optimistic concurrency: a writer that loses a race reads again and recomputes,
so concurrent STOWs into one study converge on the right numbers.
"""

from __future__ import annotations

import copy
from typing import Awaitable, Callable

from dicomweb import changefeed, records
from dicomweb.errors import DicomWebError, StorageFailure
from dicomweb.service import Service
from dicomweb.storage.index import Conflict, Document

#: Rounds of read, recompute and conditional write before a refresh gives up.
MAX_ATTEMPTS = 8

Summarise = Callable[[Document], Awaitable[Document | None]]


async def index_instance(service: Service, sidecar: records.JsonDict, replace: bool = False) -> None:
    """Index a stored instance, refresh its summaries and record the change.

    ``replace``: the instance may already be indexed (PUT); the change is an update then.
    """
    study_doc, series_doc, instance_doc = records.documents(sidecar)
    study, series, sop = records.uids(sidecar)
    existed = replace and await service.index.find(study, "instance", sop) is not None
    if replace:
        await service.index.upsert(instance_doc)
    else:
        await service.index.create(instance_doc)
    try:
        await refresh(service, study, series, series_doc, study_doc)
        await changefeed.record(service, "update" if existed else "create", study, series, sop)
    except DicomWebError:
        if not replace:
            await service.index.delete(study, "instance", sop)
            await refresh(service, study, series)
        raise


async def refresh(service: Service, study: str, series: str, series_doc: Document | None = None,
                  study_doc: Document | None = None) -> None:
    """Recompute the series and study summaries; remove them when nothing is left under them.

    ``series_doc`` / ``study_doc`` bring attributes from a newly stored instance;
    without them the stored attributes stay.
    """

    async def series_summary(doc: Document) -> Document | None:
        count = await service.index.count_instances(study, series)
        return {**doc, "numberOfInstances": count} if count else None

    async def study_summary(doc: Document) -> Document | None:
        children = await service.index.series_of(study)
        if not children:
            return None
        modalities = sorted({m for child in children for m in child.get("m", {}).get("Modality", [])})
        return {**doc, "m": {**doc.get("m", {}), "ModalitiesInStudy": modalities},
                "numberOfSeries": len(children),
                "numberOfInstances": sum(child.get("numberOfInstances", 0) for child in children)}

    await _update(service, study, "series", series, series_doc, series_summary)
    await _update(service, study, "study", study, study_doc, study_summary)


async def _update(service: Service, study: str, level: str, uid: str, fresh: Document | None,
                  summarise: Summarise) -> None:
    for _ in range(MAX_ATTEMPTS):
        current = await service.index.find(study, level, uid)
        base = copy.deepcopy(fresh if fresh is not None else current)
        if base is None:
            return
        doc = await summarise(base)
        try:
            if doc is None:
                if current is not None:
                    await service.index.delete(study, level, uid)
                return
            if current is None:
                await service.index.insert(doc)
            else:
                await service.index.replace({**doc, "_etag": current["_etag"]})
            return
        except Conflict:
            continue
    raise StorageFailure(f"the {level} summary of {uid} kept changing; try again")
