"""Rebuilds the Cosmos index from Blob, the system of record.

For every committed instance blob: take its metadata sidecar, or derive the sidecars
again from the file itself (one streaming pass) when they are missing or belong to
another generation; then upsert its index documents. Instances marked as being
deleted are deleted to the end (the cleanup path of an interrupted DELETE). Sidecars
whose instance blob is gone are deleted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from dicomweb import changefeed, records
from dicomweb.delete import delete_instance
from dicomweb.dicom.part10 import Part10Parser
from dicomweb.errors import NotFound
from dicomweb.indexing import refresh
from dicomweb.service import Service
from dicomweb.storage.blobs import DELETING, GENERATION, sidecar_name


@dataclass
class ReindexReport:
    """What a reindex did."""

    indexed: int = 0
    rebuilt: int = 0
    removed_sidecars: int = 0
    deleted: int = 0


async def derive_sidecars(service: Service, name: str, generation: str) -> records.JsonDict:
    """Parse a stored instance blob again and rewrite both sidecars."""
    parser = Part10Parser(service.settings.max_header_bytes)
    async for chunk in service.blobs.stream(name):
        parser.feed(chunk)
    parser.close()
    header = parser.header
    assert header is not None
    frame_index = parser.frame_index(generation)
    sidecar = records.make_sidecar(header, generation, parser.stored_size,
                                   len(frame_index) if frame_index is not None else None)
    study, series, instance = records.uids(sidecar)
    await service.blobs.put_sidecar(sidecar_name(study, series, instance, "json"), json.dumps(sidecar).encode())
    if frame_index is not None:
        await service.blobs.put_sidecar(sidecar_name(study, series, instance, "frames"), frame_index.to_bytes())
    return sidecar


async def reindex(service: Service) -> ReindexReport:
    """Upsert index documents for every stored instance; drop orphan sidecars."""
    report = ReindexReport()
    summaries: dict[tuple[str, str], tuple[records.JsonDict | None, records.JsonDict | None]] = {}
    async for name, metadata in service.blobs.list_instances():
        stem = name.removesuffix(".dcm")
        study, series, sop = stem.split("/")
        if metadata.get(DELETING):
            await delete_instance(service, study, series, sop, record=False)
            summaries.setdefault((study, series), (None, None))
            report.deleted += 1
            continue
        generation = metadata.get(GENERATION, "")
        try:
            sidecar = json.loads(await service.blobs.get_sidecar(stem + ".json"))
        except NotFound:
            sidecar = None
        if sidecar is None or sidecar.get("generation") != generation:
            sidecar = await derive_sidecars(service, name, generation)
            report.rebuilt += 1
        study_doc, series_doc, instance_doc = records.documents(sidecar)
        known = await service.index.find(study, "instance", sop) is not None
        await service.index.upsert(instance_doc)
        if not known:
            await changefeed.record(service, "create", study, series, sop)
        summaries[study, series] = series_doc, study_doc
        report.indexed += 1
    for (study, series), (series_doc, study_doc) in summaries.items():
        await refresh(service, study, series, series_doc, study_doc)
    async for sidecar in service.blobs.list_metadata_sidecars():
        stem = sidecar.removesuffix(".json")
        if not await service.blobs.exists(stem + ".dcm"):
            await service.blobs.delete(None, [sidecar, stem + ".frames"])
            report.removed_sidecars += 1
    return report
