"""Compares Blob, the system of record, with the index, and repairs what differs (``dicomweb check``).

Files are classified against claims by :func:`dicomweb.generations.classify`, the rules
``reindex`` acts by. What it reports, per kind:

- ``unfinished``: a claim whose store or deletion began and did not finish;
- ``unindexed``: a stored generation no claim names (a store that failed before it was
  published, a generation a replacement displaced, or an instance whose claim is lost), or
  a current one whose instance document is missing or names another generation;
- ``missing-sidecar``: a current generation without its metadata or frame offset record;
- ``dangling``: a claim or an instance document naming a generation whose file is gone;
- ``orphan-sidecar``: sidecars whose file is gone;
- ``stale-summary``: a study or series summary whose counts differ from its instance documents.

``--repair`` runs :func:`dicomweb.reindex.reindex` with nothing left to writers (finishing
what was unfinished, publishing or removing unnamed generations, deriving sidecars,
recounting, removing orphan sidecars), finishes unfinished claims no file is left of,
deletes what dangling claims name the way DELETE does (so the change feed says so),
withdraws dangling documents, recounts their studies, and checks again. Run it while no writes are in flight: a store between its commit and
its publication looks ``unindexed`` for that moment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from dicomweb import generations, records, retrieve
from dicomweb.generations import Expected, StoredFile
from dicomweb.reindex import reindex
from dicomweb.service import Service
from dicomweb.storage.cosmos import Document
from dicomweb.storage.naming import Location


@dataclass(frozen=True)
class Problem:
    """One inconsistency: its kind, the blob or document it concerns, and what is wrong."""

    kind: str
    name: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind:16} {self.name}: {self.detail}"


@dataclass
class CheckReport:
    """What a check found, and how much it looked at."""

    files: int = 0
    documents: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems


async def check(service: Service) -> CheckReport:
    """Every inconsistency between Blob and the index, without changing anything."""
    report = CheckReport()
    files: dict[str, list[StoredFile]] = {}
    async for location, created in service.blobs.instances.list():
        files.setdefault(location.sop, []).append(StoredFile(location, created))
        report.files += 1
    sidecars: dict[Location, set[str]] = {}
    async for location, kind in service.blobs.sidecars.entries():
        sidecars.setdefault(location, set()).add(kind)
    index = service.index
    claims = {doc["sop"]: doc for doc in await index.documents("claim")}
    instances = {doc["sopInstanceUID"]: doc for doc in await index.documents("instance")}
    summaries = await index.documents("study") + await index.documents("series")
    report.documents = len(claims) + len(instances) + len(summaries)
    problems = report.problems
    stored = {f.location for found in files.values() for f in found}
    now = datetime.now(timezone.utc)
    for sop in sorted(set(files) | set(claims)):
        claim = claims.get(sop)
        plan = generations.classify(files.get(sop, []), claim, now, 0, every_study=True)
        if plan.unfinished and claim is not None:
            problems.append(Problem("unfinished", claim["id"], f"its {generations.state(claim)} of "
                                                               f"{records.named(claim).instance} did not finish"))
        problems += [Problem("unindexed", loc.instance, "no claim names this generation") for loc in plan.remove]
        if plan.publish is not None:
            problems.append(Problem("unindexed", plan.publish.instance, "the index does not name this instance"))
        if plan.dangling and claim is not None:
            problems.append(Problem("dangling", claim["id"], f"names {records.named(claim).instance}, which is gone"))
        if plan.kept is None:
            continue
        doc = instances.get(sop)
        if doc is None or retrieve.location(doc) != plan.kept:
            problems.append(Problem("unindexed", plan.kept.instance, "its instance document is missing or names "
                                                                     "another generation"))
        elif "json" not in sidecars.get(plan.kept, set()) or (
                doc.get("numberOfFrames") is not None and "frames" not in sidecars.get(plan.kept, set())):
            problems.append(Problem("missing-sidecar", plan.kept.instance, "a sidecar of this generation is missing"))
    for sop, doc in instances.items():
        if retrieve.location(doc) not in stored:
            problems.append(Problem("dangling", f"{doc['studyInstanceUID']}/{doc['id']}",
                                    f"names {retrieve.location(doc).instance}, which is gone"))
    problems += [Problem("orphan-sidecar", loc.sidecar("json"), "its instance file is gone")
                 for loc in sidecars if loc not in stored]
    problems += _stale_summaries(summaries, list(instances.values()))
    return report


def _stale_summaries(summaries: list[Document], instances: list[Document]) -> list[Problem]:
    """Summaries whose counts differ from the instance documents (a missing summary counts as zeros)."""
    expected = generations.expected_summaries(instances)
    actual = {(doc["studyInstanceUID"], doc["type"], doc["id"].split(":", 1)[1]): doc for doc in summaries}
    problems = []
    for key in sorted(set(expected) | set(actual)):
        study, level, uid = key
        have = actual.get(key, {"type": level, "numberOfInstances": 0})
        wrong = generations.differences(have, expected.get(key, Expected()))
        if wrong:
            shown = ", ".join(f"{name} {old} (should be {new})" for name, (old, new) in wrong.items())
            problems.append(Problem("stale-summary", f"{study}/{level}:{uid}", shown))
    return problems


async def repair(service: Service) -> CheckReport:
    """Fix everything :func:`check` finds; the report of the check that follows."""
    await reindex(service, in_flight_seconds=0)
    found = await check(service)
    studies = set()
    for problem in found.problems:
        if problem.kind == "unfinished" and (claim := await service.claims.get(problem.name.split(":", 1)[1])):
            await generations.settle_claim(service, claim)  # its files are gone: reindex never meets it
            studies.add(claim["study"])
        if problem.kind != "dangling":
            continue
        doc = await _dangling(service, problem)
        if doc is None:
            continue
        if doc["type"] == "claim":
            await generations.delete(service, records.named(doc))
            studies.add(doc["study"])
        else:
            await generations.settle(service, retrieve.location(doc))
            studies.add(doc["studyInstanceUID"])
    for problem in found.problems:
        if problem.kind == "stale-summary":
            studies.add(problem.name.split("/", 1)[0])
    for study in sorted(studies):
        await generations.recount(service, study)
    return await check(service)


async def _dangling(service: Service, problem: Problem) -> Document | None:
    """The claim or instance document a ``dangling`` problem names, read again."""
    if problem.name.startswith("claim:"):
        return await service.claims.get(problem.name.split(":", 1)[1])
    study, doc_id = problem.name.split("/", 1)
    return await service.index.find(study, "instance", doc_id.split(":", 1)[1])
