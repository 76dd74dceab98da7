"""``dicomweb check [--repair]`` against real emulators: every kind of inconsistency found, then repaired."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx

from dicomweb.config import Settings
from dicomweb.service import Service
from dicomweb.generations import DELETING
from dicomweb.storage.naming import Location
from tests.conftest import ROOT, Server, blob_service, fresh_settings, instance_blob, start_server
from tests.wsi_factory import make_slide


def run_check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``python -m dicomweb check`` with ``env``, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "dicomweb", "check", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _kinds(output: str) -> set[str]:
    return {line.split()[0] for line in output.splitlines() if line and not line.startswith(("checked", "repaired"))}


def _break_a_summary(env: dict[str, str], study: str) -> None:
    async def scenario() -> None:
        service = await Service.create(Settings.from_env(env))
        try:
            await service.index.patch(study, f"study:{study}", [{"op": "set", "path": "/numberOfInstances",
                                                                 "value": 99}])
        finally:
            await service.close()

    asyncio.run(scenario())


def _begin_a_deletion(env: dict[str, str], sop: str) -> None:
    """What a DELETE that died right after it began leaves: its claim says so, and nothing else changed."""
    async def scenario() -> None:
        service = await Service.create(Settings.from_env(env))
        try:
            claim = await service.claims.get(sop)
            assert claim is not None
            await service.claims.update(sop, [{"op": "set", "path": "/state", "value": DELETING},
                                              {"op": "set", "path": "/action", "value": "delete"},
                                              {"op": "incr", "path": "/sequence", "value": 1000}],
                                        f"FROM c WHERE c.generation = '{claim['generation']}'")
        finally:
            await service.close()

    asyncio.run(scenario())


def test_check_finds_every_inconsistency_and_repair_fixes_them(emulators: dict[str, str], tmp_path: Path) -> None:
    server = start_server(fresh_settings(emulators), tmp_path)
    try:
        _scenario(server, tmp_path)
    finally:
        server.stop()


def _scenario(server: Server, tmp_path: Path) -> None:
    env = server.env
    files = make_slide(tmp_path / "slide", levels=3, base_size=(600, 400), associated=False)
    for file in files:
        assert httpx.post(f"{server.base_url}/studies", content=file.path.read_bytes(),
                          headers={"content-type": "application/dicom"}, timeout=60).status_code == 200
    clean = run_check(env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "checked 3 instance files" in clean.stdout and "0 inconsistencies" in clean.stdout

    blobs = blob_service(env)
    instances = blobs.get_container_client(env["DICOMWEB_INSTANCE_CONTAINER"])
    sidecars = blobs.get_container_client(env["DICOMWEB_SIDECAR_CONTAINER"])
    lost_sidecar, vanished, half_deleted = files
    names = {f.sop_uid: instance_blob(env, f.study_uid, f.series_uid, f.sop_uid) for f in files}
    sidecars.delete_blob(Location.parse(names[lost_sidecar.sop_uid]).sidecar("frames"))  # type: ignore[union-attr]
    instances.delete_blob(names[vanished.sop_uid])
    _begin_a_deletion(env, half_deleted.sop_uid)
    older = Location(lost_sidecar.study_uid, lost_sidecar.series_uid, lost_sidecar.sop_uid, "00000000000001" + "a" * 12)
    instances.upload_blob(older.instance, lost_sidecar.path.read_bytes())
    _break_a_summary(env, lost_sidecar.study_uid)

    found = run_check(env)
    assert found.returncode == 1
    assert _kinds(found.stdout) == {"missing-sidecar", "dangling", "orphan-sidecar", "unfinished", "unindexed",
                                    "stale-summary"}, found.stdout
    repaired = run_check(env, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "repaired; 0 inconsistencies left" in repaired.stdout
    again = run_check(env)
    assert again.returncode == 0 and "0 inconsistencies" in again.stdout, again.stdout

    base = f"{server.base_url}/studies/{lost_sidecar.study_uid}/series/{lost_sidecar.series_uid}/instances"
    frame = httpx.get(f"{base}/{lost_sidecar.sop_uid}/frames/1", headers={"accept": "*/*"})
    assert frame.status_code == 200  # its frame offset record was derived again
    for gone in (vanished, half_deleted):
        assert httpx.get(f"{base}/{gone.sop_uid}/metadata").status_code == 404
    study = httpx.get(f"{server.base_url}/studies", params={"StudyInstanceUID": lost_sidecar.study_uid}).json()
    assert study[0]["00201208"]["Value"] == [1]
    assert older.instance not in [b.name for b in instances.list_blobs(name_starts_with=lost_sidecar.study_uid)]
