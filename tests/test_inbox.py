"""The inbox (``dicomweb/inbox.py``) against the running service: a scanner file written to the inbox container
is converted and stored with no client involved; a corrupt one ends ``failed`` with the reason and stores nothing."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from dicomweb import inbox, jobs
from dicomweb.config import Settings
from dicomweb.service import Service
from tests.conftest import Server, blob_service, fresh_settings, start_server
from tests.scanner_files import make_svs


def _drop(server: Server, name: str, data: bytes, **metadata: str) -> None:
    """Write a file to the inbox as azcopy or Storage Explorer would (Put Blob, metadata as x-ms-meta-*)."""
    container = blob_service(server.env).get_container_client(server.env.get("DICOMWEB_INBOX_CONTAINER",
                                                                             "dicom-inbox"))
    container.upload_blob(name, data, overwrite=True, metadata=metadata)


def _inbox_names(server: Server) -> set[str]:
    container = blob_service(server.env).get_container_client(server.env.get("DICOMWEB_INBOX_CONTAINER",
                                                                             "dicom-inbox"))
    return {blob.name for blob in container.list_blobs()}


def _ended(server: Server, name: str, seconds: float = 90, after: str | None = None) -> dict:
    """The file's status record once it is no longer ``converting`` (with ``after``: a record of a version with
    another etag than that)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answer = httpx.get(f"{server.base_url}/inbox", params={"file": name})
        if answer.status_code == 200 and answer.json()["status"] != "converting" and answer.json()["etag"] != after:
            return answer.json()
        assert answer.status_code in (200, 404), answer.text
        time.sleep(0.25)
    raise AssertionError(f"{name} did not end: {answer.status_code} {answer.text}")


def test_a_file_dropped_in_the_inbox_is_converted_and_stored_with_no_client(server: Server, tmp_path: Path) -> None:
    make_svs(tmp_path / "slide.svs")
    patient = f"P-INBOX-{uuid.uuid4().hex[:8]}"
    name = f"scanner-1/{patient}.svs"
    _drop(server, name, (tmp_path / "slide.svs").read_bytes(), PatientID=patient, AccessionNumber="A-7")
    record = _ended(server, name)
    assert record["status"] == "stored", record
    assert (record["instances"], record["newlyStored"], len(record["series"])) == (6, 6, 1)
    studies = httpx.get(f"{server.base_url}/studies", params={"PatientID": patient}).json()
    assert [s["0020000D"]["Value"][0] for s in studies] == [record["study"]]
    assert studies[0]["00080050"]["Value"] == ["A-7"], "metadata from the blob's own metadata"
    instances = httpx.get(f"{server.base_url}/studies/{record['study']}/instances").json()
    assert len(instances) == 6
    names = _inbox_names(server)
    assert f"done/{name}" in names and name not in names, "moved under done/"
    assert any(r["file"] == name for r in httpx.get(f"{server.base_url}/inbox").json()), "listed"

    # The same file dropped again: the same UIDs, so every instance is already stored, and nothing is duplicated.
    _drop(server, name, (tmp_path / "slide.svs").read_bytes(), PatientID=patient, AccessionNumber="A-7")
    again = _ended(server, name, after=record["etag"])
    assert (again["status"], again["instances"], again["newlyStored"]) == ("stored", 6, 0), again
    assert len(httpx.get(f"{server.base_url}/studies/{record['study']}/instances").json()) == 6


def test_a_corrupt_file_ends_failed_with_the_reason_and_stores_nothing(server: Server, tmp_path: Path) -> None:
    make_svs(tmp_path / "slide.svs")
    data = (tmp_path / "slide.svs").read_bytes()
    patient = f"P-INBOX-{uuid.uuid4().hex[:8]}"
    name = f"{patient}-cut.svs"
    _drop(server, name, data[: int(len(data) * 0.9)], PatientID=patient)
    record = _ended(server, name)
    assert record["status"] == "failed" and "cannot be converted: the file is cut short" in record["reason"], record
    assert httpx.get(f"{server.base_url}/studies", params={"PatientID": patient}).json() == []
    names = _inbox_names(server)
    assert f"failed/{name}" in names and name not in names, "moved under failed/"
    assert httpx.get(f"{server.base_url}/inbox", params={"file": "never-dropped.svs"}).status_code == 404


@pytest.fixture
def small_inbox_server(emulators: dict[str, str], tmp_path: Path):
    running = start_server(fresh_settings(emulators), tmp_path, DICOMWEB_INBOX_MAX_GB="0",
                           DICOMWEB_INBOX_SOURCES="delete")
    yield running
    running.stop()


def test_a_file_beyond_the_inbox_limit_fails_with_the_reason(small_inbox_server: Server, tmp_path: Path) -> None:
    make_svs(tmp_path / "slide.svs")
    _drop(small_inbox_server, "big.svs", (tmp_path / "slide.svs").read_bytes())
    record = _ended(small_inbox_server, "big.svs")
    assert record["status"] == "failed" and "more than DICOMWEB_INBOX_MAX_GB (0)" in record["reason"], record
    assert _inbox_names(small_inbox_server) == {"failed/big.svs"}, "a failed file is moved even when stored ones go"


@pytest.fixture
def strict_server(emulators: dict[str, str], tmp_path: Path):
    """A service refusing instances of more than 10 frames: a converted slide's base level (24 frames) among them."""
    running = start_server(fresh_settings(emulators), tmp_path, DICOMWEB_MAX_FRAMES="10")
    yield running
    running.stop()


def test_a_slide_with_an_instance_the_service_refuses_stores_nothing(strict_server: Server, tmp_path: Path) -> None:
    make_svs(tmp_path / "slide.svs")
    _drop(strict_server, "slide.svs", (tmp_path / "slide.svs").read_bytes(), PatientID="P-REFUSED")
    record = _ended(strict_server, "slide.svs")
    assert record["status"] == "failed" and "refused an instance" in record["reason"], record
    assert httpx.get(f"{strict_server.base_url}/studies", params={"PatientID": "P-REFUSED"}).json() == [], \
        "the levels and images stored before the refusal were deleted again"
    assert _inbox_names(strict_server) == {"failed/slide.svs"}


def test_a_claim_held_elsewhere_is_looked_at_again_once_it_would_have_lapsed(
        emulators: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A delivery that finds another's fresh claim leaves the file to it, but sends itself a job for when that
    claim would lapse (its worker may have vanished, its message settled); a lapsed claim is taken over."""
    settings = fresh_settings(emulators)  # no service runs on these: the test is the only worker
    make_svs(tmp_path / "slide.svs")
    container = settings["DICOMWEB_INBOX_CONTAINER"]
    blob_service(settings).get_container_client(container).upload_blob("slide.svs",
                                                                       (tmp_path / "slide.svs").read_bytes())
    event = json.dumps({"eventType": "Microsoft.Storage.BlobCreated",
                        "subject": f"/blobServices/default/containers/{container}/blobs/slide.svs"})
    sent: list[tuple[str, int, dict]] = []
    enqueue = jobs.enqueue

    async def spy(service: Service, kind: str, delay_seconds: int = 0, **fields: object) -> None:
        sent.append((kind, delay_seconds, fields))
        await enqueue(service, kind, delay_seconds, **fields)

    monkeypatch.setattr(jobs, "enqueue", spy)

    async def claimed(service: Service, minutes_ago: int) -> None:
        file = await service.blobs.inbox.describe("slide.svs")
        when = (datetime.now(timezone.utc) - timedelta(minutes=minutes_ago)).isoformat()
        record = {"file": "slide.svs", "etag": file.etag, "status": "converting", "updated": when, "attempts": 1}
        await service.blobs.staging.put_record(inbox.record_name("slide.svs"), json.dumps(record).encode())

    async def main() -> None:
        service = await Service.create(Settings.from_env(settings))
        try:
            await claimed(service, 34)
            assert await inbox.handle(service, event, last=False) == 1
            ((kind, delay, fields),) = sent
            assert (kind, fields) == (inbox.RECHECK, {"file": "slide.svs"}) and 60 <= delay <= 70
            assert (await inbox.status(service, "slide.svs"))["attempts"] == 1, "left to the other delivery"
            await claimed(service, 36)
            taken = await inbox._claim(service, await service.blobs.inbox.describe("slide.svs"))
            assert taken is not None and (taken["status"], taken["attempts"]) == ("converting", 2)
        finally:
            await service.close()

    asyncio.run(main())
