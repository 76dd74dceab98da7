"""The ``dicomweb`` command: ``serve`` as the README's first command runs it, and ``reindex``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from dicomweb.local.emulators import free_port
from tests.conftest import ROOT, fresh_settings, start_server
from tests.wsi_factory import make_slide


def test_reindex_command(emulators: dict[str, str], tmp_path: Path) -> None:
    settings = fresh_settings(emulators)
    files = make_slide(tmp_path / "slide", levels=1, base_size=(300, 300), associated=False)
    server = start_server(settings, tmp_path)
    try:
        assert httpx.post(f"{server.base_url}/studies", content=files[0].path.read_bytes(),
                          headers={"content-type": "application/dicom"}).status_code == 200
    finally:
        server.stop()
    done = subprocess.run([sys.executable, "-m", "dicomweb", "reindex", "--here"], cwd=ROOT, env=server.env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert ("indexed 1 instances, rebuilt 0 sidecars, finished 0 interrupted stores and deletions, removed 0 unnamed"
            " generations and 0 orphan sidecars") in done.stdout


def test_reindex_without_settings_fails_clearly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMWEB_")}
    done = subprocess.run([sys.executable, "-m", "dicomweb", "reindex"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "DICOMWEB_STORAGE_CONNECTION_STRING" in done.stderr


def _serve(data: Path, cwd: Path) -> tuple[subprocess.Popen, int]:
    """``dicomweb serve`` without settings, as the README's first command runs it; once it answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMWEB_")}
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "dicomweb", "serve", "--port", str(port), "--data", str(data)],
                               cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    assert process.stdout is not None
    while not any("DICOMweb base URL" in line for line in lines):
        line = process.stdout.readline()
        assert line, "".join(lines)
        lines.append(line)
    assert f"DICOMweb base URL: http://127.0.0.1:{port}/v1\n" in lines
    deadline = time.monotonic() + 30
    while True:
        try:
            assert httpx.get(f"http://127.0.0.1:{port}/v1/studies/1.2.3/metadata").status_code == 404
            return process, port
        except httpx.TransportError:
            assert time.monotonic() < deadline
            time.sleep(0.2)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["INT", "TERM", "HUP"])
def test_serve_starts_the_emulators_itself_and_stops_them(tmp_path: Path, stop: signal.Signals) -> None:
    """No storage settings, so ``serve`` starts Azurite and Cosmos; any stop signal stops them too
    (SIGTERM, what a process manager or ``kill`` sends, used to leave both running)."""
    process, _ = _serve(tmp_path / "data", tmp_path)
    try:
        children = psutil.Process(process.pid).children(recursive=True)
        assert len(children) >= 2
        assert (tmp_path / "data" / "azurite").is_dir()
    finally:
        process.send_signal(stop)
        process.wait(timeout=30)
    assert process.returncode == 0
    time.sleep(0.5)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.timeout(120)
def test_a_second_serve_on_the_same_data_folder_refuses_to_start(tmp_path: Path) -> None:
    """Two serves on one folder both started and split the store (two Azurites on one database file).
    Other commands run without settings find the running one's emulators through the folder."""
    first, port = _serve(tmp_path / "data", tmp_path)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMWEB_")}
        second = subprocess.run([sys.executable, "-m", "dicomweb", "serve", "--port", str(free_port()),
                                 "--data", str(tmp_path / "data")], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=60)
        assert second.returncode == 1
        assert f"(PID {first.pid})" in second.stderr and str(tmp_path / "data") in second.stderr
        assert httpx.get(f"http://127.0.0.1:{port}/v1/studies/1.2.3/metadata").status_code == 404
        checked = subprocess.run([sys.executable, "-m", "dicomweb", "check", "--data", str(tmp_path / "data")],
                                 cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stdout + checked.stderr  # reached the running serve's emulators
        assert "0 inconsistencies" in checked.stdout
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=30)
    again, _ = _serve(tmp_path / "data", tmp_path)  # the folder is free once the first has stopped
    again.send_signal(signal.SIGTERM)
    again.wait(timeout=30)


def test_serve_admits_what_one_azure_instance_takes() -> None:
    """``serve``'s default concurrency is the per-instance concurrency the Bicep deploys (infra/scale.json)."""
    import json

    from dicomweb.cli import SCALE_JSON, deployed_concurrency

    assert deployed_concurrency() == json.loads(SCALE_JSON.read_text())["httpPerInstanceConcurrency"] >= 1
