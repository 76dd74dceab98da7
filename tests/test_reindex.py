"""Blob is the system of record: ``serve`` and ``dicomweb reindex`` rebuild the Cosmos index from it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from dicomweb.local.emulators import free_port

from tests.conftest import ROOT, blob_names, blob_service, source_frames, start_server
from tests.wsi_factory import make_slide


def _settings(emulators: dict[str, str]) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {**emulators, "DICOMWEB_INSTANCE_CONTAINER": f"inst-{suffix}",
            "DICOMWEB_SIDECAR_CONTAINER": f"side-{suffix}", "DICOMWEB_COSMOS_DATABASE": f"db-{suffix}"}


def test_serve_reindexes_an_empty_index_and_reindex_repairs_sidecars(emulators: dict[str, str],
                                                                      tmp_path: Path) -> None:
    settings = _settings(emulators)
    files = make_slide(tmp_path / "slide", levels=2, base_size=(600, 400))
    first = start_server(settings, tmp_path)
    try:
        for file in files:
            response = httpx.post(f"{first.base_url}/studies", content=file.path.read_bytes(),
                                  headers={"content-type": "application/dicom"})
            assert response.status_code == 200
    finally:
        first.stop()
    study, series, volume = files[0].study_uid, files[0].series_uid, files[0].sop_uid
    sidecars = blob_service(settings).get_container_client(settings["DICOMWEB_SIDECAR_CONTAINER"])
    sidecars.delete_blob(f"{study}/{series}/{volume}.json")
    sidecars.delete_blob(f"{study}/{series}/{volume}.frames")
    sidecars.upload_blob(f"{study}/{series}/1.2.3.json", b"{}")

    # A new Cosmos database is an empty index over existing blobs, as after a restart of the local server.
    settings["DICOMWEB_COSMOS_DATABASE"] = f"db-{uuid.uuid4().hex[:8]}"
    second = start_server(settings, tmp_path)
    try:
        log = next(tmp_path.glob(f"serve-{second.base_url.split(':')[2].split('/')[0]}.log")).read_text()
        assert f"reindexed {len(files)} instances from Blob (1 sidecars rebuilt)" in log
        metadata = httpx.get(f"{second.base_url}/studies/{study}/metadata")
        assert metadata.status_code == 200
        assert {d["00080018"]["Value"][0] for d in metadata.json()} == {f.sop_uid for f in files}
        frame = httpx.get(f"{second.base_url}/studies/{study}/series/{series}/instances/{volume}/frames/3",
                          headers={"accept": "image/jpeg"})
        assert frame.content == source_frames(files[0].path)[2]
    finally:
        second.stop()
    assert f"{study}/{series}/1.2.3.json" not in blob_names(settings, settings["DICOMWEB_SIDECAR_CONTAINER"], study)


def test_reindex_command(emulators: dict[str, str], tmp_path: Path) -> None:
    settings = _settings(emulators)
    files = make_slide(tmp_path / "slide", levels=1, base_size=(300, 300), associated=False)
    server = start_server(settings, tmp_path)
    try:
        assert httpx.post(f"{server.base_url}/studies", content=files[0].path.read_bytes(),
                          headers={"content-type": "application/dicom"}).status_code == 200
    finally:
        server.stop()
    done = subprocess.run([sys.executable, "-m", "dicomweb", "reindex"], cwd=ROOT, env=server.env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "indexed 1 instances, rebuilt 0 sidecars, removed 0 orphan sidecars" in done.stdout


def test_reindex_without_settings_fails_clearly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMWEB_")}
    done = subprocess.run([sys.executable, "-m", "dicomweb", "reindex"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "DICOMWEB_STORAGE_CONNECTION_STRING" in done.stderr


@pytest.mark.timeout(120)
def test_serve_starts_the_emulators_itself_and_stops_them(tmp_path: Path) -> None:
    """The README's first command: no storage settings, so ``serve`` starts Azurite and Cosmos and says where."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMWEB_")}
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "dicomweb", "serve", "--port", str(port), "--data",
                                str(tmp_path / "data")], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        assert process.stdout is not None
        while not any("DICOMweb base URL" in line for line in lines):
            line = process.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        assert f"DICOMweb base URL: http://127.0.0.1:{port}/v1\n" in lines
        children = psutil.Process(process.pid).children(recursive=True)
        assert len(children) >= 2
        deadline = time.monotonic() + 30
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/v1/studies/1.2.3/metadata").status_code == 404
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert (tmp_path / "data" / "azurite").is_dir()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    time.sleep(0.5)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
