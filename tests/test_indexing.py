"""Index writes under concurrency, against two real ``serve`` workers sharing one Azurite and one Cosmos server.

Every test here drives many real HTTP clients at once and then checks what a user sees:
counts, frames, blobs, and the change feed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from dicomweb import records
from dicomweb.config import Settings
from dicomweb.dicom.part10 import Part10Parser
from dicomweb.errors import StorageFailure
from dicomweb.indexing import ABANDON, abandon, member_key, publish
from dicomweb.jobs import run
from dicomweb.service import Service
from dicomweb.storage.naming import Location, new_generation
from dicomweb.storage.clients import queue_consumer
from tests.conftest import ROOT, Server, blob_names, fresh_settings, instance_blob, source_frames, start_server
from tests.wsi_factory import SlideFile, copy_instance, make_slide

DICOM = {"content-type": "application/dicom"}


def _store(server: Server, instance: SlideFile, method: str = "POST") -> int:
    """The status of storing one instance."""
    return httpx.request(method, f"{server.base_url}/studies", content=instance.path.read_bytes(), headers=DICOM,
                         timeout=60).status_code


@pytest.fixture(scope="module")
def workers(emulators: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    """Two service processes behind one index and one storage account, as two Functions workers are."""
    settings = fresh_settings(emulators)
    directory = tmp_path_factory.mktemp("workers")
    servers = [start_server(settings, directory) for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


async def _send_all(requests: list[tuple[str, str, bytes]]) -> list[httpx.Response]:
    """Send every (method, url, body) at once, each on a connection of its own."""
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        return list(await asyncio.gather(*(client.request(method, url, content=body, headers=DICOM)
                                           for method, url, body in requests)))


def _reasons(response: httpx.Response) -> list[int]:
    return [item["00081197"]["Value"][0] for item in response.json().get("00081198", {}).get("Value", [])]


def _one(server: Server, path: str) -> dict:
    (found,) = httpx.get(f"{server.base_url}/{path}", timeout=30).json()
    return found


def _feed(server: Server, after: int = 0) -> list[dict]:
    entries: list[dict] = []
    while page := httpx.get(f"{server.base_url}/changefeed", params={"offset": after, "limit": 200,
                                                                      "includeMetadata": "false"}).json():
        entries += page
        after = page[-1]["Sequence"]
    return entries


def _latest(server: Server) -> int:
    return httpx.get(f"{server.base_url}/changefeed/latest").json().get("Sequence", 0)


def test_64_concurrent_stows_into_one_series_all_succeed_with_exact_counts(workers: list[Server],
                                                                          tmp_path: Path) -> None:
    source = make_slide(tmp_path / "source", levels=1, base_size=(256, 256), associated=False)[0]
    copies = [copy_instance(source, tmp_path / f"{n}.dcm") for n in range(64)]
    before = _latest(workers[0])
    responses = asyncio.run(_send_all([("POST", f"{workers[n % 2].base_url}/studies", copy.path.read_bytes())
                                       for n, copy in enumerate(copies)]))
    assert [r.status_code for r in responses] == [200] * 64, [r.text for r in responses if r.status_code != 200]
    for server in workers:
        study = _one(server, f"studies?StudyInstanceUID={source.study_uid}")
        assert study["00201208"]["Value"] == [64] and study["00201206"]["Value"] == [1]
        assert study["00080061"]["Value"] == ["SM"]
        series = _one(server, f"studies/{source.study_uid}/series?SeriesInstanceUID={source.series_uid}")
        assert series["00201209"]["Value"] == [64]
    found = httpx.get(f"{workers[1].base_url}/studies/{source.study_uid}/instances?limit=100").json()
    assert len(found) == 64
    feed = _feed(workers[0], before)
    assert sorted(e["SopInstanceUid"] for e in feed) == sorted(c.sop_uid for c in copies)
    assert {e["Action"] for e in feed} == {"create"}


def test_8_concurrent_puts_of_one_instance_leave_the_last_writer(workers: list[Server], tmp_path: Path) -> None:
    source = make_slide(tmp_path / "source", levels=1, base_size=(512, 512), associated=False)[0]
    original = copy_instance(source, tmp_path / "original.dcm")
    base = (f"{workers[0].base_url}/studies/{original.study_uid}/series/{original.series_uid}"
            f"/instances/{original.sop_uid}")
    assert _store(workers[0], original) == 200
    before = _latest(workers[0])
    variants = [copy_instance(original, tmp_path / f"v{n}.dcm", sop_uid=original.sop_uid, variant=n) for n in range(8)]
    responses = asyncio.run(_send_all([("PUT", f"{workers[n % 2].base_url}/studies", v.path.read_bytes())
                                       for n, v in enumerate(variants)]))
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
    served = [httpx.get(f"{base}/frames/{n}", headers={"accept": "image/jpeg"}).content
              for n in range(1, original.number_of_frames + 1)]
    winners = [v for v in variants if source_frames(v.path) == served]
    assert len(winners) == 1, "every frame comes from one and the same replacement"
    (metadata,) = httpx.get(f"{base}/metadata").json()
    assert metadata["00400512"]["Value"] == [f"VARIANT-{variants.index(winners[0])}"]
    name = instance_blob(workers[0].env, original.study_uid, original.series_uid, original.sop_uid)
    sidecars = blob_names(workers[0].env, workers[0].env["DICOMWEB_SIDECAR_CONTAINER"],
                          f"{original.study_uid}/{original.series_uid}/{original.sop_uid}/")
    assert sorted(sidecars) == [name.replace(".dcm", ".frames"), name.replace(".dcm", ".json")], "no stray sidecar"
    feed = [e for e in httpx.get(f"{workers[1].base_url}/changefeed", params={"offset": before}).json()
            if e["SopInstanceUid"] == original.sop_uid]
    assert [e["Action"] for e in feed] == ["update"] * 8
    assert [e["State"] for e in feed] == ["replaced"] * 7 + ["current"], "the last update in the feed is the winner"
    assert feed[-1]["Metadata"]["00400512"]["Value"] == metadata["00400512"]["Value"]
    series = _one(workers[1], f"studies/{original.study_uid}/series?SeriesInstanceUID={original.series_uid}")
    assert series["00201209"]["Value"] == [1]


def test_put_into_another_series_or_study_moves_the_instance(workers: list[Server], tmp_path: Path) -> None:
    server = workers[0]
    source = make_slide(tmp_path / "source", levels=1, base_size=(256, 256), associated=False)[0]
    moving, staying = copy_instance(source, tmp_path / "a.dcm"), copy_instance(source, tmp_path / "b.dcm")
    for instance in (moving, staying):
        assert _store(server, instance) == 200
    old_name = instance_blob(server.env, moving.study_uid, moving.series_uid, moving.sop_uid)
    moved = copy_instance(moving, tmp_path / "moved.dcm", sop_uid=moving.sop_uid, series_uid="1.2.826.0.1.3680043.99.1")
    assert _store(server, moved, "PUT") == 200
    study = f"studies/{source.study_uid}"
    assert _one(server, f"{study}/series?SeriesInstanceUID={source.series_uid}")["00201209"]["Value"] == [1]
    assert _one(server, f"{study}/series?SeriesInstanceUID={moved.series_uid}")["00201209"]["Value"] == [1]
    assert _one(server, f"studies?StudyInstanceUID={source.study_uid}")["00201206"]["Value"] == [2]
    assert blob_names(server.env, server.env["DICOMWEB_INSTANCE_CONTAINER"], old_name.rsplit("/", 1)[0]) == []
    gone = httpx.get(f"{server.base_url}/{study}/series/{source.series_uid}/instances/{moving.sop_uid}/metadata")
    assert gone.status_code == 404
    elsewhere = copy_instance(moved, tmp_path / "elsewhere.dcm", sop_uid=moving.sop_uid,
                              study_uid="1.2.826.0.1.3680043.99.2", series_uid="1.2.826.0.1.3680043.99.3")
    assert _store(server, elsewhere, "PUT") == 200
    assert _one(server, f"studies?StudyInstanceUID={source.study_uid}")["00201208"]["Value"] == [1]
    assert _one(server, f"studies?StudyInstanceUID={elsewhere.study_uid}")["00201208"]["Value"] == [1]
    assert httpx.get(f"{server.base_url}/{study}/series?SeriesInstanceUID={moved.series_uid}").json() == []
    done = subprocess.run([sys.executable, "-m", "dicomweb", "reindex"], cwd=ROOT, env=server.env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert instance_blob(server.env, elsewhere.study_uid, elsewhere.series_uid, moving.sop_uid)
    for series in (source.series_uid, moved.series_uid):
        assert blob_names(server.env, server.env["DICOMWEB_INSTANCE_CONTAINER"],
                          f"{source.study_uid}/{series}/{moving.sop_uid}/") == [], "reindex keeps the old copies gone"
    assert _one(server, f"studies?StudyInstanceUID={source.study_uid}")["00201208"]["Value"] == [1]
    frame = httpx.get(f"{server.base_url}/studies/{elsewhere.study_uid}/series/{elsewhere.series_uid}/instances/"
                      f"{moving.sop_uid}/frames/1", headers={"accept": "image/jpeg"})
    assert frame.content == source_frames(elsewhere.path)[0]


def test_post_of_a_stored_sop_instance_into_another_study_is_refused(workers: list[Server], tmp_path: Path) -> None:
    server = workers[1]
    stored = copy_instance(make_slide(tmp_path / "s", levels=1, base_size=(256, 256), associated=False)[0],
                           tmp_path / "stored.dcm")
    assert _store(server, stored) == 200
    before = _latest(server)
    other = copy_instance(stored, tmp_path / "other.dcm", sop_uid=stored.sop_uid, study_uid="1.2.826.0.1.3680043.99.4",
                          series_uid="1.2.826.0.1.3680043.99.5")
    for target in ("studies", f"studies/{other.study_uid}"):
        refused = httpx.post(f"{server.base_url}/{target}", content=other.path.read_bytes(), headers=DICOM)
        assert refused.status_code == 409 and _reasons(refused) == [45070]
        assert f"already stored in study {stored.study_uid}" in refused.headers["warning"]
    assert blob_names(server.env, server.env["DICOMWEB_INSTANCE_CONTAINER"], other.study_uid) == []
    assert blob_names(server.env, server.env["DICOMWEB_SIDECAR_CONTAINER"], other.study_uid) == []
    assert httpx.get(f"{server.base_url}/studies?StudyInstanceUID={other.study_uid}").json() == []
    assert _one(server, f"studies?StudyInstanceUID={stored.study_uid}")["00201208"]["Value"] == [1]
    assert _latest(server) == before, "a refused store records no change"


def test_a_resumed_publish_counts_what_the_first_attempt_did_not(emulators: dict[str, str], tmp_path: Path) -> None:
    """An upload whose ingest met a storage failure after its series was counted, but before its study was,
    is committed again: the resumed attempt counts the study once, and the series not twice."""
    (file,) = make_slide(tmp_path, levels=1, base_size=(256, 256), associated=False)
    settings = Settings.from_env(fresh_settings(emulators))

    async def scenario() -> None:
        service = await Service.create(settings)
        try:
            parser = Part10Parser(settings.limits)
            parser.feed(file.path.read_bytes())
            parser.close()
            assert parser.header is not None
            sidecar = records.make_sidecars(parser, records.describe(parser.header), new_generation()).sidecar
            assert await publish(service, sidecar, replace=False)
            study = file.study_uid
            key = member_key(file.sop_uid)
            # What the failed attempt left: the study summary never counted the instance.
            await service.index.patch(study, f"study:{study}", [
                {"op": "incr", "path": "/numberOfInstances", "value": -1},
                {"op": "incr", "path": "/numberOfSeries", "value": -1},
                {"op": "remove", "path": f"/members/{key}"}])
            assert await publish(service, sidecar, replace=False)  # the same generation: a resumed attempt
            series_doc = await service.index.find(study, "series", file.series_uid)
            study_doc = await service.index.find(study, "study", study)
            assert series_doc is not None and study_doc is not None
            assert (series_doc["numberOfInstances"], list(series_doc["members"])) == (1, [key])
            assert (study_doc["numberOfInstances"], study_doc["numberOfSeries"], list(study_doc["members"])) == (
                1, 1, [key])
        finally:
            await service.close()

    asyncio.run(scenario())


def test_a_failed_store_whose_cleanup_cannot_reach_the_index_leaves_it_to_a_job(emulators: dict[str, str],
                                                                                 tmp_path: Path) -> None:
    """A store that failed while the index was away cannot tell at once whether its generation is named: a
    job removes the orphan once the index answers again, and never a generation the index names."""
    (file,) = make_slide(tmp_path, levels=1, base_size=(256, 256), associated=False)
    settings = Settings.from_env(fresh_settings(emulators))

    async def scenario() -> None:
        service = await Service.create(settings)
        try:
            orphan, named = (Location(file.study_uid, file.series_uid, file.sop_uid, new_generation())
                             for _ in range(2))
            for location in (orphan, named):
                upload = service.blobs.instances.upload(location, 1 << 20, 1)
                await upload.write(file.path.read_bytes())
                await upload.commit({})
            parser = Part10Parser(settings.limits)
            parser.feed(file.path.read_bytes())
            parser.close()
            assert parser.header is not None
            sidecar = records.make_sidecars(parser, records.describe(parser.header), named.generation).sidecar
            assert await publish(service, sidecar, replace=False)
            reachable = service.index.claim

            async def away(sop: str) -> None:
                raise StorageFailure("the index is paused")

            service.index.claim = away  # type: ignore[method-assign]
            for location in (orphan, named):
                await abandon(service, location)
            service.index.claim = reachable  # type: ignore[method-assign]
            assert await service.blobs.instances.exists(orphan), "nothing could be decided while the index was away"
            consumer = queue_consumer(settings, settings.jobs_queue)
            deliveries = []
            for _ in range(40):
                deliveries += await consumer.receive(32, 30)
                if len(deliveries) == 2:
                    break
                await asyncio.sleep(0.25)
            assert [jobs_.get("kind") for jobs_ in (json.loads(d.content) for d in deliveries)] == [ABANDON] * 2
            for delivery in deliveries:
                await run(service, json.loads(delivery.content), 1)
                await consumer.complete(delivery)
            await consumer.close()
            assert not await service.blobs.instances.exists(orphan)
            assert await service.blobs.instances.exists(named)
        finally:
            await service.close()

    asyncio.run(scenario())
