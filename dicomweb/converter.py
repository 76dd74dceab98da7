"""The converter's process: scanner files converted (:func:`dicomweb.convert.convert_parts`) apart from a caller with an
event loop to keep answering, ``dicomweb upload`` and the inbox's worker.

A conversion keeps a core busy for seconds, most of it in Python: in the caller's process it
would hold the interpreter's lock against the caller's event loop (the uploads its parts feed,
the requests a worker answers). Apart, the operating system runs both at once, the conversion
at a lower priority (:data:`NICENESS`). The process imports the converter as soon as it starts
(a second of CPU, while the caller does its own starting), and serves every file of a run. A
file left halfway ends the process (the next file starts another), and its death is a failure,
not a hang.

This module imports nothing heavy, so that a caller can start the process before its own
imports (``dicomweb upload`` does, for a scanner file named on the command line).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from dicomweb.errors import InvalidDataset

if TYPE_CHECKING:
    from dicomweb.convert import SlideMetadata

#: How much lower the converter's process runs than its caller (``nice``): the conversion only has to keep ahead of
#: the uploads it feeds (it writes a level several times faster than it travels), and a worker's event loop answering
#: requests comes first. On two cores shared with the storage emulator, it took ``dicomweb upload slide.svs`` of 1 GB
#: from 8.4-9.9 s to 6.9-7.9 s.
NICENESS = 10


class Converter:
    """A process of its own that converts scanner files one at a time."""

    def __init__(self, progress: bool | None = False) -> None:
        self._progress = progress
        self._process: Any = None
        self._connection: Connection | None = None

    def start(self) -> Converter:
        """Start the process now, so that it is ready when the first file comes (again, if it died meanwhile)."""
        if self._process is not None and not self._process.is_alive():
            self.close()
        if self._process is None:
            context = multiprocessing.get_context("spawn")  # no fork of a process with threads and an event loop
            self._connection, theirs = context.Pipe()
            self._process = context.Process(target=_serve, args=(theirs, self._progress), name="dicomweb-convert",
                                            daemon=True)
            self._process.start()
            theirs.close()
        return self

    def close(self) -> None:
        """End the process (it finishes nothing: call between files)."""
        if self._process is not None:
            assert self._connection is not None
            with contextlib.suppress(OSError):
                self._connection.send(None)
            self._connection.close()
            self._process.join(5)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join()
            self._process = self._connection = None

    def __enter__(self) -> Converter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def parts(self, source: Path, work: Path, metadata: SlideMetadata | None = None, *, name: str | None = None,
              check: bool = True, starting: Callable[[Path], None] | None = None) -> Iterator[list[Path]]:
        """:func:`dicomweb.convert.convert_parts` of ``source`` in the process: the same parts in the same order,
        ``starting`` called alike, a file refused with :class:`~dicomweb.errors.InvalidDataset` and the same
        reason."""
        self.start()
        process, connection = self._process, self._connection
        assert connection is not None
        ended = False
        try:
            try:
                connection.send((source, work, metadata, name, check))
            except OSError:
                raise RuntimeError("the converter's process is gone") from None
            while True:
                try:
                    while not connection.poll(0.5) and process.is_alive():
                        pass
                    kind, value = connection.recv()
                except (EOFError, OSError):
                    process.join(5)
                    raise RuntimeError(f"the converter's process ended with exit code {process.exitcode}") from None
                if kind == "start":
                    if starting is not None:
                        starting(Path(value))
                    continue
                ended = kind != "part"
                if kind == "part":
                    yield [Path(path) for path in value]
                elif kind == "refused":
                    raise InvalidDataset(value)
                elif kind == "failed":
                    raise RuntimeError(value)
                else:
                    return
        finally:
            if not ended:  # left halfway (or the process died): the process goes with the file
                process.terminate()
                self.close()


def _serve(connection: Connection, progress: bool | None) -> None:
    """The converter's process: import the converter at once, then convert each file sent, telling each event of
    :func:`~dicomweb.convert.convert_parts` as it happens; ``None`` (or the caller gone) ends it."""
    os.nice(NICENESS)
    from wsidicomizer import WsiDicomizer  # noqa: F401 - imported while the caller starts

    from dicomweb import convert

    while True:
        try:
            job = connection.recv()
        except EOFError:
            return
        if job is None:
            return
        source, work, metadata, name, check = job
        bar = convert.Progress(name or source.name, source.stat().st_size, progress, position=1) \
            if progress is not False else None
        written = 0
        try:
            for part in convert.convert_parts(source, work, metadata or convert.SlideMetadata(), progress=bar,
                                              name=name, check=check,
                                              starting=lambda folder: connection.send(("start", str(folder)))):
                written += sum(path.stat().st_size for path in part)
                connection.send(("part", [str(path) for path in part]))
            if bar is not None:
                bar.close(written)
            connection.send(("done", None))
        except InvalidDataset as refused:
            connection.send(("refused", refused.message))
        except Exception as exc:  # noqa: BLE001 - told to the caller, which decides
            connection.send(("failed", convert.failure_reason(exc)))
        finally:
            if bar is not None:
                bar.close()
