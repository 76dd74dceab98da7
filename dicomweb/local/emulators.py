"""Starts the local stand-ins for Azure: Azurite (Blob and Queue) and a Cosmos DB protocol server.

Both come from the committed ``package.json`` (pinned versions, ``npm ci``). Azurite
keeps blobs and queue messages in a folder, so data survives restarts; the Cosmos server keeps its data
in memory only, which is why ``serve`` reindexes from Blob on start.
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
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

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
        except RuntimeError:
            self.stop()
            raise
        return self.settings()

    def restart(self, name: str) -> None:
        """(Re)start one server ("azurite" for Blob, "queue", or "cosmos") on its port, and wait until it listens.

        Azurite keeps its data in the data folder, so a restarted one has everything; the
        Cosmos server starts empty.
        """
        log = open(self.data_dir / "emulators.log", "ab")
        if name == "azurite":
            command = [str(NODE_BIN / "azurite-blob"), "--blobHost", "127.0.0.1", "--blobPort", str(self.blob_port),
                       "--location", str(self.data_dir / "azurite"), "--skipApiVersionCheck", "--loose", "--silent",
                       "--disableTelemetry"]
            port = self.blob_port
        elif name == "queue":
            command = [str(NODE_BIN / "azurite-queue"), "--queueHost", "127.0.0.1", "--queuePort", str(self.queue_port),
                       "--location", str(self.data_dir / "azurite"), "--skipApiVersionCheck", "--loose", "--silent",
                       "--disableTelemetry"]
            port = self.queue_port
        else:
            command = [str(shutil.which("node")), str(Path(__file__).with_name("cosmos_server.js")),
                       str(self.cosmos_port)]
            port = self.cosmos_port
        process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True, cwd=ROOT)
        self.processes[name] = process
        _wait_for_port(port, process, name)

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
