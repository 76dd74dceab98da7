"""Starts the local stand-ins for Azure: Azurite (Blob and Queue) and a Cosmos DB protocol server.

Both come from the committed ``package.json`` (pinned versions, ``npm ci``), each behind a
wrapper in this folder that enforces what Azure enforces and they do not: the Archive tier
and slow rehydration (``azurite_blob.js``), Cosmos DB's item size limit and, on request,
throttling (``cosmos_server.js``). The Blob wrapper also does what Azure's platform does
around Blob Storage: it keeps last access times and, as Event Grid, posts blob events to the
local queue service (a container subscribes with metadata ``dicomweb_events_queue=<queue>``).
Azurite keeps blobs and queue messages in a folder, so
data survives restarts; the Cosmos server keeps its data in memory only, which is why
``serve`` reindexes from Blob on start. After every start the emulators are provisioned
(:mod:`dicomweb.local.provision`), as the Bicep provisions Azure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from dicomweb.local.provision import provision
from dicomweb.storage.queues import add_only_sas

ROOT = Path(__file__).resolve().parents[2]
NODE_BIN = ROOT / "node_modules" / ".bin"

#: Azurite's fixed development account (public, documented by Microsoft).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
#: Any key works with the local Cosmos server; this is the emulator's well-known one.
COSMOS_KEY = "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on port {port} within {timeout} s")


@dataclass
class Emulators:
    """Azurite's blob and queue services and the Cosmos server as child processes; :meth:`stop` ends them."""

    data_dir: Path
    blob_port: int = 0
    queue_port: int = 0
    cosmos_port: int = 0
    #: Fraction of Cosmos document requests answered 429 with x-ms-retry-after-ms (0: never, as by default).
    cosmos_throttle: float = 0.0
    #: How long a rehydration from the Archive tier stays pending (Azure: up to 15 h at standard priority).
    rehydrate_seconds: float = 60.0
    #: Milliseconds every Blob request waits before Azurite takes it, as across a region's network (0: none).
    blob_latency_ms: float = 0.0
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    #: The setting overrides (resource names) provisioned so far: made again when the Cosmos server restarts empty.
    provisioned: list[dict[str, str]] = field(default_factory=list)

    def start(self) -> dict[str, str]:
        """Start the servers; return the settings that point the service at them."""
        if shutil.which("node") is None or not (NODE_BIN / "azurite-blob").exists():
            raise RuntimeError("Node.js and the npm packages are needed: run `npm ci` in the repository root")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.blob_port = self.blob_port or free_port()
        self.queue_port = self.queue_port or free_port()
        self.cosmos_port = self.cosmos_port or free_port()
        try:
            for name in ("azurite", "queue", "cosmos"):
                self.restart(name)
            self.provision()
        except BaseException:
            self.stop()
            raise
        return self.settings()

    def provision(self, names: Mapping[str, str] | None = None) -> None:
        """Create the containers, queues, database and index container the service's settings name: those of
        this process's environment with ``names`` (e.g. ``DICOMWEB_COSMOS_DATABASE``) over them."""
        overrides = dict(names or {})
        if overrides not in self.provisioned:
            self.provisioned.append(overrides)
        provision({**os.environ, **self.settings(), **overrides})

    def restart(self, name: str) -> None:
        """(Re)start one server ("azurite" for Blob, "queue", or "cosmos") on its port, and wait until it listens.

        Azurite keeps its data in the data folder, so a restarted one has everything; the
        Cosmos server starts empty, so its databases and containers are provisioned again.
        """
        log = open(self.data_dir / "emulators.log", "ab")
        if name == "azurite":
            command = [str(shutil.which("node")), str(Path(__file__).with_name("azurite_blob.js")),
                       "--rehydrateSeconds", str(self.rehydrate_seconds), "--latencyMs", str(self.blob_latency_ms),
                       "--blobHost", "127.0.0.1", "--blobPort", str(self.blob_port),
                       "--location", str(self.data_dir / "azurite"), "--skipApiVersionCheck", "--loose", "--silent",
                       "--disableTelemetry"]
            if self.queue_port:  # blob events go to the queue service (Event Grid's part in Azure)
                command += ["--eventsEndpoint", f"http://127.0.0.1:{self.queue_port}/{AZURITE_ACCOUNT}",
                            "--eventsSas", add_only_sas(AZURITE_ACCOUNT, AZURITE_KEY)]
            port = self.blob_port
        elif name == "queue":
            command = [str(NODE_BIN / "azurite-queue"), "--queueHost", "127.0.0.1", "--queuePort", str(self.queue_port),
                       "--location", str(self.data_dir / "azurite"), "--skipApiVersionCheck", "--loose", "--silent",
                       "--disableTelemetry"]
            port = self.queue_port
        else:
            command = [str(shutil.which("node")), str(Path(__file__).with_name("cosmos_server.js")),
                       str(self.cosmos_port), "--throttle", str(self.cosmos_throttle)]
            port = self.cosmos_port
        process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True, cwd=ROOT)
        self.processes[name] = process
        _wait_for_port(port, process, name)
        if name == "cosmos":
            for overrides in self.provisioned:
                provision({**os.environ, **self.settings(), **overrides}, index_only=True)

    def cosmos_requests(self) -> int:
        """How many document requests (reads, writes, queries, batches) the Cosmos server has answered."""
        log = self.data_dir / "emulators.log"
        seen = log.read_text(errors="replace").count("document requests: ")
        os.killpg(self.processes["cosmos"].pid, signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while (text := log.read_text(errors="replace")).count("document requests: ") == seen:
            if time.monotonic() > deadline:
                raise RuntimeError("the Cosmos server did not tell its request count")
            time.sleep(0.02)
        return int(text.rsplit("document requests: ", 1)[1].split()[0])

    def settings(self) -> dict[str, str]:
        """Environment settings for the running servers."""
        return {
            "DICOMWEB_STORAGE_CONNECTION_STRING": (
                f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint=http://127.0.0.1:{self.blob_port}/{AZURITE_ACCOUNT};"
            ),
            "DICOMWEB_QUEUES": (
                f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"QueueEndpoint=http://127.0.0.1:{self.queue_port}/{AZURITE_ACCOUNT};"
            ),
            "DICOMWEB_COSMOS_CONNECTION_STRING": f"AccountEndpoint=https://127.0.0.1:{self.cosmos_port}/;AccountKey={COSMOS_KEY};",
        }

    def stop(self) -> None:
        """Terminate what :meth:`start` started (resuming a paused server first, so that it can exit)."""
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGCONT)
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        self.processes.clear()
