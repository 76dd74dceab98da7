"""The data folder of ``dicomweb serve``: held by one process at a time, and found by the other commands.

Two ``serve`` processes on one folder would start two Azurites on one database file
and split the store. The first one holds an exclusive lock on ``serve.lock`` (released
by the kernel however the process ends, so a crash leaves no stale lock) and writes its
PID and the settings of the emulators it started into it; ``check`` and ``reindex`` run
in the same folder without settings read them to reach that local stack.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import IO

LOCK_NAME = "serve.lock"


class DataDirInUse(RuntimeError):
    """Another ``dicomweb serve`` holds the data folder."""


class DataDir:
    """The lock of one data folder, held from :meth:`acquire` until :meth:`release` or the process ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the folder, or raise :class:`DataDirInUse` naming the PID that holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / LOCK_NAME, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _parse(handle.read()).get("pid", "unknown")
            handle.close()
            raise DataDirInUse(f"another `dicomweb serve` (PID {holder}) is using the data folder {self.path}; "
                               "stop it, or pass another --data folder") from None
        self._file = handle
        self.publish({})

    def publish(self, settings: dict[str, str]) -> None:
        """Record this process and the settings of the emulators it started."""
        assert self._file is not None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(json.dumps({"pid": os.getpid(), "settings": settings}))
        self._file.flush()

    def release(self) -> None:
        """Give the folder up."""
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            self._file.close()
            self._file = None


def running_settings(path: Path) -> dict[str, str]:
    """The emulator settings of the ``serve`` that holds ``path`` right now ({} when none does)."""
    try:
        handle = open(path / LOCK_NAME)
    except FileNotFoundError:
        return {}
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return dict(_parse(handle.read()).get("settings", {}))
        fcntl.flock(handle, fcntl.LOCK_UN)
        return {}


def _parse(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
