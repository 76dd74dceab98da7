"""One owner for a stored generation's life: claimed, written, described, published, replaced, deleted.

A *generation* is one stored copy of an instance (:mod:`dicomweb.storage.naming`). Its
*claim* (:mod:`dicomweb.storage.claims`, one per SOP Instance UID) is the one place that
says which generation is the instance and in which state it is; every change of an
instance is first a conditional write of its claim (the moment the change happens), then
a *projection* that any worker can finish from the claim alone:

============  =============================================  ==============================================
claim state   what holds                                     who finishes it, if its writer stops
============  =============================================  ==============================================
(none)        file and sidecars may exist, unnamed: a store   the store's own cleanup, else a ``settle``
              in flight, or one that failed                  job; ``reindex`` once older than
                                                             :data:`IN_FLIGHT_SECONDS`
publishing    file and both sidecars written; the instance   the next store or DELETE of the instance
              document, counts, change-feed entry and the    (before it acts), a ``settle`` job,
              displaced generation's removal may be missing  ``reindex`` once older than IN_FLIGHT_SECONDS
current       all of it done: readers see the generation     nothing to finish
deleting      the deletion's sequence is taken; document,    a repeated DELETE, a ``settle`` job, ``reindex``
              counts, entry, file and claim may remain
============  =============================================  ==============================================

So a failure never hides an instance a client was told is stored: "stored" is said once
the claim is ``current``, and "already stored" (45070) only after a ``publishing`` claim is
rolled forward. Writers serialise on the claim's etag, and a claim only moves to a later
change-feed sequence; an instance document and the summaries that count it change in
one transactional batch, conditionally on the document, so counts stay exact however
often a write is retried. A projection that lost its claim to a later change undoes
itself: after projecting, the move to ``current`` is conditional on the claim still
being ``publishing`` this generation, and when it is not, the document is withdrawn
unless the claim still names it.

No blob is written after its commit: deletion state is the claim's, so a generation in
any tier (Archive included) can be deleted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable

from dicomweb import audit, changefeed, jobs, records
from dicomweb.dicom.availability import NEARLINE, OFFLINE, ONLINE
from dicomweb.errors import DicomWebError, Duplicate, StoredElsewhere
from dicomweb.service import Service
from dicomweb.storage.claims import claim_partition
from dicomweb.storage.cosmos import NO_MATCH_FIELDS, BatchFailed, Conflict, Document, Operation, document_id, patch_path
from dicomweb.storage.naming import Location

log = logging.getLogger(__name__)

PUBLISHING, CURRENT, DELETING = "publishing", "current", "deleting"
CREATE, UPDATE, DELETE = "create", "update", "delete"
#: The job that brings a generation to rest when its writer could not (its stores were unreachable).
SETTLE = "settle-generation"
SETTLE_DELAY_SECONDS = 5
#: How long an unnamed file or a ``publishing`` claim may be a live writer's work in progress: the function
#: timeout (``host.json``, 30 minutes) and a margin. An online reindex leaves them to their writer this long.
IN_FLIGHT_SECONDS = 3600
#: A sequence above any real one: "whatever change made it".
LAST = 2**62


def _now() -> datetime:
    return datetime.now(timezone.utc)


def state(claim: Document) -> str:
    """A claim's state (claims written before states existed are current)."""
    return str(claim.get("state", CURRENT))


def _claim(location: Location, sequence: int, action: str, new_state: str, previous: Location | None) -> Document:
    return {"id": document_id("claim", location.sop), "type": "claim",
            "studyInstanceUID": claim_partition(location.sop), "sop": location.sop, "study": location.study,
            "series": location.series, "generation": location.generation, "sequence": sequence, "action": action,
            "state": new_state, "since": _now().isoformat(timespec="seconds"), "actor": audit.actor(),
            "previous": None if previous is None else {"study": previous.study, "series": previous.series,
                                                       "generation": previous.generation},
            **NO_MATCH_FIELDS}


def _previous(claim: Document) -> Location | None:
    """The generation a ``publishing`` claim displaces."""
    found = claim.get("previous")
    return None if not found else Location(found["study"], found["series"], claim["sop"], found["generation"])


def refusal(claim: Document, study: str, series: str) -> Duplicate:
    """Why a POST of a claimed SOP instance into ``study``/``series`` is refused (both reason 45070)."""
    if (claim["study"], claim["series"]) == (study, series):
        return Duplicate(f"SOP instance {claim['sop']} is already stored")
    return StoredElsewhere(f"SOP instance {claim['sop']} is already stored in study {claim['study']}, "
                           f"series {claim['series']}; PUT moves it")


# Writing a generation.

async def reserve(service: Service, location: Location, replace: bool) -> None:
    """Refuse (45070) a POST of a SOP Instance UID another generation holds, before any byte is staged.

    A claim still ``publishing`` or ``deleting`` is finished first, so that "already stored"
    is only said of an instance readers see.
    """
    if replace:
        return
    claim = await service.claims.get(location.sop)
    if claim is not None and claim["generation"] != location.generation and state(claim) != CURRENT:
        await settle_claim(service, claim)
        claim = await service.claims.get(location.sop)
    if claim is not None and claim["generation"] != location.generation:
        raise refusal(claim, location.study, location.series)


async def describe(service: Service, location: Location, made: records.Sidecars) -> None:
    """Write a generation's metadata and frame offset record (both tried before a failure is raised)."""
    writes = [service.blobs.sidecars.put(location.sidecar("json"), made.metadata)]
    if made.frames is not None:
        writes.append(service.blobs.sidecars.put(location.sidecar("frames"), made.frames))
    await _all(*writes)


async def publish(service: Service, sidecar: records.JsonDict, replace: bool, sequence: int | None = None) -> None:
    """Make the described generation the instance: claim it, then project it.

    Without ``replace`` a SOP Instance UID another generation holds is refused (45070).
    With it, the claim moves to this generation whatever it held (after that one's own
    transition is finished), and the displaced generation is removed. ``sequence``: a
    change-feed number the caller took while it wrote the generation (else one is taken).
    """
    location = records.location(sidecar)
    claims = service.claims
    if sequence is None:
        sequence = await service.changes.next_sequence()
    claim: Document | None = None
    read = False  # a first attempt creates the claim at once: most stores are of new instances
    while True:
        if read and claim is not None:
            if claim["generation"] == location.generation:
                await changefeed.skip(service, sequence)  # claimed already: by an earlier attempt, or reindex
                break
            if state(claim) != CURRENT:
                await settle_claim(service, claim)
                claim = await claims.get(location.sop)
                continue
            if not replace:
                await changefeed.skip(service, sequence)
                raise refusal(claim, location.study, location.series)
            if claim["sequence"] > sequence:  # a claim only ever moves to a later sequence
                await changefeed.skip(service, sequence)
                sequence = await service.changes.next_sequence()
        try:
            if claim is None:
                claim = _claim(location, sequence, CREATE, PUBLISHING, None)
                await claims.create(claim)
            else:
                claim = await claims.replace({**_claim(location, sequence, UPDATE, PUBLISHING, records.named(claim)),
                                              "_etag": claim["_etag"]})
            break
        except Conflict:
            claim, read = await claims.get(location.sop), True
    await roll_forward(service, claim, sidecar)


async def roll_forward(service: Service, claim: Document, sidecar: records.JsonDict | None = None) -> None:
    """Finish publishing the generation a ``publishing`` claim names: its document and counts, its change-feed
    entry, the displaced generation's removal, then the claim's move to ``current``. Idempotent: any number of
    workers may run it at once (``sidecar``: the generation's, when the caller has it)."""
    if state(claim) != PUBLISHING:
        return
    location = records.named(claim)
    if sidecar is None:
        sidecar = json.loads(await service.blobs.sidecars.get(location.sidecar("json")))
    sequence = claim["sequence"]
    previous = _previous(claim)
    await project(service, sidecar, sequence)
    if previous is not None and previous.study != location.study:
        await withdraw(service, previous.study, location.sop, sequence)
    recorded = changefeed.record(service, sequence, claim["action"], location)
    if previous is not None and previous.generation != location.generation:
        await _all(recorded, remove_generation(service, previous))
        await _make_current(service, location)
    else:  # the entry is not what "current" waits for: a reader finds its number on the claim
        await _all(recorded, _make_current(service, location))


async def _all(*steps: Awaitable[Any]) -> None:
    """Run ``steps`` at once; the first failure is raised once every step has ended."""
    for result in await asyncio.gather(*steps, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


async def _make_current(service: Service, location: Location) -> None:
    """Move a ``publishing`` claim of ``location`` to ``current``; undo the projection if the claim moved on."""
    try:
        await service.claims.update(location.sop, [{"op": "set", "path": "/state", "value": CURRENT},
                                                   {"op": "set", "path": "/previous", "value": None}],
                                    f"FROM c WHERE c.generation = '{location.generation}' AND c.state = '{PUBLISHING}'")
    except Conflict:
        await _after_lost_claim(service, location)


async def _after_lost_claim(service: Service, location: Location) -> None:
    """The claim moved on while ``location`` was projected: undo the projection unless the claim still names it
    as published (a concurrent roll-forward got there first)."""
    claim = await service.claims.get(location.sop)
    if claim is not None and claim["generation"] == location.generation and state(claim) != DELETING:
        return
    before = claim["sequence"] if claim is not None and claim["generation"] == location.generation else LAST
    await withdraw(service, location.study, location.sop, before, location.generation)


# Deleting a generation.

async def delete(service: Service, location: Location) -> None:
    """Delete the instance ``location`` names, as its claim holds it when the deletion begins.

    A store of it still publishing is finished first (the DELETE follows it); the deletion
    takes a sequence after the claim's, and the claim turns ``deleting`` before anything is
    removed, so whoever finds it that way can finish it.
    """
    claims = service.claims
    sequence: int | None = None
    while True:
        claim = await claims.get(location.sop)
        if claim is None:
            await settle(service, location)  # nothing claims it: whatever names this generation goes
            return
        if state(claim) == PUBLISHING:
            await roll_forward(service, claim)
            continue
        if state(claim) == DELETING:
            await finish_deletion(service, claim)
            return
        if sequence is None or sequence < claim["sequence"]:
            if sequence is not None:
                await changefeed.skip(service, sequence)
            sequence = await service.changes.next_sequence()
        named = records.named(claim)
        try:
            claim = await claims.replace({**_claim(named, sequence, DELETE, DELETING, None), "_etag": claim["_etag"]})
        except Conflict:
            continue
        break
    await finish_deletion(service, claim)
    if named.generation != location.generation:
        await settle(service, location)


async def finish_deletion(service: Service, claim: Document) -> None:
    """Finish the deletion a ``deleting`` claim records: document and counts, entry, files, then the claim."""
    location = records.named(claim)
    await withdraw(service, location.study, location.sop, claim["sequence"])
    await changefeed.record(service, claim["sequence"], DELETE, location)
    await remove_generation(service, location)
    while (current := await service.claims.get(location.sop)) is not None \
            and current["generation"] == location.generation and state(current) == DELETING:
        try:
            await service.claims.remove(current)
        except Conflict:
            continue
    audit.record("delete", "deleted", study=location.study, series=location.series, instance=location.sop,
                 generation=location.generation)


async def deleting(service: Service, study: str, series: str | None, sop: str | None) -> list[Document]:
    """The claims of deletions that began under ``study`` (``series``, ``sop``) and did not finish."""
    return await service.claims.in_state(DELETING, study, series, sop)


# Bringing a generation to rest.

async def settle_claim(service: Service, claim: Document) -> None:
    """Finish the transition ``claim`` records (nothing to do for a current one)."""
    if state(claim) == PUBLISHING:
        await roll_forward(service, claim)
    elif state(claim) == DELETING:
        await finish_deletion(service, claim)


async def settle(service: Service, location: Location) -> None:
    """Bring one generation to rest after its writer stopped: finish the transition its claim records, or, when no
    claim names it, remove it and any document naming it (it was refused, displaced, or never claimed)."""
    claim = await service.claims.get(location.sop)
    if claim is not None and claim["generation"] == location.generation:
        await settle_claim(service, claim)
        return
    await withdraw(service, location.study, location.sop, LAST, location.generation)
    await remove_generation(service, location)


async def abandon(service: Service, location: Location, late_writes: bool = False) -> None:
    """Settle a generation whose writer failed after it began writing it; a job does it when the stores cannot
    be reached now (with the queue's retries), so no orphan file and no unfinished claim is left behind.

    ``late_writes``: the failure was the stores' (a write timed out), and such a write can still land after
    this settles, as a sidecar with no file; the job then looks again a few seconds later.
    """
    try:
        await settle(service, location)
    except DicomWebError:
        log.warning("settling a generation after a failure failed; a job will retry it")
        await defer(service, location)
        return
    if late_writes:
        await defer(service, location)


async def defer(service: Service, location: Location) -> None:
    """Have a job settle ``location`` shortly (reindex reconciles it if even the queue is unreachable)."""
    try:
        await jobs.enqueue(service, SETTLE, SETTLE_DELAY_SECONDS, study=location.study, series=location.series,
                           sop=location.sop, generation=location.generation)
    except DicomWebError:
        log.exception("a generation could not be settled nor its job queued; reindex will reconcile it")


@jobs.handler(SETTLE)
async def _settle_job(service: Service, delivery: jobs.Delivery) -> None:
    """What :func:`defer` sent (raises to be delivered again)."""
    fields = delivery.fields
    await settle(service, Location(fields["study"], fields["series"], fields["sop"], fields["generation"]))


async def remove_generation(service: Service, location: Location) -> None:
    """Delete one generation's blobs and forget what this process cached of it."""
    await service.blobs.sidecars.delete(location.sidecars)
    await service.blobs.instances.delete(location)
    service.forget(location)


# The projection: instance documents and the summaries that count them.

def summary_key(uid: str) -> str:
    """A series' key in its study summary's counts: short, and safe in a patch path."""
    return hashlib.sha1(uid.encode()).hexdigest()[:16]


#: Summary fields counting the instances that are not online (a study or series is as available as its least
#: available instance).
UNAVAILABLE = {NEARLINE: "nearline", OFFLINE: "offline"}


def _counts(doc: Document, delta: int) -> dict[tuple[str, str], dict[str, int]]:
    """The increments of counting instance document ``doc`` in (``delta`` +1) or out (-1), by summary and path."""
    series = doc["seriesInstanceUID"]
    series_paths = {"/numberOfInstances": delta}
    if (unavailable := UNAVAILABLE.get(doc.get("availability", ONLINE))) is not None:
        series_paths[f"/{unavailable}"] = delta
    study_paths = {**series_paths, patch_path("series", summary_key(series)): delta}
    if doc.get("modality"):
        study_paths[patch_path("modalities", str(doc["modality"]))] = delta
    return {("series", series): series_paths, ("study", doc["studyInstanceUID"]): study_paths}


def _seed(summary: Document, paths: dict[str, int]) -> Document:
    """A summary document created with its first counts (``paths`` as :func:`_counts` gives them)."""
    doc: Document = {**summary, "numberOfInstances": 0, "nearline": 0, "offline": 0}
    if summary["type"] == "study":
        doc.update(series={}, modalities={})
    for path, delta in paths.items():
        keys = [k.replace("~1", "/").replace("~0", "~") for k in path.strip("/").split("/")]
        if len(keys) == 1:
            doc[keys[0]] += delta
        else:
            doc[keys[0]][keys[1]] = doc[keys[0]].get(keys[1], 0) + delta
    return doc


def _summary_ops(removed: Document | None, added: Document | None, summaries: dict[tuple[str, str], Document],
                 seeded: set[tuple[str, str]]) -> list[Operation]:
    """Batch operations on the summaries: counts of ``removed`` out and ``added`` in, the attributes of
    ``summaries`` (the added instance's study and series) taken, a create for those known to be missing."""
    paths: dict[tuple[str, str], dict[str, int]] = {}
    for doc, delta in ((removed, -1), (added, +1)):
        if doc is not None:
            for key, increments in _counts(doc, delta).items():
                merged = paths.setdefault(key, {})
                for path, value in increments.items():
                    merged[path] = merged.get(path, 0) + value
    ops: list[Operation] = []
    for key in sorted(set(paths) | set(summaries)):
        increments = {path: value for path, value in paths.get(key, {}).items() if value}
        summary = summaries.get(key)
        if key in seeded:
            if summary is not None and increments.get("/numberOfInstances", 0) > 0:
                ops.append(("create", (_seed(summary, increments),)))
            continue  # a missing summary has nothing to count out
        patch = [{"op": "incr", "path": path, "value": value} for path, value in increments.items()]
        if summary is not None:
            patch += [{"op": "set", "path": f"/{name}", "value": summary[name]} for name in ("attributes", "m", "w")]
        if patch:
            ops.append(("patch", (document_id(*key), patch)))
    return ops


def _summary_of(op: Operation) -> tuple[str, str]:
    """The (level, uid) summary a batch operation on a summary concerns."""
    doc_id = op[1][0]["id"] if op[0] == "create" else op[1][0]
    level, uid = doc_id.split(":", 1)
    return level, uid


async def _apply(service: Service, study: str, instance_op: Operation, removed: Document | None,
                 added: Document | None, summaries: dict[tuple[str, str], Document]) -> bool:
    """Run one instance document change with its summary counts as one batch; False when the instance document
    was not as expected (read it again). A summary found missing is created in the retry, one found
    present is patched: the batch only ever applies whole."""
    seeded: set[tuple[str, str]] = set()
    for _ in range(10):
        summary_ops = _summary_ops(removed, added, summaries, seeded)
        try:
            results = await service.index.batch(study, [instance_op, *summary_ops])
        except BatchFailed as failed:
            if failed.index == 0:
                return False
            key = _summary_of(summary_ops[failed.index - 1])
            if failed.status == 404:
                seeded.add(key)
            else:
                seeded.discard(key)
            continue
        await _drop_empty(service, study, results[1:])
        return True
    raise Conflict(f"the summaries of study {study} kept changing while an instance was counted")


async def _drop_empty(service: Service, study: str, summaries: list[Document | None]) -> None:
    """Delete summaries left counting nothing, unless someone counted into them since."""
    for doc in summaries:
        if doc is not None and doc.get("numberOfInstances", 1) == 0:
            try:
                await service.index.delete(study, doc["type"], doc["id"].split(":", 1)[1], etag=doc["_etag"])
            except Conflict:
                pass


async def project(service: Service, sidecar: records.JsonDict, sequence: int) -> None:
    """Write the instance document of change ``sequence`` (unless a later change wrote it) and count it, in one
    batch with its summaries; moved between series or modalities, it is counted out of the old ones."""
    study_doc, series_doc, instance_doc = records.documents(sidecar)
    instance_doc["sequence"] = sequence
    study, sop = instance_doc["studyInstanceUID"], instance_doc["sopInstanceUID"]
    summaries = {("study", study): study_doc, ("series", instance_doc["seriesInstanceUID"]): series_doc}
    existing: Document | None = None
    read = False  # a first attempt creates the document at once: most stores are of new instances
    while True:
        if read and existing is not None and existing.get("sequence", 0) >= sequence:
            return
        if existing is None:
            operation: Operation = ("create", (instance_doc,))
            done = await _apply(service, study, operation, None, instance_doc, summaries)
        else:
            operation = ("replace", (existing["id"], instance_doc), {"if_match_etag": existing["_etag"]})
            done = await _apply(service, study, operation, existing, instance_doc, summaries)
        if done:
            return
        existing, read = await service.index.find(study, "instance", sop), True


async def withdraw(service: Service, study: str, sop: str, before: int, generation: str | None = None) -> None:
    """Remove the instance document of ``sop`` from ``study`` with its counts if its change precedes ``before``
    (and, given ``generation``, if it names that generation)."""
    while True:
        existing = await service.index.find(study, "instance", sop)
        if existing is None or existing.get("sequence", 0) >= before or (
                generation is not None and existing["generation"] != generation):
            return
        operation: Operation = ("delete", (existing["id"],), {"if_match_etag": existing["_etag"]})
        if await _apply(service, study, operation, existing, None, {}):
            return


async def set_availability(service: Service, location: Location, availability: str, observed: datetime) -> bool:
    """Record that ``location``'s file was found ``availability`` (ONLINE, NEARLINE, OFFLINE) at ``observed``,
    with its summaries' counts, if the index names that generation and nothing observed it later; True when the
    document changed.

    Tier changes are learned from events and listings that may arrive late, twice or out
    of order, by any number of workers: each carries the moment the blob was read, and an
    older reading never overwrites a newer one.
    """
    stamp = observed.isoformat()
    while True:
        existing = await service.index.find(location.study, "instance", location.sop)
        if existing is None or existing["generation"] != location.generation or \
                existing.get("availabilityObserved", "") >= stamp:
            return False
        updated = {k: v for k, v in existing.items() if not k.startswith("_")}
        updated.update(availability=availability, availabilityObserved=stamp)
        operation: Operation = ("replace", (existing["id"], updated), {"if_match_etag": existing["_etag"]})
        if existing.get("availability", ONLINE) == availability:
            try:
                await service.index.batch(location.study, [operation])
            except BatchFailed:
                continue
            return False
        if await _apply(service, location.study, operation, existing, updated, {}):
            return True


# What the summaries should say, and making them say it.

@dataclass
class Expected:
    """What one summary should count."""

    numberOfInstances: int = 0  # noqa: N815 - the document's field
    nearline: int = 0
    offline: int = 0
    series: dict[str, int] = field(default_factory=dict)
    modalities: dict[str, int] = field(default_factory=dict)


def expected_summaries(instances: list[Document]) -> dict[tuple[str, str, str], Expected]:
    """(study, level, uid) → what that summary should count, from the instance documents (check and recount)."""
    expected: dict[tuple[str, str, str], Expected] = {}
    for doc in instances:
        for (level, uid), increments in _counts(doc, +1).items():
            counts = expected.setdefault((doc["studyInstanceUID"], level, uid), Expected())
            for path in increments:
                keys = path.strip("/").split("/")
                if len(keys) == 1:
                    setattr(counts, keys[0], getattr(counts, keys[0]) + 1)
                else:
                    bucket = getattr(counts, keys[0])
                    name = keys[1].replace("~1", "/").replace("~0", "~")
                    bucket[name] = bucket.get(name, 0) + 1
    return expected


def differences(summary: Document, want: Expected) -> dict[str, tuple[Any, Any]]:
    """Fields of ``summary`` that differ from ``want`` (name → (has, should)); zero counts are no entry."""
    wrong: dict[str, tuple[Any, Any]] = {}
    for name in ("numberOfInstances", *UNAVAILABLE.values()):
        if summary.get(name, 0) != getattr(want, name):
            wrong[name] = (summary.get(name, 0), getattr(want, name))
    if summary["type"] == "study":
        for name in ("series", "modalities"):
            has = {k: v for k, v in (summary.get(name) or {}).items() if v}
            if has != getattr(want, name):
                wrong[name] = (has, getattr(want, name))
    return wrong


async def recount(service: Service, study: str) -> None:
    """Set a study's summaries to what its instance documents say (repair).

    Each summary is read before the instance documents and written back only if unchanged
    since: a store or delete counted meanwhile changed it, and the recount starts over.
    """
    index = service.index
    for _ in range(20):
        summaries = await index.summaries(study)
        expected = expected_summaries(await index.instances(study))
        try:
            for summary in summaries:
                uid = summary["id"].split(":", 1)[1]
                want = expected.get((study, summary["type"], uid), Expected())
                if not differences(summary, want):
                    continue
                fixed: Document = {**summary, "numberOfInstances": want.numberOfInstances, "nearline": want.nearline,
                                   "offline": want.offline}
                fixed.pop("members", None)
                fixed.pop("numberOfSeries", None)
                if summary["type"] == "study":
                    fixed.update(series=want.series, modalities=want.modalities)
                await index.replace(fixed)
            return
        except Conflict:
            continue
    raise Conflict(f"the summaries of study {study} kept changing while they were recounted")


# Blob against claims: one classification for reindex and check.

@dataclass(frozen=True)
class StoredFile:
    """A committed instance file: its generation and when it was committed."""

    location: Location
    created: datetime


@dataclass
class Plan:
    """What one SOP instance's generations need (:func:`classify`)."""

    claim: Document | None
    #: The generation a current claim names, its file present.
    kept: Location | None = None
    #: No claim: the newest settled generation, to publish.
    publish: Location | None = None
    #: The claim records a transition its writer did not finish (publishing beyond IN_FLIGHT_SECONDS, deleting).
    unfinished: bool = False
    #: The claim names a generation whose file is gone (decided only when every study's files were seen).
    dangling: bool = False
    #: Unnamed generations no writer will claim: failed stores, displaced generations.
    remove: list[Location] = field(default_factory=list)
    #: Unnamed generations young enough to be a writer's work in progress, and a young publishing claim's.
    in_flight: list[Location] = field(default_factory=list)


def classify(files: list[StoredFile], claim: Document | None, now: datetime, in_flight_seconds: float,
             every_study: bool) -> Plan:
    """What the generations of one SOP instance need, from its files (in one study, or ``every_study``) and claim.

    Only what no writer can still be working on is acted on: a claim ``publishing`` for less
    than ``in_flight_seconds`` is its writer's, and so is an unnamed file committed less than
    that long ago (it may be about to be claimed; a POST would then be refused, a PUT win).
    """
    plan = Plan(claim)
    named = records.named(claim) if claim is not None else None
    if claim is not None and state(claim) == PUBLISHING:
        since = datetime.fromisoformat(claim.get("since", "1970-01-01T00:00:00+00:00"))
        if (now - since).total_seconds() < in_flight_seconds:
            plan.in_flight = [f.location for f in files]
            return plan
    if claim is not None and state(claim) != CURRENT:
        plan.unfinished = True
    present = {f.location for f in files}
    if claim is not None and state(claim) == CURRENT:
        if named in present:
            plan.kept = named
        elif every_study:
            plan.dangling = True
    settled = []
    for found in sorted(files, key=lambda f: f.location.generation):
        if found.location == named:
            continue
        if (now - found.created).total_seconds() < in_flight_seconds:
            plan.in_flight.append(found.location)
        else:
            settled.append(found.location)
    if claim is None and settled:
        plan.publish = settled.pop()
    plan.remove = settled
    return plan
