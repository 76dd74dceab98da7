"""The change feed under concurrent writers and after writers that died half way, against a real service."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from azure.cosmos import CosmosClient

from tests.conftest import Server, fresh_settings, start_server
from tests.wsi_factory import SlideFile, copy_instance, make_slide

DICOM = {"content-type": "application/dicom"}


def _store(server: Server, instance: SlideFile, method: str = "POST") -> int:
    """The status of storing one instance."""
    return httpx.request(method, f"{server.base_url}/studies", content=instance.path.read_bytes(), headers=DICOM,
                         timeout=60).status_code


GAP_SECONDS = 2


@pytest.fixture(scope="module")
def feed_server(emulators: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A service with a change feed of its own that skips a dead writer's number after two seconds."""
    server = start_server(fresh_settings(emulators), tmp_path_factory.mktemp("feed"),
                          DICOMWEB_CHANGEFEED_GAP_SECONDS=str(GAP_SECONDS))
    yield server
    server.stop()


def _page(server: Server, after: int, limit: int = 10) -> list[dict]:
    response = httpx.get(f"{server.base_url}/changefeed", params={"offset": after, "limit": limit,
                                                                  "includeMetadata": "false"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _latest(server: Server) -> int:
    return httpx.get(f"{server.base_url}/changefeed/latest").json().get("Sequence", 0)


def _index(server: Server):  # noqa: ANN202 - the Cosmos container behind the service
    client = CosmosClient.from_connection_string(server.env["DICOMWEB_COSMOS_CONNECTION_STRING"])
    return client.get_database_client(server.env["DICOMWEB_COSMOS_DATABASE"]).get_container_client("index")


def _take_sequence(server: Server) -> int:
    """What a writer does first, and all a writer that dies at once leaves behind."""
    counter = _index(server).patch_item("counter:sequence", "changefeed",
                                        [{"op": "incr", "path": "/value", "value": 1}])
    return int(counter["value"])


def test_a_consumer_paging_during_32_concurrent_writers_gets_every_entry_once_in_order(feed_server: Server,
                                                                                     tmp_path: Path) -> None:
    source = make_slide(tmp_path / "source", levels=1, base_size=(256, 256), associated=False)[0]
    copies = [copy_instance(source, tmp_path / f"{n}.dcm") for n in range(96)]
    start = _latest(feed_server)
    seen: list[dict] = []
    writing = threading.Event()
    writing.set()

    def consume() -> None:
        after = start
        while True:
            still_writing = writing.is_set()
            page = _page(feed_server, after)
            seen.extend(page)
            if page:
                after = page[-1]["Sequence"]
            elif not still_writing:
                return

    async def write() -> list[int]:
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=32)) as client:
            slots = asyncio.Semaphore(32)

            async def one(path: Path) -> int:
                async with slots:
                    return (await client.post(f"{feed_server.base_url}/studies", content=path.read_bytes(),
                                              headers=DICOM)).status_code

            return list(await asyncio.gather(*(one(c.path) for c in copies)))

    consumer = threading.Thread(target=consume)
    consumer.start()
    try:
        statuses = asyncio.run(write())
    finally:
        writing.clear()
        consumer.join(60)
    assert statuses == [200] * len(copies)
    sequences = [e["Sequence"] for e in seen]
    assert sequences == sorted(set(sequences)), "in order, each once"
    assert sorted(e["SopInstanceUid"] for e in seen) == sorted(c.sop_uid for c in copies), "none missed"
    assert sequences == [e["Sequence"] for e in _page(feed_server, start, 200)], "what a late reader sees too"


def test_a_writer_that_died_never_makes_a_consumer_skip_a_change(feed_server: Server, tmp_path: Path) -> None:
    source = make_slide(tmp_path / "source", levels=1, base_size=(256, 256), associated=False)[0]
    replaced, later = copy_instance(source, tmp_path / "x.dcm"), copy_instance(source, tmp_path / "y.dcm")
    assert _store(feed_server, replaced) == 200
    start = _latest(feed_server)
    died_at_once = _take_sequence(feed_server)
    # A replacement that switched the instance's claim to its change, then died before writing the entry.
    died_after_switch = _take_sequence(feed_server)
    _index(feed_server).patch_item(f"claim:{replaced.sop_uid}", f"claim:{replaced.sop_uid}", [
        {"op": "set", "path": "/sequence", "value": died_after_switch},
        {"op": "set", "path": "/action", "value": "update"}])
    assert _store(feed_server, later) == 200
    assert died_at_once == start + 1 and died_after_switch == start + 2
    assert _page(feed_server, start) == [], "nothing beyond a hole a live writer may still fill"
    assert _latest(feed_server) == start, "nor does /latest lead a consumer past it"
    time.sleep(GAP_SECONDS + 0.5)
    entries = _page(feed_server, start)
    assert [(e["Sequence"], e["SopInstanceUid"], e["Action"]) for e in entries] == [
        (died_after_switch, replaced.sop_uid, "update"), (died_after_switch + 1, later.sop_uid, "create")]
    assert entries[0]["State"] == "current"
    assert _latest(feed_server) == died_after_switch + 1
    assert _page(feed_server, died_at_once - 1) == entries, "the skipped number is never shown"


def test_a_change_whose_writer_lost_its_number_to_a_skip_is_recorded_later(feed_server: Server,
                                                                            tmp_path: Path) -> None:
    source = make_slide(tmp_path / "source", levels=1, base_size=(256, 256), associated=False)[0]
    start = _latest(feed_server)
    stolen = start + 1
    # A reader gave up on number ``stolen`` (as if its writer stalled longer than the gap) before the write came.
    _index(feed_server).create_item({"id": f"change:{stolen:016d}", "type": "change", "studyInstanceUID": "changefeed",
                                     "sequence": stolen, "timestamp": "2000-01-01T00:00:00+00:00", "action": "skip",
                                     "study": "", "series": "", "sop": "", "generation": "", "m": {}, "w": {}})
    _index(feed_server).patch_item("counter:sequence", "changefeed", [{"op": "set", "path": "/value", "value": start}])
    late = copy_instance(source, tmp_path / "late.dcm")
    assert _store(feed_server, late) == 200
    (entry,) = _page(feed_server, start)
    assert (entry["SopInstanceUid"], entry["Action"]) == (late.sop_uid, "create") and entry["Sequence"] > stolen
