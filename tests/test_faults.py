"""Fault injection: Azurite and the Cosmos server paused (SIGSTOP), Azurite stopped and restarted, and the
Cosmos server killed, at random moments while clients store (STOW and upload sessions) and delete; all the
while Cosmos throttles a tenth of the document requests (429, which the SDK retries), as a busy account does.

Every answer comes within a bounded time and is a 2xx, a 404 for what is already gone, or
a 503 (with Retry-After) that the client retries (or, for a STOW retried after a 503, a 409 / 45070 when
the first try had claimed the instance); once the emulators are back the service
works without a restart, every instance acknowledged with 200 is retrievable byte-exact,
every acknowledged delete holds, and ``dicomweb check`` agrees.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from azure.storage.queue import QueueClient

from dicomweb.config import Settings
from dicomweb.local.emulators import Emulators
from dicomweb.uploader import Result, Uploader
from tests.conftest import Server, source_frames, start_server
from tests.test_check import run_check
from tests.wsi_factory import SlideFile, copy_instance, make_slide

#: Longest a client may wait for one answer while storage is paused (storage timeout 3 s, a few retries).
ANSWER_BOUND = 40.0
LOAD_SECONDS = 30
#: The fraction of Cosmos document requests answered 429 throughout.
THROTTLE = 0.1
STOW_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


class Clients:
    """What the clients were told: stored (200), deleted (204), and every answer's status and time."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.stored: dict[str, SlideFile] = {}
        self.deleted: set[str] = set()
        #: DELETEs answered 404: gone already (an earlier try that answered 503 marked it, and the
        #: repair finishes it), or unknown to an index lost with the Cosmos server.
        self.unsure: set[str] = set()
        self.answers: list[tuple[str, int, float]] = []
        self.lock = threading.Lock()

    def request(self, method: str, url: str, **kwargs: object) -> httpx.Response:
        started = time.monotonic()
        response = httpx.request(method, url, timeout=90, **kwargs)  # type: ignore[arg-type]
        elapsed = time.monotonic() - started
        with self.lock:
            self.answers.append((f"{method} {url.split('/v1')[-1][:40]}", response.status_code, elapsed))
        if response.status_code == 503:
            assert response.headers.get("retry-after"), response.text
        return response

    def until_answered(self, method: str, url: str, done: set[int], **kwargs: object) -> httpx.Response:
        """Repeat on 503, as a client should (after Retry-After, at most 2 s here), until an answer in ``done``."""
        for attempt in range(40):
            response = self.request(method, url, **kwargs)
            if response.status_code in done:
                response.extensions["attempts"] = attempt + 1
                return response
            assert response.status_code == 503, (response.status_code, response.text)
            time.sleep(min(0.2 * 2**attempt, 2.0))
        raise AssertionError(f"{method} {url} never got through")

    def stow(self, file: SlideFile) -> None:
        """Store until acknowledged: 200, or 409 / 45070 on a retry (an earlier try that answered 503 had
        already claimed the instance; the byte-exact read at the end shows whether it is really there)."""
        response = self.until_answered("POST", f"{self.server.base_url}/studies", {200, 409},
                                       content=file.path.read_bytes(), headers={"content-type": "application/dicom"})
        if response.status_code == 409:
            reasons = [item["00081197"]["Value"][0] for item in response.json()["00081198"]["Value"]]
            assert reasons == [45070] and response.extensions["attempts"] > 1, response.text
        with self.lock:
            self.stored[file.sop_uid] = file

    def upload(self, file: SlideFile) -> None:
        data = file.path.read_bytes()
        session = self.until_answered("POST", f"{self.server.base_url}/uploads", {201}, json={"size": len(data)}).json()
        for block in session["blocks"]:
            for _ in range(40):
                try:
                    put = httpx.put(f"{session['uploadUrl']}&comp=block&blockid={block['id']}",
                                    content=data[block["offset"] : block["offset"] + block["length"]], timeout=10)
                    if put.status_code == 201:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
        for _ in range(40):  # a commit whose ingest met a storage failure leaves the session open: commit again
            commit = self.until_answered("POST", session["commitUrl"], {200, 202})
            state = "stored" if commit.status_code == 200 else "ingesting"
            while state == "ingesting":
                time.sleep(0.5)
                state = self.until_answered("GET", session["statusUrl"], {200}).json()["status"]
            assert state in ("stored", "open"), state
            if state == "stored":
                break
        with self.lock:
            self.stored[file.sop_uid] = file

    def delete(self, file: SlideFile) -> None:
        url = f"{self.server.base_url}/studies/{file.study_uid}/series/{file.series_uid}/instances/{file.sop_uid}"
        answer = self.until_answered("DELETE", url, {204, 404})
        with self.lock:
            (self.deleted if answer.status_code == 204 else self.unsure).add(file.sop_uid)


def _faults(stack: Emulators, stop: threading.Event, rng: random.Random, log: list[str], kill_cosmos: bool) -> None:
    started = time.monotonic()
    while not stop.wait(rng.uniform(1.0, 3.0)):
        fault = rng.choice(["pause-azurite", "pause-cosmos", "restart-azurite"])
        if kill_cosmos and "kill-cosmos" not in log and time.monotonic() - started > LOAD_SECONDS / 3:
            fault = "kill-cosmos"
        log.append(fault)
        action, name = fault.split("-")
        process = stack.processes[name]
        if action != "pause":
            # The local Cosmos server holds the index in memory: killed, it comes back empty. Azurite is
            # stopped, not SIGKILLed: it saves its blob index every few seconds, so a SIGKILL loses writes
            # it has acknowledged (Azure Storage does not).
            os.killpg(process.pid, signal.SIGKILL if action == "kill" else signal.SIGTERM)
            process.wait(10)
            time.sleep(rng.uniform(0.5, 2.0))
            stack.restart(name)
            continue
        os.killpg(process.pid, signal.SIGSTOP)
        time.sleep(rng.uniform(1.0, 12.0))  # long enough, at times, for calls to time out after their retries
        os.killpg(process.pid, signal.SIGCONT)


def _drain_jobs(env: dict[str, str], bound: float = 120.0) -> None:
    """Wait until the job queue is empty (delayed and in-flight messages count until they are deleted)."""
    queue = QueueClient.from_connection_string(env["DICOMWEB_QUEUES"], env.get("DICOMWEB_JOBS_QUEUE")
                                               or Settings().jobs_queue)
    deadline = time.monotonic() + bound
    while queue.get_queue_properties().approximate_message_count:
        assert time.monotonic() < deadline, "the job queue did not drain"
        time.sleep(0.5)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kill_cosmos", [False, True], ids=["pauses-and-restarts", "cosmos-killed"])
def test_clients_get_clear_answers_and_nothing_acknowledged_is_lost(tmp_path: Path, kill_cosmos: bool) -> None:
    """With ``kill_cosmos`` the index is lost half way: Blob, the system of record, brings it back
    (``dicomweb check --repair``), with every acknowledged instance and delete."""
    base = make_slide(tmp_path / "slide", levels=1, base_size=(512, 512), associated=False)[0]
    files = [copy_instance(base, tmp_path / f"copy-{n}.dcm", series_uid=base.series_uid) for n in range(120)]
    stack = Emulators(tmp_path / "emulators", cosmos_throttle=THROTTLE)
    settings = stack.start()
    server = start_server(settings, tmp_path, DICOMWEB_STORAGE_TIMEOUT_SECONDS="3", DICOMWEB_COMMIT_WAIT_SECONDS="30")
    clients = Clients(server)
    stop = threading.Event()
    faults: list[str] = []
    failures: list[BaseException] = []
    rng = random.Random(20261202)
    try:
        def work(worker: int) -> None:
            try:
                mine = files[worker::6]
                deadline = time.monotonic() + LOAD_SECONDS
                for n, file in enumerate(mine):
                    if time.monotonic() > deadline:
                        break
                    (clients.upload if n % 3 == 2 else clients.stow)(file)
                    if n % 4 == 3:
                        clients.delete(mine[n - 1])
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)

        injector = threading.Thread(target=_faults, args=(stack, stop, rng, faults, kill_cosmos))
        injector.start()
        workers = [threading.Thread(target=work, args=(n,)) for n in range(6)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        stop.set()
        injector.join()
        assert not failures, failures[0]
        assert len(faults) >= 5, faults
        slow = [a for a in clients.answers if a[2] > ANSWER_BOUND]
        assert not slow, slow
        statuses = {status for _, status, _ in clients.answers}
        assert statuses <= {200, 201, 202, 204, 404, 409, 503}, statuses
        assert 503 in statuses, "the faults were felt"
        print(f"statuses {sorted(statuses)}; {len(faults)} faults ({', '.join(sorted(set(faults)))}), "
              f"{len(clients.answers)} answers, "
              f"{sum(1 for a in clients.answers if a[1] == 503)} of them 503, slowest "
              f"{max(a[2] for a in clients.answers):.1f} s")

        if kill_cosmos:
            repaired = run_check(server.env, "--repair")
            assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        kept = {sop: f for sop, f in clients.stored.items() if sop not in clients.deleted}
        assert kept and clients.deleted
        for sop, file in kept.items():
            url = f"{server.base_url}/studies/{file.study_uid}/series/{file.series_uid}/instances/{sop}"
            answer = clients.until_answered("GET", url, {200} if sop not in clients.unsure else {200, 404},
                                            headers={"accept": "application/dicom; transfer-syntax=*"})
            assert answer.status_code == 404 or answer.content == file.path.read_bytes()
        for sop in clients.deleted:
            file = next(f for f in files if f.sop_uid == sop)
            url = f"{server.base_url}/studies/{file.study_uid}/series/{file.series_uid}/instances/{sop}/metadata"
            assert httpx.get(url, timeout=30).status_code == 404
        _drain_jobs(server.env)  # cleanups of failed stores that could not run while storage was away
        report = run_check(server.env)
        print(report.stdout)
        assert report.returncode == 0, report.stdout
    finally:
        stop.set()
        server.stop()
        stack.stop()


#: Longer than one Cosmos call's whole retry budget in the service (3 s timeout, 2 retries, their backoff).
INDEX_PAUSE_SECONDS = 14.0


@pytest.mark.timeout(600)
def test_what_clients_were_told_is_stored_is_there_after_the_index_paused_past_every_retry(tmp_path: Path) -> None:
    """8 clients store 48 instances each into one series with ``dicomweb upload``'s retry rule (503 and 272
    retried, 45070 taken as "already stored") while the Cosmos server stops answering, several times, for longer
    than a call's retries last: every instance a client was told is stored is found by QIDO and its frames are
    served, and ``dicomweb check`` without --repair finds nothing to repair."""
    base = make_slide(tmp_path / "slide", levels=1, base_size=(256, 256), associated=False)[0]
    batches = [[copy_instance(base, tmp_path / f"c{client}-{n}.dcm", series_uid=base.series_uid)
                for n in range(48)] for client in range(8)]
    stack = Emulators(tmp_path / "emulators")
    settings = stack.start()
    server = start_server(settings, tmp_path, DICOMWEB_STORAGE_TIMEOUT_SECONDS="3")
    loading = threading.Event()
    pauses: list[float] = []

    def pause_the_index() -> None:
        cosmos = stack.processes["cosmos"]
        for _ in range(3):
            if not loading.wait(0) or stop.wait(1.5):
                return
            os.killpg(cosmos.pid, signal.SIGSTOP)
            time.sleep(INDEX_PAUSE_SECONDS)
            os.killpg(cosmos.pid, signal.SIGCONT)
            pauses.append(INDEX_PAUSE_SECONDS)

    async def upload_all() -> list[list[Result]]:
        uploaders = [Uploader(server.base_url, parallel=1, progress=False, state_path=tmp_path / f"state{n}.json")
                     for n in range(len(batches))]
        return list(await asyncio.gather(*(u.run([f.path for f in batch]) for u, batch in zip(uploaders, batches))))

    stop = threading.Event()
    pauser = threading.Thread(target=pause_the_index)
    try:
        loading.set()
        pauser.start()
        results = [r for client in asyncio.run(upload_all()) for r in client]
        loading.clear()
        stop.set()
        pauser.join()
        assert len(pauses) == 3, "the index paused three times while clients stored"
        told = {r.sop for r in results if r.status in ("stored", "exists")}
        print(f"{len(pauses)} pauses of {INDEX_PAUSE_SECONDS} s; " + ", ".join(
            f"{status} {sum(1 for r in results if r.status == status)}" for status in ("stored", "exists", "failed")))
        assert len(told) >= len(results) * 3 // 4, [r.detail for r in results if not r.ok][:5]
        series = f"{server.base_url}/studies/{base.study_uid}/series/{base.series_uid}"
        found: set[str] = set()
        while page := httpx.get(f"{series}/instances", params={"limit": 200, "offset": len(found)},
                                timeout=30).json():
            found |= {item["00080018"]["Value"][0] for item in page}
        assert told <= found, f"{len(told - found)} instances told stored are not found"
        (summary,) = httpx.get(f"{server.base_url}/studies/{base.study_uid}/series",
                               params={"SeriesInstanceUID": base.series_uid}).json()
        assert summary["00201209"]["Value"] == [len(found)], "counted exactly"
        for sop in sorted(told):
            frame = httpx.get(f"{series}/instances/{sop}/frames/1", headers={"accept": "image/jpeg"}, timeout=30)
            assert frame.status_code == 200 and frame.content == source_frames(base.path)[0], sop
        _drain_jobs(server.env)
        report = run_check(server.env)
        assert report.returncode == 0, report.stdout
    finally:
        stop.set()
        server.stop()
        stack.stop()
