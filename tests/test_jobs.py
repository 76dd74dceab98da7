"""Background jobs (``dicomweb/jobs.py``): nothing outlives an HTTP function, every job has one handler."""

from __future__ import annotations

import ast
import asyncio
import json
from pathlib import Path

import httpx
import pytest

import function_app
from dicomweb import jobs
from dicomweb.api.local_host import build_app
from dicomweb.service import reset_service
from tests.conftest import ROOT, fresh_settings
from tests.wsi_factory import make_slide

#: Where the package may start a task or a thread, and why each one ends before its caller returns.
STARTS_WORK = {
    ("dicomweb/storage/transfer.py", "_stage"): "a block upload's blocks: commit gathers them, abort cancels them",
    ("dicomweb/storage/staging.py", "read"): "ranged reads ahead: the generator cancels and gathers them in finally",
    ("dicomweb/api/local_host.py", "_deliver"): "the local host: renews a delivery's hold while it runs",
    ("dicomweb/api/local_host.py", "_listen"): "the local host: a delivery per received message",
    ("dicomweb/api/local_host.py", "lifespan"): "the local host: timers and queue listeners",
    ("dicomweb/usage.py", "_ahead"): "a listing's next pages: the generator cancels and awaits its task in finally",
    ("dicomweb/usage.py", "aggregate"): "the listings merged at once: gathered, the other cancelled if one fails",
    ("dicomweb/cli.py", "_lifecycle_every"): "serve --lifecycle-hours: the local stand-in for Azure's daily run, "
                                             "stopped with serve",
    ("dicomweb/inbox.py", "_convert_and_store"): "the inbox's conversion (CPU-bound) and the removal of its work "
                                                 "folder, each in a thread the queue function awaits",
    ("dicomweb/inbox.py", "_store"): "reading a converted instance's UIDs and frame offset record from disk, awaited",
    ("dicomweb/convert.py", "start"): "a progress bar's sampler (command line only): close stops and joins it",
}
#: Tasks the local host itself runs (the platform's part), by coroutine name.
HOST_TASKS = {"_every", "_listen", "_deliver", "keep_holding"}


class _Starts(ast.NodeVisitor):
    """Calls that start a task or a thread, by the innermost function they are in."""

    CALLS = ("create_task", "ensure_future", "to_thread", "Thread", "start_new_thread")

    def __init__(self, path: str) -> None:
        self.path, self.stack, self.found = path, [""], set()

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Attribute) and node.func.attr in self.CALLS:
            self.found.add((self.path, self.stack[-1]))
        self.generic_visit(node)


def _starts(path: Path) -> set[tuple[str, str]]:
    visitor = _Starts(str(path.relative_to(ROOT)))
    visitor.visit(ast.parse(path.read_text()))
    return visitor.found


def test_only_known_places_start_tasks_or_threads() -> None:
    found: set[tuple[str, str]] = set()
    for path in (ROOT / "dicomweb").rglob("*.py"):
        if path.name != "uploader.py":  # the upload CLI is a client, not the service
            found |= _starts(path)
    assert found == set(STARTS_WORK)


def test_every_job_kind_has_a_handler_and_the_deliveries_match_host_json() -> None:
    assert {"upload-ingest", "upload-expire", "settle-generation", "rescan", "reindex"} <= set(jobs._handlers)
    host = json.loads((ROOT / "host.json").read_text())
    assert host["extensions"]["queues"]["maxDequeueCount"] == jobs.MAX_DELIVERIES


def test_nothing_runs_after_an_http_function_answered(emulators: dict[str, str], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The app in this process: after STOW-RS and an upload commit have answered, every task alive is the
    host's (its queue listener ran the ingest job); none was left behind by a request."""
    for name, value in {**fresh_settings(emulators), "DICOMWEB_AUTH_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    small, large = make_slide(tmp_path, levels=2, associated=False, base_size=(1024, 1024))[:2]

    def strays() -> list[str]:
        names = [task.get_coro().__qualname__ for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        return [name for name in names if name.split(".")[-1] not in HOST_TASKS]

    async def scenario() -> None:
        app = build_app(function_app.app, 16)
        async with app.app.router.lifespan_context(app.app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://local/v1",
                                         timeout=60) as client:
                stored = await client.post("/studies", content=small.path.read_bytes(),
                                           headers={"content-type": "application/dicom"})
                assert stored.status_code == 200, stored.text
                assert strays() == []
                data = large.path.read_bytes()
                session = (await client.post("/uploads", json={"size": len(data)})).json()
                async with httpx.AsyncClient() as blob:
                    for block in session["blocks"]:
                        put = await blob.put(f"{session['uploadUrl']}&comp=block&blockid={block['id']}",
                                             content=data[block["offset"] : block["offset"] + block["length"]])
                        assert put.status_code == 201
                committed = await client.post(session["commitUrl"].replace("http://local/v1", ""))
                assert committed.status_code == 200, committed.text
                assert strays() == []
        await reset_service()

    asyncio.run(scenario())
