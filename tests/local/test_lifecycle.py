"""The Bicep's lifecycle policy run on the local store (``dicomweb lifecycle``): which blobs each rule moves, by the
policy file itself, first as pure evaluation, then against the emulators and through the command."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psutil
import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient, StandardBlobTier
from azure.storage.queue import QueueServiceClient

from dicomweb.config import Settings
from dicomweb.local.emulators import free_port
from dicomweb.local.lifecycle import Action, container_names, evaluate, load_policy, run
from dicomweb.storage.clients import blob_store
from dicomweb.storage.lifecycle import BlobFacts, LifecycleStore
from tests.conftest import ROOT, fresh_settings
from tests.local.test_emulators import EVENTS_METADATA, blob_events

POLICY = load_policy()
DEFAULTS = container_names(Settings())
NOW = datetime(2027, 6, 1, tzinfo=timezone.utc)


def _blob(name: str = "1/2/3/g.dcm", container: str = "dicom-instances", tier: str = "Hot", tag: str | None = "auto",
          read_days_ago: float | None = 0, written_days_ago: float = 0, archive_status: str | None = None,
          blob_type: str = "BlockBlob") -> BlobFacts:
    written = NOW - timedelta(days=written_days_ago)
    return BlobFacts(container, name, blob_type, tier, archive_status, {"dicomweb_tier": tag} if tag else {},
                     written, written, None if read_days_ago is None else NOW - timedelta(days=read_days_ago), None,
                     '"etag"')


def _action(blob: BlobFacts, policy: dict[str, Any] = POLICY,
            containers: dict[str, str] = DEFAULTS) -> tuple[str, str] | None:
    action = evaluate(policy, blob, NOW, containers)
    return None if action is None else (action.to, action.rule)


@pytest.mark.parametrize(("days", "tier", "expected"), [
    (30, "Hot", None),  # "greater than": 30 days is not enough
    (30.01, "Hot", ("Cool", "tierUnreadInstances")),
    (90.01, "Hot", ("Cold", "tierUnreadInstances")),
    (90.01, "Cool", ("Cold", "tierUnreadInstances")),
    (60, "Cool", None),  # never to its own tier
    (200, "Cold", None),  # nor to a hotter one: Cold is not moved to Cool
    (365.01, "Hot", ("Archive", "archiveUnreadInstances")),  # the cheapest of the actions due wins
    (365.01, "Cold", ("Archive", "archiveUnreadInstances")),
    (1000, "Archive", None),  # a run never rehydrates
])
def test_unread_auto_instances_go_to_cool_cold_then_archive(days: float, tier: str,
                                                            expected: tuple[str, str] | None) -> None:
    assert _action(_blob(tier=tier, read_days_ago=days, written_days_ago=days + 10)) == expected


def test_rehydrated_instances_age_to_cool_and_cold_but_never_archive() -> None:
    assert _action(_blob(tag="rehydrated", read_days_ago=31, written_days_ago=900)) == ("Cool", "tierUnreadRehydrated")
    assert _action(_blob(tag="rehydrated", read_days_ago=5000)) == ("Cold", "tierUnreadRehydrated")
    assert _action(_blob(tag="rehydrated", tier="Cold", read_days_ago=5000)) is None


def test_what_no_rule_matches_stays() -> None:
    old = {"read_days_ago": 5000, "written_days_ago": 5000}
    assert _action(_blob(tag="hot", **old)) is None  # type: ignore[arg-type]
    assert _action(_blob(tag=None, **old)) is None  # type: ignore[arg-type]
    assert _action(_blob(container="dicom-sidecars", name="1/2/3/g.json", tag="hot", **old)) is None  # type: ignore[arg-type]
    assert _action(_blob(container="dicom-sidecars", **old)) is None  # type: ignore[arg-type]  # auto, but not an instance
    assert _action(_blob(container="dicom-staging", name="operations/r.json", tag=None, **old)) is None  # type: ignore[arg-type]
    assert _action(_blob(blob_type="AppendBlob", **old)) is None  # type: ignore[arg-type]


def test_staged_uploads_are_deleted_two_days_after_their_last_write() -> None:
    for name in ("data/u.dcm", "sessions/u.json"):
        staged = {"container": "dicom-staging", "name": name, "tag": None, "read_days_ago": 0}
        assert _action(_blob(written_days_ago=2, **staged)) is None  # type: ignore[arg-type]
        assert _action(_blob(written_days_ago=2.01, **staged)) == ("deleted", "expireStagedUploads")  # type: ignore[arg-type]
        assert _action(_blob(written_days_ago=500, tier="Archive", **staged)) == (  # type: ignore[arg-type]
            "deleted", "expireStagedUploads")  # an Archive blob can still be deleted


def test_a_blob_being_rehydrated_is_left_alone() -> None:
    pending = _blob(tier="Archive", archive_status="rehydrate-pending-to-hot", read_days_ago=5000)
    assert _action(pending) is None
    staged = _blob(container="dicom-staging", name="data/u.dcm", tier="Archive", tag=None, written_days_ago=10,
                   archive_status="rehydrate-pending-to-cool")
    assert _action(staged) is None


def test_without_a_last_access_time_a_blob_counts_from_its_creation() -> None:
    assert _action(_blob(read_days_ago=None, written_days_ago=31)) == ("Cool", "tierUnreadInstances")
    assert _action(_blob(read_days_ago=None, written_days_ago=29)) is None


def test_the_policy_names_default_containers_mapped_onto_the_configured_ones() -> None:
    names = container_names(Settings(instance_container="inst-x", staging_container="stage-x"))
    assert names == {"dicom-instances": "inst-x", "dicom-sidecars": "dicom-sidecars", "dicom-staging": "stage-x"}
    assert _action(_blob(container="inst-x", read_days_ago=31), containers=names) == ("Cool", "tierUnreadInstances")
    assert _action(_blob(container="dicom-instances", read_days_ago=31), containers=names) is None
    staged = _blob(container="stage-x", name="data/u", tag=None, written_days_ago=3)
    assert _action(staged, containers=names) == ("deleted", "expireStagedUploads")


def _policy(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"rules": [{"name": f"r{n}", "enabled": True, "type": "Lifecycle",
                       "definition": {"filters": {"blobTypes": ["blockBlob"]}, **rule}} for n, rule in enumerate(rules)]}


def test_of_all_actions_due_by_any_rule_the_cheapest_wins_and_conditions_all_hold() -> None:
    cool = {"actions": {"baseBlob": {"tierToCool": {"daysAfterModificationGreaterThan": 1}}}}
    delete = {"actions": {"baseBlob": {"delete": {"daysAfterCreationGreaterThan": 5}}}}
    archive = {"actions": {"baseBlob": {"tierToArchive": {"daysAfterModificationGreaterThan": 3,
                                                          "daysAfterLastTierChangeGreaterThan": 7}}}}
    policy = _policy(cool, archive, delete)
    assert _action(_blob(written_days_ago=4), policy) == ("Cool", "r0")  # the archive rule's tier change: 4 days
    assert _action(_blob(written_days_ago=4.9), _policy(cool, archive)) == ("Cool", "r0")
    assert _action(_blob(written_days_ago=8), _policy(cool, archive)) == ("Archive", "r1")
    assert _action(_blob(written_days_ago=8), policy) == ("deleted", "r2")
    disabled = _policy(cool, delete)
    disabled["rules"][1]["enabled"] = False
    assert _action(_blob(written_days_ago=8), disabled) == ("Cool", "r0")


def test_prefix_and_index_filters() -> None:
    rule = {"filters": {"blobTypes": ["blockBlob"], "prefixMatch": ["dicom-staging/a", "dicom-sidecars/"],
                        "blobIndexMatch": [{"name": "k", "op": "==", "value": "v"}]},
            "actions": {"baseBlob": {"delete": {"daysAfterModificationGreaterThan": 0}}}}
    policy = {"rules": [{"name": "r", "enabled": True, "type": "Lifecycle", "definition": rule}]}
    tagged = BlobFacts("dicom-staging", "ab", "BlockBlob", "Hot", None, {"k": "v"}, NOW - timedelta(days=1),
                       NOW - timedelta(days=1), None, None, "e")
    assert evaluate(policy, tagged, NOW, DEFAULTS) == Action("r", "deleted")
    assert evaluate(policy, BlobFacts(**{**tagged.__dict__, "name": "b"}), NOW, DEFAULTS) is None
    assert evaluate(policy, BlobFacts(**{**tagged.__dict__, "tags": {"k": "w"}}), NOW, DEFAULTS) is None
    assert evaluate(policy, BlobFacts(**{**tagged.__dict__, "container": "dicom-sidecars"}), NOW, DEFAULTS) is not None
    rule["filters"]["blobIndexMatch"] = [{"name": "k", "op": ">", "value": "a"}]  # type: ignore[index]
    with pytest.raises(ValueError, match="only =="):
        evaluate(policy, tagged, NOW, DEFAULTS)


# Against the emulators: the run lists and changes the blobs through the SDK, as Azure's run does.


def _upload(container: ContainerClient, name: str, tag: str | None) -> None:
    container.upload_blob(name, b"blob " + name.encode(), tags={"dicomweb_tier": tag} if tag else None)


def _containers(settings: dict[str, str]) -> dict[str, ContainerClient]:
    """The instance, sidecar and staging containers ``settings`` name."""
    service = BlobServiceClient.from_connection_string(settings["DICOMWEB_STORAGE_CONNECTION_STRING"])
    configured = Settings.from_env(settings)
    return {kind: service.get_container_client(getattr(configured, f"{kind}_container"))
            for kind in ("instance", "sidecar", "staging")}


def _store(settings: dict[str, str]) -> dict[str, ContainerClient]:
    """The containers of ``settings``, with blobs of every kind the policy tells apart."""
    containers = _containers(settings)
    for name, tag in (("s/e/auto.dcm", "auto"), ("s/e/fresh.dcm", "auto"), ("s/e/hot.dcm", "hot"),
                      ("s/e/rehydrated.dcm", "rehydrated"), ("s/e/pending.dcm", "auto")):
        _upload(containers["instance"], name, tag)
    _upload(containers["sidecar"], "s/e/auto.json", "hot")
    for name in ("data/u.dcm", "sessions/u.json", "operations/reindex.json"):
        _upload(containers["staging"], name, None)
    return containers


def _tiers(containers: dict[str, ContainerClient]) -> dict[str, str]:
    return {f"{kind}:{blob.name}": blob.blob_tier for kind, container in containers.items()
            for blob in container.list_blobs()}


def _run(settings: dict[str, str], now: datetime) -> list[tuple[str, str, str, str]]:
    """Run the policy at ``now``: (name, from tier, to, rule) of what moved."""
    present = len(_tiers(_containers(settings)))

    async def scenario() -> list[tuple[str, str, str, str]]:
        configured = Settings.from_env(settings)
        store = LifecycleStore(blob_store(configured))
        try:
            report = await run(store, load_policy(), now, container_names(configured))
        finally:
            await store.close()
        assert report.examined == present
        return sorted((move.name, move.from_tier, move.to, move.rule) for move in report.moves)

    return asyncio.run(scenario())


def test_the_run_moves_exactly_the_blobs_each_rule_names_as_time_passes(emulators: dict[str, str]) -> None:
    """Days pass by moving the run's clock; ``fresh`` was read two seconds after the others were written."""
    settings = fresh_settings(emulators)
    containers = _store(settings)
    instances = containers["instance"]
    queue = f"lifecycle-{uuid.uuid4().hex[:8]}"
    QueueServiceClient.from_connection_string(settings["DICOMWEB_QUEUES"]).create_queue(queue)
    instances.set_container_metadata({EVENTS_METADATA: queue})
    pending = instances.get_blob_client("s/e/pending.dcm")
    pending.set_standard_blob_tier(StandardBlobTier.ARCHIVE)
    pending.set_standard_blob_tier(StandardBlobTier.HOT)  # the session's rehydrations take a minute
    time.sleep(2.1)
    fresh = instances.get_blob_client("s/e/fresh.dcm")
    fresh.download_blob().readall()
    read = fresh.get_blob_properties().last_accessed_on
    assert read is not None
    blob_events(settings, queue, 2)  # the pending rehydration's tier change and start
    before = _tiers(containers)

    assert _run(settings, read) == []
    assert _run(settings, read + timedelta(days=3)) == [
        ("data/u.dcm", "Hot", "deleted", "expireStagedUploads"),
        ("sessions/u.json", "Hot", "deleted", "expireStagedUploads")]
    unread = [("s/e/auto.dcm", "Hot", "Cool", "tierUnreadInstances"),
              ("s/e/rehydrated.dcm", "Hot", "Cool", "tierUnreadRehydrated")]
    assert _run(settings, read + timedelta(days=30)) == unread  # fresh: exactly 30 days since its read
    assert _run(settings, read + timedelta(days=30)) == []  # a second run right after changes nothing
    events = blob_events(settings, queue, 2)
    assert sorted((e["subject"].rsplit("/", 1)[1], e["data"]["previousTier"], e["data"]["accessTier"])
                  for e in events) == [("auto.dcm", "Hot", "Cool"), ("rehydrated.dcm", "Hot", "Cool")]
    assert _run(settings, read + timedelta(days=91)) == [
        ("s/e/auto.dcm", "Cool", "Cold", "tierUnreadInstances"), ("s/e/fresh.dcm", "Hot", "Cold", "tierUnreadInstances"),
        ("s/e/rehydrated.dcm", "Cool", "Cold", "tierUnreadRehydrated")]
    assert _run(settings, read + timedelta(days=400)) == [
        ("s/e/auto.dcm", "Cold", "Archive", "archiveUnreadInstances"),
        ("s/e/fresh.dcm", "Cold", "Archive", "archiveUnreadInstances")]
    assert _run(settings, read + timedelta(days=400)) == []
    after = _tiers(containers)
    assert {name: tier for name, tier in after.items() if before[name] != tier} == {
        "instance:s/e/auto.dcm": "Archive", "instance:s/e/fresh.dcm": "Archive",
        "instance:s/e/rehydrated.dcm": "Cold"}
    assert set(before) - set(after) == {"staging:data/u.dcm", "staging:sessions/u.json"}
    assert pending.get_blob_properties().archive_status == "rehydrate-pending-to-hot"
    assert fresh.get_blob_properties().last_accessed_on == read  # the run reads nothing


# Through the command.


def _command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicomweb", "lifecycle", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_lifecycle_command_after_400_days_archives_exactly_the_auto_instances(emulators: dict[str, str]) -> None:
    settings = fresh_settings(emulators)
    _store(settings)
    env = {**os.environ, **settings}
    done = _command(env, "--days", "400", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["days"], report["examined"]) == (400, 9)
    instance = Settings.from_env(settings).instance_container
    moves = {(m["container"], m["name"], m["from_tier"], m["to"], m["rule"]) for m in report["moves"]}
    assert {m for m in moves if m[3] == "Archive"} == {
        (instance, f"s/e/{name}.dcm", "Hot", "Archive", "archiveUnreadInstances")
        for name in ("auto", "fresh", "pending")}
    assert {m[1:4] for m in moves if m[3] != "Archive"} == {
        ("s/e/rehydrated.dcm", "Hot", "Cold"), ("data/u.dcm", "Hot", "deleted"), ("sessions/u.json", "Hot", "deleted")}
    assert report["counts"] == {"Archive": 3, "Cold": 1, "deleted": 2}
    again = _command(env, "--days", "400")
    assert again.returncode == 0, again.stderr
    assert re.fullmatch(r"examined 7 blobs as of [-\d]{10} [:\d]{5} UTC \(400 days ahead\): nothing to do\n",
                        again.stdout), again.stdout


def test_lifecycle_command_prints_a_table(emulators: dict[str, str]) -> None:
    settings = fresh_settings(emulators)
    _store(settings)
    done = _command({**os.environ, **settings}, "--days", "31")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["container", "blob", "from", "to", "rule"]
    assert sorted(line.split()[1:] for line in lines[1:-1]) == [
        ["data/u.dcm", "Hot", "deleted", "expireStagedUploads"],
        ["s/e/auto.dcm", "Hot", "Cool", "tierUnreadInstances"],
        ["s/e/fresh.dcm", "Hot", "Cool", "tierUnreadInstances"],
        ["s/e/pending.dcm", "Hot", "Cool", "tierUnreadInstances"],
        ["s/e/rehydrated.dcm", "Hot", "Cool", "tierUnreadRehydrated"],
        ["sessions/u.json", "Hot", "deleted", "expireStagedUploads"]]
    assert lines[-1].startswith("examined 9 blobs as of ")
    assert lines[-1].endswith(" UTC (31 days ahead): 4 to Cool, 2 deleted")  # instances are listed first


@pytest.mark.timeout(120)
def test_lifecycle_command_without_settings_starts_the_emulators_on_the_data_folder(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMWEB_")}
    done = _command(env, "--data", str(tmp_path / "data"), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["examined"] == 0
    assert (tmp_path / "data" / "azurite").is_dir()
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]


@pytest.mark.timeout(120)
def test_serve_runs_the_policy_every_few_hours_when_asked(emulators: dict[str, str], tmp_path: Path) -> None:
    settings = fresh_settings(emulators)
    _store(settings)
    log = tmp_path / "serve.log"
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "dicomweb", "serve", "--port", str(free_port()),
                                    "--data", str(tmp_path), "--lifecycle-hours", "0.0003"],  # about a second
                                   cwd=ROOT, env={**os.environ, **settings}, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while log.read_text().count("lifecycle run: examined 9 blobs, nothing to do") < 2:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(30)
