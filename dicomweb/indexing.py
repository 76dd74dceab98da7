"""Index writes: make a stored generation current, or withdraw an instance, and keep the summaries exact.

Every change takes a change-feed sequence number first, then switches the instance's
*claim* (one document per SOP Instance UID: where it lives, its generation, its last
change), then projects the claim into the study partition (the instance document and
the study and series summaries), removes the generation it displaced, and records the
change. The sequence orders concurrent replacements of one instance: a claim is only
ever switched to a later sequence, so the last change in the feed is the one the index
holds ("last writer wins").

Summaries (NumberOfSeriesRelatedInstances, NumberOfStudyRelated{Series,Instances},
ModalitiesInStudy) are atomic increments (Cosmos patch ``incr``), applied by the one
writer whose create or delete of the instance document succeeded, so each instance
counts exactly once; increments never conflict, so no store waits for or retries
against another. A series counts towards its study while its instance count is
above zero; exactly one increment sees it become 1 and one sees it become 0.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from dicomweb import audit, changefeed, jobs, records
from dicomweb.errors import DicomWebError, Duplicate, StoredElsewhere
from dicomweb.service import Service
from dicomweb.storage.naming import Location
from dicomweb.storage.index import NO_MATCH_FIELDS, Conflict, Document, claim_partition, document_id, patch_path

log = logging.getLogger(__name__)

CREATE, UPDATE, DELETE = "create", "update", "delete"
#: The job that removes a generation a failed store wrote, when the stores could not be reached to do it at once.
ABANDON = "abandon-generation"
ABANDON_DELAY_SECONDS = 5


def _claim(location: Location, sequence: int, action: str) -> Document:
    return {"id": document_id("claim", location.sop), "type": "claim",
            "studyInstanceUID": claim_partition(location.sop), "sop": location.sop, "study": location.study,
            "series": location.series, "generation": location.generation, "sequence": sequence, "action": action,
            "actor": audit.actor(), **NO_MATCH_FIELDS}


def refusal(claim: Document, study: str, series: str) -> Duplicate:
    """Why a POST of a claimed SOP instance into ``study``/``series`` is refused (both reason 45070)."""
    if (claim["study"], claim["series"]) == (study, series):
        return Duplicate(f"SOP instance {claim['sop']} is already stored")
    return StoredElsewhere(f"SOP instance {claim['sop']} is already stored in study {claim['study']}, "
                           f"series {claim['series']}; PUT moves it")


async def publish(service: Service, sidecar: records.JsonDict, replace: bool, newest_wins: bool = False) -> bool:
    """Make the generation ``sidecar`` describes the current one of its instance.

    False when a concurrent replacement with a later sequence won (this generation is
    then removed). Without ``replace`` a claimed SOP Instance UID is refused (45070).
    With ``newest_wins`` (reindex, whose partitions may meet two generations of one
    instance in two studies), the newer generation wins, whatever the order of the calls.
    """
    location = records.location(sidecar)
    index = service.index
    sequence = await index.next_sequence()
    displaced: Location | None = None
    while True:
        current = await index.claim(location.sop)
        try:
            if newest_wins and current is not None and current["generation"] > location.generation:
                await changefeed.skip(service, sequence)
                await remove_generation(service, location)
                return False
            if newest_wins and current is not None and current["sequence"] > sequence \
                    and current["generation"] != location.generation:
                await changefeed.skip(service, sequence)
                sequence = await index.next_sequence()  # a claim only ever moves to a later sequence
                continue
            if current is None:
                action = CREATE
                await index.create(_claim(location, sequence, CREATE))
            elif current["generation"] == location.generation:
                # An earlier attempt of this very upload got this far before its worker stopped: finish it.
                await changefeed.skip(service, sequence)
                sequence, action = current["sequence"], current["action"]
            elif not replace:
                await changefeed.skip(service, sequence)
                raise refusal(current, location.study, location.series)
            elif current["sequence"] > sequence:
                await changefeed.record(service, sequence, UPDATE, location)
                await remove_generation(service, location)
                return False
            else:
                action = UPDATE
                await index.replace({**_claim(location, sequence, UPDATE), "_etag": current["_etag"]})
                displaced = records.named(current)
            break
        except Conflict:
            continue
    await _project(service, sidecar, sequence, displaced)
    if displaced is not None and displaced != location:
        await remove_generation(service, displaced)
    await changefeed.record(service, sequence, action, location)
    return True


async def _project(service: Service, sidecar: records.JsonDict, sequence: int, displaced: Location | None) -> None:
    """Write the instance document of the claimed generation (unless a later change did) and count it."""
    study_doc, series_doc, instance_doc = records.documents(sidecar)
    instance_doc["sequence"] = sequence
    index = service.index
    study, sop = instance_doc["studyInstanceUID"], instance_doc["sopInstanceUID"]
    while True:
        existing = await index.find(study, "instance", sop)
        if existing is not None and existing.get("sequence", 0) > sequence:
            return
        try:
            if existing is None:
                await index.create(instance_doc)
            else:
                await index.replace({**instance_doc, "_etag": existing["_etag"]})
            break
        except Conflict:
            continue
    if existing is None or existing.get("sequence") == sequence:
        # A first projection, or a resumed attempt of this very change (an upload committed again after a
        # storage failure) whose counting may not have finished: counting is idempotent, so count again.
        await _count(service, instance_doc, +1, series_doc, study_doc)
    elif (existing["seriesInstanceUID"], existing.get("modality")) != (instance_doc["seriesInstanceUID"],
                                                                       instance_doc.get("modality")):
        await _count(service, existing, -1)
        await _count(service, instance_doc, +1, series_doc, study_doc)
    else:
        await _refresh(service, series_doc, study_doc)
    if displaced is None:
        return
    if displaced.study != study:
        await withdraw(service, displaced.study, sop, sequence)
    claim = await index.claim(sop)
    if claim is not None and claim["sequence"] != sequence and claim["study"] != study:
        # A later replacement moved the instance to another study while this one projected: undo it here.
        await withdraw(service, study, sop, claim["sequence"])


async def withdraw(service: Service, study: str, sop: str, before: int) -> Document | None:
    """Remove the instance document of ``sop`` from ``study`` if its change precedes ``before``; it, once removed."""
    index = service.index
    while True:
        existing = await index.find(study, "instance", sop)
        if existing is None or existing.get("sequence", 0) >= before:
            return None
        try:
            if not await index.delete(study, "instance", sop, etag=existing["_etag"]):
                return None
        except Conflict:
            continue
        await _count(service, existing, -1)
        return existing


async def remove_generation(service: Service, location: Location) -> None:
    """Delete one generation's blobs and forget what this process cached of it."""
    await service.blobs.sidecars.delete(location.sidecars)
    await service.blobs.instances.delete(location)
    service.forget(location)


async def abandon(service: Service, location: Location) -> None:
    """Remove the generation a failed store wrote, unless the index names it (its publication got through
    after all); never anything stored before it.

    The failure that ends a store is often the stores being unreachable, and then so is this cleanup: a
    job does it once they are back (with the queue's retries), so no orphan file is left behind.
    """
    try:
        await _abandon(service, location)
    except DicomWebError:
        log.warning("cleanup after a failed store failed; a job will retry it")
        try:
            await jobs.enqueue(service, ABANDON, ABANDON_DELAY_SECONDS, study=location.study,
                               series=location.series, sop=location.sop, generation=location.generation)
        except DicomWebError:
            log.exception("cleanup after a failed store could not be queued either; reindex will reconcile")


async def _abandon(service: Service, location: Location) -> None:
    claim = await service.index.claim(location.sop)
    if claim is None or claim["generation"] != location.generation:
        await remove_generation(service, location)


@jobs.handler(ABANDON)
async def _abandon_job(service: Service, delivery: jobs.Delivery) -> None:
    """The cleanup :func:`abandon` could not do at once (raises to be delivered again)."""
    fields = delivery.fields
    await _abandon(service, Location(fields["study"], fields["series"], fields["sop"], fields["generation"]))


def _attribute_ops(doc: Document) -> list[dict[str, Any]]:
    return [{"op": "set", "path": f"/{key}", "value": doc[key]} for key in ("attributes", "m", "w")]


def member_key(sop: str) -> str:
    """An instance's key in the member set of its summaries: short, and safe in a patch path and a filter."""
    return hashlib.sha1(sop.encode()).hexdigest()[:16]


async def _count(service: Service, instance: Document, delta: int, series_doc: Document | None = None,
                 study_doc: Document | None = None) -> None:
    """Add (``delta`` +1) or remove (-1) one instance from its series and study summaries.

    Each summary keeps the set of its members, and a count changes in the same atomic
    patch that adds or removes the member, conditionally on it being absent or present.
    So a patch applied twice (the SDK retries a write whose answer timed out, although it
    reached the server) changes nothing the second time.
    """
    study, series, modality = instance["studyInstanceUID"], instance["seriesInstanceUID"], instance.get("modality")
    member = member_key(instance["sopInstanceUID"]), delta > 0
    series_ops = [{"op": "incr", "path": "/numberOfInstances", "value": delta}]
    series_ops += _attribute_ops(series_doc) if series_doc else []
    after = await _bump(service, study, "series", series, series_ops,
                        {**series_doc, "numberOfInstances": 0, "members": {}} if series_doc else None, member)
    study_ops = [{"op": "incr", "path": "/numberOfInstances", "value": delta}]
    if after is not None and after["numberOfInstances"] == (1 if delta > 0 else 0):
        study_ops.append({"op": "incr", "path": "/numberOfSeries", "value": delta})
    if modality:
        study_ops.append({"op": "incr", "path": patch_path("modalities", str(modality)), "value": delta})
    await _bump(service, study, "study", study, study_ops + (_attribute_ops(study_doc) if study_doc else []),
                {**study_doc, "numberOfInstances": 0, "numberOfSeries": 0, "modalities": {}, "members": {}}
                if study_doc else None, member)


async def _refresh(service: Service, series_doc: Document, study_doc: Document) -> None:
    """Take the attributes of a replaced instance into its series and study summaries."""
    for doc in (series_doc, study_doc):
        uid = doc["id"].split(":", 1)[1]
        await _bump(service, doc["studyInstanceUID"], doc["type"], uid, _attribute_ops(doc), None)


async def _bump(service: Service, study: str, level: str, uid: str, ops: list[dict[str, Any]],
                seed: Document | None, member: tuple[str, bool] | None = None) -> Document | None:
    """Patch a summary, creating it from ``seed`` when missing; it afterwards (None: missing, no seed).

    With ``member`` (key, joining), the patch also adds or removes that member and applies
    only if it is not yet (or still) one; a summary that already reflects it is left as is.
    A summary left empty is deleted, conditionally on nobody having patched it since.
    """
    index = service.index
    condition = None
    if member is not None:
        key, joining = member
        ops = ops + [{"op": "set", "path": f"/members/{key}", "value": 1} if joining else
                     {"op": "remove", "path": f"/members/{key}"}]
        condition = f'FROM c WHERE {"NOT " if joining else ""}IS_DEFINED(c.members["{key}"])'
    for _ in range(10):
        try:
            after = await index.patch(study, document_id(level, uid), ops, condition)
        except Conflict:
            current = await index.find(study, level, uid) if member is not None else None
            if current is not None:
                if (member[0] in current.get("members", {})) == member[1]:  # type: ignore[index]
                    return current  # applied already: by an earlier try of this very patch
                continue
            if seed is None:
                return None
            try:
                await index.create(seed)
            except Conflict:
                pass
            continue
        if after.get("numberOfInstances", 1) == 0 and not after.get("numberOfSeries"):
            try:
                await index.delete(study, level, uid, etag=after["_etag"])
            except Conflict:
                pass
        return after
    log.warning("the %s summary of %s vanished repeatedly while being counted; reindex recounts it", level, uid)
    return None


async def recount(service: Service, study: str) -> None:
    """Set a study's summaries to what its instance documents say (reindex: repairs counts a crash left off)."""
    index = service.index
    instances = await index.instances(study)
    per_series: dict[str, dict[str, int]] = {}
    modalities: dict[str, int] = {}
    for doc in instances:
        per_series.setdefault(doc["seriesInstanceUID"], {})[member_key(doc["sopInstanceUID"])] = 1
        if doc.get("modality"):
            modalities[doc["modality"]] = modalities.get(doc["modality"], 0) + 1
    for summary in await index.summaries(study):
        if summary["type"] == "series":
            members = per_series.get(summary["seriesInstanceUID"], {})
            counts: dict[str, Any] = {"numberOfInstances": len(members), "members": members}
        else:
            counts = {"numberOfInstances": len(instances), "numberOfSeries": len(per_series),
                      "modalities": modalities, "members": {member_key(d["sopInstanceUID"]): 1 for d in instances}}
        uid = summary["id"].split(":", 1)[1]
        await _bump(service, study, summary["type"], uid,
                    [{"op": "set", "path": f"/{key}", "value": value} for key, value in counts.items()], None)
