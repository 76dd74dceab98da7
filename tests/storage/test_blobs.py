"""The storage account's stores against Azurite: one per container; block uploads, ranged reads, tiers."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
import os
import uuid
from typing import Awaitable, Callable

import pytest
from azure.storage.blob.aio import BlobServiceClient

from dicomweb.errors import Archived, NotFound, Rehydrating
from dicomweb.storage.blobs import BlobStores
from dicomweb.storage.instances import RETRY_AFTER
from dicomweb.storage.naming import REHYDRATED, TIER_TAG, Location, new_generation
from dicomweb.storage.transfer import StaleBlob

HERE = Location("1.2", "1.2.3", "1.2.3.4", "0000000000000a00000000000b")


def _run(emulators: dict[str, str], scenario: Callable[[BlobStores], Awaitable[None]]) -> None:
    async def main() -> None:
        suffix = uuid.uuid4().hex[:8]
        client = BlobServiceClient.from_connection_string(emulators["DICOMWEB_STORAGE_CONNECTION_STRING"])
        store = BlobStores(client, f"i-{suffix}", f"s-{suffix}", f"t-{suffix}", f"n-{suffix}")
        await store.provision()
        try:
            await scenario(store)
        finally:
            for each in (store.instances, store.sidecars, store.staging):
                await each.container.delete_container()
            await store.close()

    asyncio.run(main())


def test_block_upload_commits_every_block_in_order(emulators: dict[str, str]) -> None:
    data = os.urandom(5 * 1024 * 1024 + 123)

    async def scenario(store: BlobStores) -> None:
        upload = store.instances.upload(HERE, block_size=1024 * 1024, concurrency=3)
        for start in range(0, len(data), 300_000):
            await upload.write(data[start : start + 300_000])
        await upload.commit({})
        assert await store.instances.read_range(HERE, 0, len(data)) == data
        committed, _ = await store.instances.container.get_blob_client(HERE.instance).get_block_list()
        sizes = [block.size for block in committed]
        assert len(sizes) > 1 and sum(sizes) == len(data)
        assert all(1024 * 1024 <= size < 1024 * 1024 + 300_000 for size in sizes[:-1])
        other = Location(HERE.study, "9.9", "9.9.9", new_generation())
        await (upload := store.instances.upload(other, 1024, 1)).write(b"x")
        await upload.commit({})
        assert [loc async for loc, _ in store.instances.list(f"{HERE.study}/{HERE.series}/")] == [HERE]
        assert {loc async for loc, _ in store.instances.list()} == {HERE, other}
        (committed,) = [created async for _, created in store.instances.list(HERE.stem)]
        assert abs((datetime.now(timezone.utc) - committed).total_seconds()) < 60, "when it was committed"
        await store.instances.delete(HERE)
        assert not await store.instances.exists(HERE)

    _run(emulators, scenario)


def test_an_aborted_upload_leaves_no_blob(emulators: dict[str, str]) -> None:
    async def scenario(store: BlobStores) -> None:
        upload = store.instances.upload(HERE, 1024, 2)
        await upload.write(os.urandom(10_000))
        await upload.abort()
        assert not await store.instances.exists(HERE)

    _run(emulators, scenario)


def test_ranged_reads_and_missing_blobs(emulators: dict[str, str]) -> None:
    async def scenario(store: BlobStores) -> None:
        upload = store.instances.upload(HERE, 1024, 2)
        await upload.write(b"0123456789")
        await upload.commit({})
        assert await store.instances.read_range(HERE, 3, 4) == b"3456"
        with pytest.raises(NotFound):
            await store.instances.read_range(Location("1", "2", "3", new_generation()), 0, 1)

    _run(emulators, scenario)


def test_archived_blobs_fail_with_a_clear_error(emulators: dict[str, str]) -> None:
    async def scenario(store: BlobStores) -> None:
        upload = store.instances.upload(HERE, 1024, 2)
        await upload.write(b"0123456789")
        await upload.commit({})
        blob = store.instances.container.get_blob_client(HERE.instance)
        await blob.set_standard_blob_tier("Archive")
        for read in (store.instances.read_range(HERE, 0, 4), anext(store.instances.stream(HERE)),
                     store.instances.check_readable(HERE)):
            with pytest.raises(Archived, match="OFFLINE") as refused:
                await read
            assert not isinstance(refused.value, Rehydrating)
        assert await store.instances.availability(HERE) == "OFFLINE"
        assert [found async for found in store.instances.offline()] == [(HERE, "OFFLINE")]
        assert await store.instances.rehydrate(HERE, "Standard") == "NEARLINE"  # the stand-in takes a minute
        assert await blob.get_blob_tags() == {TIER_TAG: REHYDRATED}, "the archive rule no longer matches it"
        with pytest.raises(Rehydrating, match="NEARLINE") as pending:
            await store.instances.read_range(HERE, 0, 4)
        assert pending.value.retry_after == RETRY_AFTER["Standard"] and pending.value.status == 503
        assert await store.instances.rehydrate(HERE, "High") == "NEARLINE", "asking again raises the priority only"
        with pytest.raises(Rehydrating) as pending:
            await store.instances.check_readable(HERE)
        assert pending.value.retry_after == RETRY_AFTER["High"]
        assert [found async for found in store.instances.offline()] == [(HERE, "NEARLINE")]

    _run(emulators, scenario)


def test_sidecars_round_trip_and_are_listed(emulators: dict[str, str]) -> None:
    async def scenario(store: BlobStores) -> None:
        await store.sidecars.put(HERE.sidecar("json"), b"{}")
        await store.sidecars.put(HERE.sidecar("frames"), b"DWFI")
        assert await store.sidecars.get(HERE.sidecar("json")) == b"{}"
        assert [loc async for loc, _ in store.sidecars.list()] == [HERE]
        await store.sidecars.delete([*HERE.sidecars, "a/b/never.json"])
        with pytest.raises(NotFound):
            await store.sidecars.get(HERE.sidecar("json"))

    _run(emulators, scenario)


def test_staging_records_are_written_with_etag_checks(emulators: dict[str, str]) -> None:
    async def scenario(store: BlobStores) -> None:
        etag = await store.staging.put_record("sessions/a.json", b"1")
        newer = await store.staging.put_record("sessions/a.json", b"2", etag)
        with pytest.raises(StaleBlob):
            await store.staging.put_record("sessions/a.json", b"3", etag)
        assert await store.staging.get_record("sessions/a.json") == (b"2", newer)
        assert [n async for n in store.staging.list_records("sessions/")] == ["sessions/a.json"]
        await store.staging.delete_record("sessions/a.json")
        await store.staging.delete_record("sessions/a.json")

    _run(emulators, scenario)
