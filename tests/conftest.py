"""Shared fixtures: real Azurite and Cosmos-protocol servers, and the service as ``dicomweb serve`` runs it.

The emulators start once per session; the service runs as a child process, exactly
as the README's first command starts it, pointed at them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import httpx
import pydicom
import pytest
from aiohttp import web
from azure.storage.blob import BlobServiceClient
from pydicom.encaps import generate_frames

from dicomweb.local.emulators import Emulators, free_port
from dicomweb.local.provision import provision

if TYPE_CHECKING:
    from tests.oidc import Provider

ROOT = Path(__file__).resolve().parents[1]
#: The log of every ``serve`` the suite starts (scanned for patient data at the end).
SERVE_LOGS: list[Path] = []


@dataclass
class Server:
    """A running ``dicomweb serve`` process."""

    base_url: str
    env: dict[str, str]
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_server(settings: dict[str, str], data_dir: Path, *, python: str = sys.executable, app_root: Path = ROOT,
                 concurrency: int | None = None, **extra: str) -> Server:
    """Start ``python -m dicomweb serve`` with ``settings`` (plus ``extra``) and wait until it answers.

    ``python`` and ``app_root`` name another environment and copy of the app (the deployment-parity test).
    """
    port = free_port()
    env = {**os.environ, **settings, **extra}
    env.pop("DICOMWEB_PUBLIC_BASE_URL", None)
    log_path = data_dir / f"serve-{port}.log"
    SERVE_LOGS.append(log_path)
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [python, "-m", "dicomweb", "serve", "--port", str(port), "--data", str(data_dir),
         *(["--concurrency", str(concurrency)] if concurrency else [])],
        cwd=app_root, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(log_path.read_text())
        try:
            httpx.options(base + "/studies", timeout=1)
            return Server(base, env, process, log_path)
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


#: The patient identifiers of the suite's test data (``tests/wsi_factory.py`` and the tests that name their own):
#: names, IDs and birth dates, as text and as a URL would carry them.
PATIENT_IDENTIFIERS = [
    re.compile(r"(?i)doe(\^|%5e)jane|smith(\^|%5e)john|smithers|\bsmith\b|anna smithers|\bdoe\b"),
    re.compile(r"(?<![\w-])P-(1|A|B|C|sparse)(?![\w-])"),
    re.compile(r"(?<![\d.])19[78]00101(?!\.?\d)"),
]


def patient_identifiers_in(text: str) -> list[str]:
    """The test data's patient names, IDs and birth dates found in ``text``."""
    return [match.group() for pattern in PATIENT_IDENTIFIERS for match in pattern.finditer(text)]


class _Records(logging.Handler):
    """Keeps every record the service's loggers emit in the test process."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="session", autouse=True)
def no_patient_data_in_logs() -> Iterator[None]:
    """After the whole suite: no log line of any ``serve`` or of the service code in-process names a test patient."""
    records = _Records()
    service_log = logging.getLogger("dicomweb")
    service_log.addHandler(records)
    previous = service_log.level
    service_log.setLevel(logging.INFO)
    yield
    service_log.removeHandler(records)
    service_log.setLevel(previous)
    found = {}
    for path in SERVE_LOGS:
        if path.exists():
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if hits := patient_identifiers_in(line):
                    found.setdefault(f"{path.name}:{number}", (hits, line[:300]))
    for number, line in enumerate(records.lines, 1):
        if hits := patient_identifiers_in(line):
            found.setdefault(f"in-process record {number}", (hits, line[:300]))
    assert not found, f"patient identifiers in {len(found)} log lines, e.g. {list(found.items())[:5]}"


@pytest.fixture(scope="session")
def provider() -> Iterator["Provider"]:
    """A real OpenID Connect issuer on localhost (``tests/oidc.py``)."""
    from tests.oidc import Provider

    running = Provider()
    running.server.start()
    yield running
    running.server.stop()


@pytest.fixture(scope="session")
def secured(emulators: dict[str, str], provider: "Provider", tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Server]:
    """The service requiring tokens of ``provider`` (two audiences accepted)."""
    from tests.oidc import AUDIENCE

    running = start_server(fresh_settings(emulators), tmp_path_factory.mktemp("secured"),
                           DICOMWEB_AUTH_ISSUER=provider.issuer, DICOMWEB_AUTH_AUDIENCE=f"other,{AUDIENCE}")
    yield running
    running.stop()


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
    """The emulators' settings with containers, queues and a database of their own, provisioned (the service
    creates none of them, as in Azure)."""
    suffix = uuid.uuid4().hex[:8]
    settings = {**emulators, "DICOMWEB_INSTANCE_CONTAINER": f"inst-{suffix}",
                "DICOMWEB_SIDECAR_CONTAINER": f"side-{suffix}", "DICOMWEB_STAGING_CONTAINER": f"stage-{suffix}",
                "DICOMWEB_COSMOS_DATABASE": f"db-{suffix}", "DICOMWEB_JOBS_QUEUE": f"jobs-{suffix}",
                "DICOMWEB_BLOB_EVENTS_QUEUE": f"events-{suffix}", "DICOMWEB_INBOX_CONTAINER": f"inbox-{suffix}",
                "DICOMWEB_INBOX_QUEUE": f"inbox-{suffix}"}
    provision(settings)
    return settings


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


def interrupt_deletion(settings: dict[str, str], study: str, series: str, sop: str, at: str) -> None:
    """Run the DELETE of one instance in this process and have it die ``at`` "index" (the index stops answering
    once the claim says ``deleting``) or "file" (Blob fails to remove the file, after the index and the change
    feed were done): what a DELETE that answered 503 leaves, for the paths that must finish it."""
    from dicomweb import generations
    from dicomweb.config import Settings
    from dicomweb.errors import StorageFailure
    from dicomweb.service import Service
    from dicomweb.storage.naming import Location

    async def scenario() -> None:
        service = await Service.create(Settings.from_env(settings))

        async def unreachable(*args: object, **kwargs: object) -> None:
            raise StorageFailure(f"injected: the {at} is unreachable")

        try:
            doc = await service.index.find(study, "instance", sop)
            assert doc is not None
            location = Location(study, series, sop, doc["generation"])
            if at == "index":
                service.index.batch = unreachable  # type: ignore[method-assign]
            else:
                service.blobs.instances.delete = unreachable  # type: ignore[method-assign]
            with pytest.raises(StorageFailure, match="injected"):
                await generations.delete(service, location)
            claim = await service.claims.get(sop)
            assert claim is not None and claim["state"] == generations.DELETING
        finally:
            await service.close()

    asyncio.run(scenario())
