"""A generation's life under concurrency and failure: real ``serve`` workers sharing one Azurite and one Cosmos
server, and interleavings injected where timing would not find them.

Every test checks what a user sees: counts, frames, blobs, and the change feed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import httpx
import pytest

from dicomweb import changefeed, check, generations, jobs, records, reindex
from dicomweb.config import Settings
from dicomweb.dicom.part10 import Part10Parser
from dicomweb.errors import Duplicate, StorageFailure
from dicomweb.service import Service
from dicomweb.storage.clients import queue_consumer
from dicomweb.storage.naming import Location, new_generation
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


# Interleavings injected in one process: each race of the issue, run the same way every time.

class Gate:
    """Holds the first matching call of an async function until released: an interleaving injected, not timed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: object, name: str,
                 when: Callable[..., bool] = lambda *args, **kwargs: True) -> None:
        self.reached, self.release = asyncio.Event(), asyncio.Event()
        original, used = getattr(owner, name), []

        async def gated(*args: Any, **kwargs: Any) -> Any:
            if not used and when(*args, **kwargs):
                used.append(True)
                self.reached.set()
                await self.release.wait()
            return await original(*args, **kwargs)

        monkeypatch.setattr(owner, name, gated)


def _in_process(emulators: dict[str, str], scenario: Callable[[Service], Awaitable[None]]) -> None:
    """``scenario`` with a service of its own over a fresh index and fresh containers, checked clean at the end."""
    settings = Settings.from_env(fresh_settings(emulators))

    async def main() -> None:
        service = await Service.create(settings)
        try:
            await scenario(service)
            found = await check.check(service)
            assert found.clean, [str(p) for p in found.problems]
        finally:
            await service.close()

    asyncio.run(main())


async def _write(service: Service, file: SlideFile) -> records.JsonDict:
    """What a store does before it publishes: commit a new generation of ``file`` and write its sidecars."""
    data = file.path.read_bytes()
    location = Location(file.study_uid, file.series_uid, file.sop_uid, new_generation())
    upload = service.blobs.instances.upload(location, 1 << 20, 1)
    await upload.write(data)
    await upload.commit({})
    parser = Part10Parser(service.settings.limits)
    parser.feed(data)
    parser.close()
    assert parser.header is not None
    made = records.make_sidecars(parser, records.describe(parser.header), location.generation)
    await generations.describe(service, location, made)
    return made.sidecar


async def _files(service: Service, study: str) -> list[Location]:
    return [location async for location, _ in service.blobs.instances.list(f"{study}/")]


async def _counts(service: Service, study: str, series: str) -> tuple[int, int]:
    """(series, study) NumberOf…RelatedInstances as the summaries say (0 for a missing one)."""
    found = [await service.index.find(study, level, uid) for level, uid in (("series", series), ("study", study))]
    return tuple(doc["numberOfInstances"] if doc else 0 for doc in found)  # type: ignore[return-value]


async def _actions(service: Service, sop: str) -> list[str]:
    return [e["action"] for e in await changefeed.changes(service, 0, None, None, 200) if e["sop"] == sop]


async def _put_held_before_projecting(service: Service, monkeypatch: pytest.MonkeyPatch, file: SlideFile,
                                     variant: SlideFile) -> tuple[records.JsonDict, records.JsonDict, Gate,
                                                                  asyncio.Task[None]]:
    """``file`` stored, then a PUT of ``variant`` that has claimed its generation (``publishing``) and is held
    before it projects anything: (first sidecar, second sidecar, the gate holding it, the PUT)."""
    first = await _write(service, file)
    await generations.publish(service, first, replace=False)
    second = await _write(service, variant)
    gate = Gate(monkeypatch, generations, "project")
    put = asyncio.create_task(generations.publish(service, second, replace=True))
    await gate.reached.wait()
    return first, second, gate, put


def test_a_put_racing_a_delete_leaves_no_document_count_or_file(emulators: dict[str, str], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The PUT has claimed its generation and projected nothing when the DELETE runs start to end; the PUT then
    projects. The DELETE finished the PUT first (it follows it), and the PUT's late projection undoes itself."""
    (file,) = make_slide(tmp_path, levels=1, base_size=(256, 256), associated=False)
    variant = copy_instance(file, tmp_path / "variant.dcm", sop_uid=file.sop_uid, variant=1)

    async def scenario(service: Service) -> None:
        first, second, gate, put = await _put_held_before_projecting(service, monkeypatch, file, variant)
        assert (await service.claims.get(file.sop_uid))["state"] == generations.PUBLISHING
        await generations.delete(service, records.location(first))
        gate.release.set()
        await put
        assert await service.claims.get(file.sop_uid) is None
        assert await service.index.find(file.study_uid, "instance", file.sop_uid) is None
        assert await _counts(service, file.study_uid, file.series_uid) == (0, 0)
        assert await _files(service, file.study_uid) == []
        assert await _actions(service, file.sop_uid) == ["create", "update", "delete"]

    _in_process(emulators, scenario)


def test_a_delete_meeting_a_renumbered_claim_deletes_the_instance_whole(emulators: dict[str, str], tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The DELETE took its sequence; before it turns the claim ``deleting``, the claim's change is renumbered past
    it (a reader skipped the store's number as a hole). Generations decide what goes, not sequences: the live
    generation is deleted whole, never its files alone."""
    (file,) = make_slide(tmp_path, levels=1, base_size=(256, 256), associated=False)

    async def scenario(service: Service) -> None:
        sidecar = await _write(service, file)
        await generations.publish(service, sidecar, replace=False)
        claim = await service.claims.get(file.sop_uid)
        gate = Gate(monkeypatch, service.claims, "replace")
        deletion = asyncio.create_task(generations.delete(service, records.location(sidecar)))
        await gate.reached.wait()
        renumbered = await service.changes.next_sequence()
        await service.claims.update(file.sop_uid, [{"op": "set", "path": "/sequence", "value": renumbered}],
                                    f"FROM c WHERE c.sequence = {claim['sequence']}")
        gate.release.set()
        await deletion
        assert await service.claims.get(file.sop_uid) is None
        assert await service.index.find(file.study_uid, "instance", file.sop_uid) is None
        assert await _files(service, file.study_uid) == []
        entries = [e for e in await service.changes.after(0, 100) if e["sop"] == file.sop_uid]
        assert entries[-1]["action"] == "delete" and entries[-1]["sequence"] > renumbered

    _in_process(emulators, scenario)


def test_an_online_reindex_leaves_a_store_in_flight_to_its_writer(emulators: dict[str, str], tmp_path: Path) -> None:
    """A POST checked the claim before another store of the same SOP instance was published, and has committed
    its file: reindex neither deletes what is served nor turns the POST into a replacement."""
    (file,) = make_slide(tmp_path, levels=1, base_size=(256, 256), associated=False)
    later = copy_instance(file, tmp_path / "later.dcm", sop_uid=file.sop_uid, variant=1)

    async def scenario(service: Service) -> None:
        served = await _write(service, file)
        in_flight = await _write(service, later)  # newer, and not claimed yet
        await generations.publish(service, served, replace=False)
        report = await reindex.reindex_study(service, f"{file.study_uid}/")
        assert (report.in_flight, report.removed_generations) == (1, 0)
        assert records.named(await service.claims.get(file.sop_uid)) == records.location(served)
        assert set(await _files(service, file.study_uid)) == {records.location(served), records.location(in_flight)}
        with pytest.raises(Duplicate):
            await generations.publish(service, in_flight, replace=False)
        await generations.abandon(service, records.location(in_flight))
        assert await _files(service, file.study_uid) == [records.location(served)]

    _in_process(emulators, scenario)


def test_an_online_reindex_leaves_a_publishing_claim_to_its_writer(emulators: dict[str, str], tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A PUT holds the claim (``publishing``) and has not projected yet: reindex removes neither generation, and
    the PUT finishes as if it had not run."""
    (file,) = make_slide(tmp_path, levels=1, base_size=(256, 256), associated=False)
    variant = copy_instance(file, tmp_path / "variant.dcm", sop_uid=file.sop_uid, variant=1)

    async def scenario(service: Service) -> None:
        first, second, gate, put = await _put_held_before_projecting(service, monkeypatch, file, variant)
        report = await reindex.reindex_study(service, f"{file.study_uid}/")
        assert (report.in_flight, report.removed_generations, report.finished) == (2, 0, 0)
        assert set(await _files(service, file.study_uid)) == {records.location(first), records.location(second)}
        gate.release.set()
        await put
        assert await _files(service, file.study_uid) == [records.location(second)]
        doc = await service.index.find(file.study_uid, "instance", file.sop_uid)
        assert doc is not None and doc["generation"] == second["generation"]

    _in_process(emulators, scenario)


def test_a_recount_keeps_what_was_counted_while_it_ran(emulators: dict[str, str], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A store is counted between the recount's reads and its write: the recount's write is refused (the summary
    changed) and it counts again, so the increment is not lost."""
    (file,) = make_slide(tmp_path, levels=1, base_size=(256, 256), associated=False)
    other = copy_instance(file, tmp_path / "other.dcm")

    async def scenario(service: Service) -> None:
        await generations.publish(service, await _write(service, file), replace=False)
        late = await _write(service, other)
        original = service.index.instances
        stored: list[bool] = []

        async def instances_then_a_store(study: str, series: str | None = None) -> list[dict]:
            found = await original(study, series)
            if not stored:
                stored.append(True)
                await generations.publish(service, late, replace=False)
            return found

        monkeypatch.setattr(service.index, "instances", instances_then_a_store)
        await service.index.patch(file.study_uid, f"series:{file.series_uid}",
                                  [{"op": "set", "path": "/numberOfInstances", "value": 7}])  # something to repair
        await generations.recount(service, file.study_uid)
        assert await _counts(service, file.study_uid, file.series_uid) == (2, 2)

    _in_process(emulators, scenario)


def test_a_projection_or_withdrawal_sent_again_counts_once(emulators: dict[str, str], tmp_path: Path) -> None:
    """What the SDK does when a write's answer is lost: the same batch again. The instance document is its
    condition, so the second one changes nothing."""
    (file,) = make_slide(tmp_path, levels=1, base_size=(256, 256), associated=False)

    async def scenario(service: Service) -> None:
        sidecar = await _write(service, file)
        await generations.publish(service, sidecar, replace=False)
        claim = await service.claims.get(file.sop_uid)
        await generations.project(service, sidecar, claim["sequence"])
        assert await _counts(service, file.study_uid, file.series_uid) == (1, 1)
        await generations.delete(service, records.location(sidecar))
        await generations.withdraw(service, file.study_uid, file.sop_uid, generations.LAST)
        assert await _counts(service, file.study_uid, file.series_uid) == (0, 0)

    _in_process(emulators, scenario)


def test_a_store_whose_publication_failed_is_rolled_forward_never_hidden(emulators: dict[str, str], tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The index stops answering after the claim was written: the store fails (503) and nothing can be undone or
    finished. The client's retry of the same bytes finishes the first store before it answers "already stored",
    so the instance it then believes stored is there; a settle job sent meanwhile finds nothing left to do."""
    (file,) = make_slide(tmp_path, levels=1, base_size=(256, 256), associated=False)

    async def scenario(service: Service) -> None:
        sidecar = await _write(service, file)
        batch = service.index.batch

        async def unreachable(*args: Any, **kwargs: Any) -> Any:
            raise StorageFailure("injected: the index is unreachable")

        monkeypatch.setattr(service.index, "batch", unreachable)
        with pytest.raises(StorageFailure):
            await generations.publish(service, sidecar, replace=False)
        monkeypatch.setattr(service.index, "batch", batch)
        assert (await service.claims.get(file.sop_uid))["state"] == generations.PUBLISHING
        assert await service.index.find(file.study_uid, "instance", file.sop_uid) is None, "hidden for now"
        retry = copy_instance(file, tmp_path / "retry.dcm", sop_uid=file.sop_uid)
        with pytest.raises(Duplicate):
            await generations.reserve(service, records.location(await _write(service, retry)), replace=False)
        doc = await service.index.find(file.study_uid, "instance", file.sop_uid)
        assert doc is not None and doc["generation"] == sidecar["generation"]
        assert await _counts(service, file.study_uid, file.series_uid) == (1, 1)
        assert (await service.claims.get(file.sop_uid))["state"] == generations.CURRENT
        for location in await _files(service, file.study_uid):
            await generations.settle(service, location)  # the jobs of both attempts
        assert await _files(service, file.study_uid) == [records.location(sidecar)]

    _in_process(emulators, scenario)


async def project_copies(service: Service, template: records.JsonDict, numbers: range) -> None:
    """Project instance ``n`` of ``numbers`` (SOP Instance UID ``<template's>.n``, change ``n + 1``) into the
    template's series, 32 at once: what that many stores do to the index, without their files."""
    slots = asyncio.Semaphore(32)
    sop = template["dataset"]["00080018"]["Value"][0]

    async def one(n: int) -> None:
        sidecar = json.loads(json.dumps(template))
        sidecar["dataset"]["00080018"]["Value"] = [f"{sop}.{n}"]
        async with slots:
            await generations.project(service, sidecar, n + 1)

    await asyncio.gather(*(one(n) for n in numbers))


def test_summaries_do_not_grow_with_their_instances(emulators: dict[str, str], tmp_path: Path) -> None:
    """A series of 100,000 instances must stay far below Cosmos DB's 2 MB item: its summaries hold counts, not
    members. 1,500 instances projected at once are counted exactly, and the summaries are the size they had
    with one."""
    (file,) = make_slide(tmp_path, levels=1, base_size=(256, 256), associated=False)

    async def scenario(service: Service) -> None:
        template = await _write(service, file)
        sizes = []
        for first, last in ((0, 1), (1, 1500)):
            await project_copies(service, template, range(first, last))
            summaries = await service.index.summaries(file.study_uid)
            sizes.append(sum(len(json.dumps(doc)) for doc in summaries))
        assert await _counts(service, file.study_uid, file.series_uid) == (1500, 1500)
        assert abs(sizes[1] - sizes[0]) < 64, sizes
        for n in range(1500):  # what the projections stand for, so that the check at the end agrees
            await service.index.delete(file.study_uid, "instance", f"{file.sop_uid}.{n}")
        await generations.recount(service, file.study_uid)
        await generations.remove_generation(service, records.location(template))

    _in_process(emulators, scenario)


def test_a_cleanup_that_cannot_run_now_or_may_be_overtaken_is_left_to_a_job(emulators: dict[str, str],
                                                                            tmp_path: Path) -> None:
    """A failed store's cleanup meets the index away: a job does it once it is back. A cleanup after the stores
    failed (a write timed out, and may land after the cleanup, as a sidecar of no file) is done at once and
    looked at again by a job."""
    (file,) = make_slide(tmp_path, levels=1, base_size=(256, 256), associated=False)
    other = copy_instance(file, tmp_path / "other.dcm")

    async def scenario(service: Service) -> None:
        unreached, overtaken = records.location(await _write(service, file)), records.location(
            await _write(service, other))
        reachable = service.claims.get

        async def away(sop: str) -> None:
            raise StorageFailure("injected: the index is paused")

        service.claims.get = away  # type: ignore[method-assign]
        await generations.abandon(service, unreached)
        service.claims.get = reachable  # type: ignore[method-assign]
        assert await service.blobs.instances.exists(unreached), "nothing could be decided while the index was away"
        await generations.abandon(service, overtaken, late_writes=True)
        assert not await service.blobs.instances.exists(overtaken)
        await service.blobs.sidecars.put(overtaken.sidecar("json"), b"{}")  # the write that timed out lands
        consumer = queue_consumer(service.settings, service.settings.jobs_queue)
        deliveries: list = []
        for _ in range(60):
            deliveries += await consumer.receive(32, 30)
            if len(deliveries) == 2:
                break
            await asyncio.sleep(0.25)
        assert [json.loads(d.content)["kind"] for d in deliveries] == [generations.SETTLE] * 2
        for delivery in deliveries:
            await jobs.run(service, json.loads(delivery.content), 1)
            await consumer.complete(delivery)
        await consumer.close()
        assert await _files(service, file.study_uid) == []
        assert [name async for name in service.blobs.sidecars.entries(f"{file.study_uid}/")] == []

    _in_process(emulators, scenario)
