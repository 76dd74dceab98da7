"""How the index learns availability (``dicomweb/availability.py``): event messages in every form the platform
writes them, readings that arrive out of order, and reconciliation of what events missed, against the real
emulators (the handler is fed event messages directly here, as Event Grid would queue them)."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest

from dicomweb import availability, blobevents, generations, reindex
from dicomweb.config import Settings
from dicomweb.service import Service
from dicomweb.storage.naming import Location
from tests.conftest import blob_service, fresh_settings, instance_blob, start_server
from tests.wsi_factory import make_slide

CONTAINER = "dicom-instances"
NAME = "1.2.3/1.2.4/1.2.5/00061e5b3c2a1b9f0c1d2e3f.dcm"


def _event(kind: str, name: str = NAME, container: str = CONTAINER, api: str = "SetBlobTier") -> dict[str, Any]:
    return {"topic": "/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/storageAccounts/z",
            "subject": f"/blobServices/default/containers/{container}/blobs/{name}", "eventType": kind,
            "id": "1", "eventTime": "2026-12-06T00:00:00Z", "data": {"api": api, "accessTier": "Archive"},
            "dataVersion": "", "metadataVersion": "1"}


def test_event_messages_are_read_in_every_form_the_platform_writes() -> None:
    event = _event("Microsoft.Storage.BlobTierChanged")
    plain = json.dumps(event)
    assert blobevents.parse(plain) == [event]
    assert blobevents.parse(base64.b64encode(plain.encode()).decode()) == [event], "Event Grid's base64"
    assert blobevents.parse(json.dumps([event, event])) == [event, event]
    cloud = {"specversion": "1.0", "type": event["eventType"], "subject": event["subject"], "data": event["data"]}
    assert availability._instance(blobevents.parse(json.dumps(cloud))[0], CONTAINER) == Location.parse(NAME)
    for junk in ("", "not json", "bm90IGpzb24=", "42", "[1, 2]", json.dumps([event] * 500)[:100]):
        assert blobevents.parse(junk) == [], junk
    assert len(blobevents.parse(json.dumps([event] * 500))) == blobevents.MAX_EVENTS_PER_MESSAGE


@pytest.mark.parametrize(("event", "followed"), [
    (_event("Microsoft.Storage.BlobTierChanged"), True),
    (_event("Microsoft.Storage.AsyncOperationInitiated"), True),
    (_event("Microsoft.Storage.BlobCreated", api="CopyBlob"), False),  # an upload's copy: a new, online generation
    (_event("Microsoft.Storage.BlobCreated", api="PutBlockList"), False),  # a store: its writer indexes it
    (_event("Microsoft.Storage.BlobDeleted"), False),
    (_event("Microsoft.Storage.BlobTierChanged", container="dicom-sidecars"), False),
    (_event("Microsoft.Storage.BlobTierChanged", name=NAME.replace(".dcm", ".frames")), False),
    (_event("Microsoft.Storage.BlobTierChanged", name="1.2.3/x.dcm"), False),
])
def test_only_events_of_instance_files_that_may_change_availability_are_followed(event: dict, followed: bool) -> None:
    assert (availability._instance(event, CONTAINER) is not None) is followed


@pytest.fixture
def own(emulators: dict[str, str], tmp_path: Path) -> dict[str, str]:
    settings = fresh_settings(emulators)
    server = start_server(settings, tmp_path)
    (file,) = make_slide(tmp_path / "slide", levels=1, base_size=(256, 256), associated=False)
    stored = httpx.post(f"{server.base_url}/studies", content=file.path.read_bytes(),
                        headers={"content-type": "application/dicom"})
    server.stop()  # the tests below play the queue trigger's part themselves
    assert stored.status_code == 200, stored.text
    name = instance_blob(settings, file.study_uid, file.series_uid, file.sop_uid)
    return {**settings, "name": name}


async def _service(settings: dict[str, str]) -> AsyncIterator[Service]:
    service = await Service.create(Settings.from_env(settings))
    try:
        yield service
    finally:
        await service.close()


async def _counts(service: Service, location: Location) -> tuple[str, dict[str, int], dict[str, int]]:
    doc = await service.index.find(location.study, "instance", location.sop)
    summaries = {d["type"]: {k: d.get(k, 0) for k in ("nearline", "offline")}
                 for d in await service.index.summaries(location.study)}
    return doc.get("availability", "ONLINE"), summaries["series"], summaries["study"]


def test_a_tier_event_sets_the_instance_and_its_counts_from_the_blob(own: dict[str, str]) -> None:
    location = Location.parse(own["name"])
    blob = blob_service(own).get_blob_client(own["DICOMWEB_INSTANCE_CONTAINER"], own["name"])
    message = base64.b64encode(json.dumps(_event("Microsoft.Storage.BlobTierChanged", own["name"],
                                                 own["DICOMWEB_INSTANCE_CONTAINER"])).encode()).decode()

    async def scenario() -> None:
        async for service in _service(own):
            blob.set_standard_blob_tier("Archive")
            assert await availability.handle(service, message) == 1
            assert await _counts(service, location) == ("OFFLINE", {"nearline": 0, "offline": 1},
                                                        {"nearline": 0, "offline": 1})
            assert await availability.handle(service, message) == 1  # delivered twice: counted once
            assert (await _counts(service, location))[1] == {"nearline": 0, "offline": 1}
            blob.set_standard_blob_tier("Hot")  # the stand-in's rehydration takes a minute: NEARLINE meanwhile
            await availability.handle(service, message)
            assert await _counts(service, location) == ("NEARLINE", {"nearline": 1, "offline": 0},
                                                        {"nearline": 1, "offline": 0})

    asyncio.run(scenario())


def test_an_older_reading_never_overwrites_a_newer_one(own: dict[str, str]) -> None:
    """Events arrive late and out of order, handled by many workers: each carries when the blob was read."""
    location = Location.parse(own["name"])
    now = datetime.now(timezone.utc)

    async def scenario() -> None:
        async for service in _service(own):
            assert await generations.set_availability(service, location, "OFFLINE", now)
            assert not await generations.set_availability(service, location, "ONLINE", now - timedelta(seconds=1))
            assert (await _counts(service, location))[0] == "OFFLINE"
            assert not await generations.set_availability(service, location, "OFFLINE", now + timedelta(seconds=1))
            assert not await generations.set_availability(service, location, "ONLINE", now + timedelta(seconds=1)), \
                "a reading as old as the newest one recorded"
            other = Location(location.study, location.series, location.sop, "0" * 26)
            assert not await generations.set_availability(service, other, "ONLINE", now + timedelta(seconds=5)), \
                "another generation than the index names"
            assert await generations.set_availability(service, location, "ONLINE", now + timedelta(seconds=2))
            assert await _counts(service, location) == ("ONLINE", {"nearline": 0, "offline": 0},
                                                        {"nearline": 0, "offline": 0})

    asyncio.run(scenario())


def test_reconciliation_and_reindex_find_what_no_event_told(own: dict[str, str]) -> None:
    location = Location.parse(own["name"])
    blob = blob_service(own).get_blob_client(own["DICOMWEB_INSTANCE_CONTAINER"], own["name"])

    async def scenario() -> None:
        async for service in _service(own):
            blob.set_standard_blob_tier("Archive")
            await asyncio.sleep(0.01)
            assert await availability.reconcile_study(service, f"{location.study}/") == 1
            assert (await _counts(service, location))[0] == "OFFLINE"
            assert await availability.reconcile_study(service, f"{location.study}/") == 0
            await service.index.delete(location.study, "instance", location.sop)  # an index rebuilt from Blob
            await reindex.reindex_study(service, f"{location.study}/", in_flight_seconds=0)
            assert await _counts(service, location) == ("OFFLINE", {"nearline": 0, "offline": 1},
                                                        {"nearline": 0, "offline": 1})
            blob.delete_blob()
            assert await availability.refresh(service, location) is None, "no file: nothing to record"

    asyncio.run(scenario())
