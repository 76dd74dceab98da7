"""Runs the Bicep's own Blob lifecycle policy on the local store, as Azure's daily run applies it.

Azurite has no lifecycle management. ``dicomweb lifecycle --days N`` (and ``serve
--lifecycle-hours``) evaluate ``dicomweb/storage/lifecycle-policy.json`` (the file the Bicep
deploys) on every blob of the configured containers as if N days had passed, and apply what is due
with Set Blob Tier and Delete Blob (:mod:`dicomweb.storage.lifecycle`), so the local Blob stand-in
sends the events Azure's run causes. What the evaluation follows (the management policy API's
documented rules):

- Filters: ``blobTypes``, ``prefixMatch`` (``container/prefix``; the policy names the default
  containers, mapped here onto the configured ones) and ``blobIndexMatch`` (``==``, the only
  operator lifecycle rules take); all must hold.
- Conditions of an action, all of which must hold: ``daysAfterModificationGreaterThan``,
  ``daysAfterCreationGreaterThan``, ``daysAfterLastAccessTimeGreaterThan`` (a blob without a last
  access time counts from its creation, as Azure counts from the day tracking was enabled) and
  ``daysAfterLastTierChangeGreaterThan`` (a tier never changed counts from creation). Ages are
  exact: more than N × 24 hours.
- Of every action due on a blob by any rule, the cheapest wins: delete, then tierToArchive,
  tierToCold, tierToCool. A run never moves a blob to its own tier or a hotter one (so it never
  rehydrates, an Archive blob can only be deleted) and leaves a blob being rehydrated alone.
- ``enableAutoTierToHotFromCool`` is what Azure does when a Cool blob is read, not part of the run:
  it is not applied here (the local stand-in leaves a read Cool blob in Cool).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from dicomweb.config import Settings
from dicomweb.storage.clients import blob_store
from dicomweb.storage.lifecycle import BlobFacts, LifecycleStore

POLICY_JSON = Path(__file__).resolve().parents[1] / "storage" / "lifecycle-policy.json"
#: Access tiers from the hottest to the coldest.
TIERS = ("Hot", "Cool", "Cold", "Archive")
DELETED = "deleted"
#: Base-blob actions from the cheapest, with where each sends a blob.
ACTIONS = (("delete", DELETED), ("tierToArchive", "Archive"), ("tierToCold", "Cold"), ("tierToCool", "Cool"))
#: Each condition and the time of the blob it counts from.
CONDITIONS: dict[str, Callable[[BlobFacts], datetime]] = {
    "daysAfterModificationGreaterThan": lambda blob: blob.modified,
    "daysAfterCreationGreaterThan": lambda blob: blob.created,
    "daysAfterLastAccessTimeGreaterThan": lambda blob: blob.accessed or blob.created,
    "daysAfterLastTierChangeGreaterThan": lambda blob: blob.tier_changed or blob.created,
}


def load_policy(path: Path = POLICY_JSON) -> dict[str, Any]:
    """The management policy the Bicep deploys (the file's ``policy``)."""
    return dict(json.loads(path.read_text())["policy"])


def container_names(settings: Settings) -> dict[str, str]:
    """The policy's container names (the defaults) → the configured ones."""
    return {Settings.instance_container: settings.instance_container,
            Settings.sidecar_container: settings.sidecar_container,
            Settings.staging_container: settings.staging_container}


@dataclass(frozen=True)
class Action:
    """What a run does to one blob: ``to`` a colder tier or ``deleted``, by ``rule``."""

    rule: str
    to: str


def _matches(filters: dict[str, Any], blob: BlobFacts, containers: dict[str, str]) -> bool:
    if blob.blob_type.lower() not in {kind.lower() for kind in filters.get("blobTypes", [])}:
        return False
    if "prefixMatch" in filters:
        path = f"{blob.container}/{blob.name}"
        mapped = []
        for prefix in filters["prefixMatch"]:
            container, slash, rest = prefix.partition("/")
            mapped.append(containers.get(container, container) + slash + rest)
        if not any(path.startswith(prefix) for prefix in mapped):
            return False
    for match in filters.get("blobIndexMatch", []):
        if match["op"] != "==":
            raise ValueError(f"blobIndexMatch operator {match['op']!r}: lifecycle rules take only ==")
        if blob.tags.get(match["name"]) != match["value"]:
            return False
    return True


def _due(conditions: dict[str, int], blob: BlobFacts, now: datetime) -> bool:
    for name, days in conditions.items():
        if name not in CONDITIONS:
            raise ValueError(f"lifecycle condition {name!r} is not one the local run knows")
        if now - CONDITIONS[name](blob) <= timedelta(days=days):
            return False
    return True


def evaluate(policy: dict[str, Any], blob: BlobFacts, now: datetime, containers: dict[str, str]) -> Action | None:
    """The action Azure's run would take on ``blob`` at ``now`` (None: it stays as it is)."""
    if blob.archive_status:
        return None
    tier = TIERS.index(blob.tier)
    best: tuple[int, Action] | None = None
    for rule in policy["rules"]:
        if not rule.get("enabled", True) or rule.get("type", "Lifecycle") != "Lifecycle":
            continue
        definition = rule["definition"]
        if not _matches(definition.get("filters", {}), blob, containers):
            continue
        base = definition["actions"].get("baseBlob", {})
        for cost, (name, to) in enumerate(ACTIONS):
            if name not in base or (to != DELETED and TIERS.index(to) <= tier) or not _due(base[name], blob, now):
                continue
            if best is None or cost < best[0]:
                best = (cost, Action(rule["name"], to))
    return best[1] if best else None


@dataclass(frozen=True)
class Move:
    """One blob a run moved (``to`` a tier) or deleted (``to`` "deleted")."""

    container: str
    name: str
    from_tier: str
    to: str
    rule: str


@dataclass
class LifecycleReport:
    """What one run did, evaluating at ``now``: ``days`` after the actual time."""

    now: datetime
    days: int
    examined: int = 0
    moves: list[Move] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Blobs moved to each tier, and deleted."""
        counts: dict[str, int] = {}
        for move in self.moves:
            counts[move.to] = counts.get(move.to, 0) + 1
        return counts

    def as_json(self) -> dict[str, Any]:
        return {"now": self.now.isoformat(), "days": self.days, "examined": self.examined, "counts": self.counts,
                "moves": [asdict(move) for move in self.moves]}

    def table(self) -> str:
        """The moves as a table (none without moves), then a summary line."""
        rows = [(m.container, m.name, m.from_tier, m.to, m.rule) for m in self.moves]
        if rows:
            rows.insert(0, ("container", "blob", "from", "to", "rule"))
        widths = [max(len(row[column]) for row in rows) for column in range(4)] if rows else []
        lines = ["  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[4]]) for row in rows]
        done = ", ".join(f"{count} {to}" if to == DELETED else f"{count} to {to}" for to, count in self.counts.items())
        lines.append(f"examined {self.examined} blobs as of {self.now:%Y-%m-%d %H:%M} UTC ({self.days} days ahead): "
                     f"{done or 'nothing to do'}")
        return "\n".join(lines)


async def run(store: LifecycleStore, policy: dict[str, Any], now: datetime, containers: dict[str, str],
              days: int = 0) -> LifecycleReport:
    """Evaluate every blob of ``store`` at ``now`` and apply what is due."""
    report = LifecycleReport(now, days)
    async for blob in store.blobs():
        report.examined += 1
        action = evaluate(policy, blob, now, containers)
        if action is None:
            continue
        done = await (store.delete(blob) if action.to == DELETED else store.set_tier(blob, action.to))
        if done:
            report.moves.append(Move(blob.container, blob.name, blob.tier, action.to, action.rule))
    return report


async def run_lifecycle(settings: Settings, days: int = 0) -> LifecycleReport:
    """Run the Bicep's policy on the store ``settings`` name as if ``days`` had passed."""
    store = LifecycleStore(blob_store(settings))
    try:
        return await run(store, load_policy(), datetime.now(timezone.utc) + timedelta(days=days),
                         container_names(settings), days)
    finally:
        await store.close()
