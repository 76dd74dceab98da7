"""Shared fixtures: real Azurite and Cosmos-protocol servers, and the service as ``dicomweb serve`` runs it.

The emulators start once per session; the service runs as a child process, exactly
as the README's first command starts it, pointed at them.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pydicom
import pytest
from aiohttp import web
from azure.storage.blob import BlobServiceClient
from pydicom.encaps import generate_frames

from dicomweb.local.emulators import Emulators, free_port

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Server:
    """A running ``dicomweb serve`` process."""

    base_url: str
    env: dict[str, str]
    process: subprocess.Popen

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_server(settings: dict[str, str], data_dir: Path, **extra: str) -> Server:
    """Start ``python -m dicomweb serve`` with ``settings`` (plus ``extra``) and wait until it answers."""
    port = free_port()
    env = {**os.environ, **settings, **extra}
    env.pop("DICOMWEB_PUBLIC_BASE_URL", None)
    log = open(data_dir / f"serve-{port}.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "dicomweb", "serve", "--port", str(port), "--data", str(data_dir)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError((data_dir / f"serve-{port}.log").read_text())
        try:
            httpx.options(base + "/studies", timeout=1)
            return Server(base, env, process)
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("dicomweb serve did not start")


class ThreadedHttpServer:
    """A small aiohttp app on localhost, served from a thread of its own (a stand-in the service calls)."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app)
        self.url = ""

    def start(self) -> "ThreadedHttpServer":
        ready = threading.Event()
        threading.Thread(target=self._serve, args=(ready,), daemon=True).start()
        assert ready.wait(10), "the local HTTP server did not start"
        return self

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)


@pytest.fixture(scope="session")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Azurite and the Cosmos DB protocol server, started once for the session."""
    stack = Emulators(tmp_path_factory.mktemp("emulators"))
    settings = stack.start()
    yield settings
    stack.stop()


@pytest.fixture(scope="session")
def server(emulators: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The service, served like ``dicomweb serve`` does, against the session's emulators."""
    running = start_server(emulators, tmp_path_factory.mktemp("serve"))
    yield running
    running.stop()


def fresh_settings(emulators: dict[str, str]) -> dict[str, str]:
    """The emulators' settings with containers and a database of their own."""
    suffix = uuid.uuid4().hex[:8]
    return {**emulators, "DICOMWEB_INSTANCE_CONTAINER": f"inst-{suffix}",
            "DICOMWEB_SIDECAR_CONTAINER": f"side-{suffix}", "DICOMWEB_STAGING_CONTAINER": f"stage-{suffix}",
            "DICOMWEB_COSMOS_DATABASE": f"db-{suffix}"}


@pytest.fixture
def isolated_server(emulators: dict[str, str], tmp_path: Path) -> Iterator[Server]:
    """A service of its own (own containers and database), for tests that break its storage."""
    running = start_server(fresh_settings(emulators), tmp_path)
    yield running
    running.stop()


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    """An HTTP client rooted at the service's DICOMweb base URL."""
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        yield client


def blob_service(settings: dict[str, str]) -> BlobServiceClient:
    """A synchronous Blob client on the emulator, for looking behind the service."""
    return BlobServiceClient.from_connection_string(settings["DICOMWEB_STORAGE_CONNECTION_STRING"])


def blob_names(settings: dict[str, str], container: str, prefix: str) -> list[str]:
    """Committed blob names under ``prefix``."""
    client = blob_service(settings).get_container_client(container)
    return [b.name for b in client.list_blobs(name_starts_with=prefix)]


def instance_blob(settings: dict[str, str], study: str, series: str, sop: str) -> str:
    """The blob name of an instance's stored generation, checking that there is exactly one."""
    container = settings.get("DICOMWEB_INSTANCE_CONTAINER") or "dicom-instances"
    names = [n for n in blob_names(settings, container, f"{study}/{series}/{sop}/") if n.endswith(".dcm")]
    assert len(names) == 1, names
    return names[0]


def source_frames(path: Path) -> list[bytes]:
    """Frames as pydicom extracts them from a file: the reference every served frame must equal."""
    dataset = pydicom.dcmread(path)
    count = int(dataset.get("NumberOfFrames", 1))
    if not dataset.file_meta.TransferSyntaxUID.is_encapsulated:
        size = len(dataset.PixelData) // count
        return [dataset.PixelData[i * size : (i + 1) * size] for i in range(count)]
    extended = None
    if "ExtendedOffsetTable" in dataset:
        extended = (dataset.ExtendedOffsetTable, dataset.ExtendedOffsetTableLengths)
    return list(generate_frames(dataset.PixelData, number_of_frames=count, extended_offsets=extended))


def parse_multipart(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """(headers, body) of each part of a multipart/related answer, parsed independently of the service."""
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/related"), content_type
    boundary = next(p.split("=", 1)[1].strip('"') for p in content_type.split(";") if p.strip().startswith("boundary="))
    body = response.content
    delimiter = b"--" + boundary.encode()
    assert body.rstrip(b"\r\n").endswith(delimiter + b"--"), "multipart body must end with the close delimiter"
    parts = []
    for chunk in body.split(delimiter)[1:-1]:
        assert chunk.startswith(b"\r\n") and chunk.endswith(b"\r\n")
        head, _, payload = chunk[2:-2].partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, payload))
    return parts
