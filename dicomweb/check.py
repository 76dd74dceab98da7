"""Compares Blob, the system of record, with the index, and repairs what differs (``dicomweb check``).

What it reports, per kind:

- ``deleting``: a file whose deletion began and never finished;
- ``unindexed``: a stored generation the index does not name as current (a store or a
  move that died before it was published, or an older generation a replacement left);
- ``missing-sidecar``: a current generation without its metadata or frame offset record;
- ``dangling``: a claim or an instance document naming a generation whose file is gone;
- ``orphan-sidecar``: sidecars whose file is gone;
- ``stale-summary``: a study or series summary whose counts differ from its instance documents.

``--repair`` runs :func:`dicomweb.reindex.reindex` (which finishes deletions, publishes
the newest generation, removes older ones, derives sidecars, recounts and removes
orphan sidecars), deletes dangling entries the way DELETE does (so the change feed
says so), recounts their studies, and checks again. Run it while no writes are in flight: a
store between its commit and its publication looks ``unindexed`` for that moment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dicomweb import records, retrieve
from dicomweb.delete import delete_instance
from dicomweb.indexing import member_key, recount
from dicomweb.reindex import reindex
from dicomweb.service import Service
from dicomweb.storage.naming import DELETING, Location
from dicomweb.storage.index import Document


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
    files: dict[str, list[tuple[Location, dict[str, str]]]] = {}
    async for location, metadata in service.blobs.instances.list():
        files.setdefault(location.sop, []).append((location, metadata))
        report.files += 1
    sidecars: dict[Location, set[str]] = {}
    async for location, kind in service.blobs.sidecars.entries():
        sidecars.setdefault(location, set()).add(kind)
    index = service.index
    claims = {doc["id"].split(":", 1)[1]: doc for doc in await index.documents("claim")}
    instances = {doc["sopInstanceUID"]: doc for doc in await index.documents("instance")}
    summaries = await index.documents("study") + await index.documents("series")
    report.documents = len(claims) + len(instances) + len(summaries)
    problems = report.problems
    stored: set[Location] = set()
    for sop, found in files.items():
        live = sorted((loc for loc, metadata in found if not metadata.get(DELETING)), key=lambda loc: loc.generation)
        stored.update(loc for loc, _ in found)
        problems += [Problem("deleting", loc.instance, "its deletion began and did not finish")
                     for loc, metadata in found if metadata.get(DELETING)]
        problems += [Problem("unindexed", loc.instance, "an older generation of a stored instance")
                     for loc in live[:-1]]
        if not live:
            continue
        current = live[-1]
        claim, doc = claims.get(sop), instances.get(sop)
        if claim is None or records.named(claim) != current or doc is None or retrieve.location(doc) != current:
            problems.append(Problem("unindexed", current.instance, "the index does not name this generation"))
        elif "json" not in sidecars.get(current, set()) or (
                doc.get("numberOfFrames") is not None and "frames" not in sidecars.get(current, set())):
            problems.append(Problem("missing-sidecar", current.instance, "a sidecar of this generation is missing"))
    for sop, claim in claims.items():
        if records.named(claim) not in stored:
            problems.append(Problem("dangling", claim["id"], f"names {records.named(claim).instance}, which is gone"))
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
    expected: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in instances:
        study, series = doc["studyInstanceUID"], doc["seriesInstanceUID"]
        key = member_key(doc["sopInstanceUID"])
        series_counts = expected.setdefault((study, f"series:{series}"), {"numberOfInstances": 0, "members": set()})
        series_counts["numberOfInstances"] += 1
        series_counts["members"].add(key)
        study_counts = expected.setdefault((study, f"study:{study}"),
                                           {"numberOfInstances": 0, "series": set(), "modalities": {},
                                            "members": set()})
        study_counts["numberOfInstances"] += 1
        study_counts["members"].add(key)
        study_counts["series"].add(series)
        if doc.get("modality"):
            study_counts["modalities"][doc["modality"]] = study_counts["modalities"].get(doc["modality"], 0) + 1
    actual = {(doc["studyInstanceUID"], doc["id"]): doc for doc in summaries}
    problems = []
    for key in sorted(set(expected) | set(actual)):
        want = dict(expected.get(key, {"numberOfInstances": 0, "members": set()}))
        if "series" in want:
            want["numberOfSeries"] = len(want.pop("series"))
        have = dict(actual.get(key, {}))
        have["members"] = set(have.get("members") or {})
        if "modalities" in want or "modalities" in have:
            have = {**have, "modalities": {k: v for k, v in (have.get("modalities") or {}).items() if v}}
        wrong = {name: (have.get(name, 0), value) for name, value in want.items() if have.get(name, 0) != value}
        if "members" in wrong:
            wrong["members"] = (len(have["members"]), len(want["members"]))
        if wrong:
            shown = ", ".join(f"{name} {old} (should be {new})" for name, (old, new) in wrong.items())
            problems.append(Problem("stale-summary", f"{key[0]}/{key[1]}", shown))
    return problems


async def repair(service: Service) -> CheckReport:
    """Fix everything :func:`check` finds; the report of the check that follows."""
    await reindex(service)
    found = await check(service)
    studies = set()
    for problem in found.problems:
        if problem.kind != "dangling":
            continue
        doc = await _dangling(service, problem)
        if doc is not None:
            await delete_instance(service, records.named(doc) if doc["type"] == "claim" else retrieve.location(doc))
            studies.add(doc["study"] if doc["type"] == "claim" else doc["studyInstanceUID"])
    for problem in found.problems:
        if problem.kind == "stale-summary":
            studies.add(problem.name.split("/", 1)[0])
    for study in sorted(studies):
        await recount(service, study)
    return await check(service)


async def _dangling(service: Service, problem: Problem) -> Document | None:
    """The claim or instance document a ``dangling`` problem names, read again."""
    if problem.name.startswith("claim:"):
        return await service.index.claim(problem.name.split(":", 1)[1])
    study, doc_id = problem.name.split("/", 1)
    return await service.index.find(study, "instance", doc_id.split(":", 1)[1])

