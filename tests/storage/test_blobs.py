"""The Blob adapter against Azurite: block uploads, conditional commits, ranged reads, tiers."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from azure.storage.blob.aio import BlobServiceClient

from dicomweb.errors import Archived, Duplicate, NotFound
from dicomweb.storage.blobs import BlobStore, StaleBlob


def _run(emulators: dict[str, str], scenario) -> None:  # noqa: ANN001 - an async callable taking the store
    async def main() -> None:
        suffix = uuid.uuid4().hex[:8]
        client = BlobServiceClient.from_connection_string(emulators["DICOMWEB_STORAGE_CONNECTION_STRING"])
        store = BlobStore(client, f"i-{suffix}", f"s-{suffix}", f"t-{suffix}")
        await store.ensure_containers()
        try:
            await scenario(store)
        finally:
            await store.instances.delete_container()
            await store.sidecars.delete_container()
            await store.staging.delete_container()
            await store.close()

    asyncio.run(main())


def test_block_upload_commits_every_block_in_order(emulators: dict[str, str]) -> None:
    data = os.urandom(5 * 1024 * 1024 + 123)

    async def scenario(store: BlobStore) -> None:
        upload = store.upload("a/b/c.dcm", block_size=1024 * 1024, concurrency=3)
        for start in range(0, len(data), 300_000):
            await upload.write(data[start : start + 300_000])
        await upload.commit({"generation": "g1"})
        read, _ = await store.read_range("a/b/c.dcm", 0, len(data))
        assert read == data
        committed, _ = await store.instances.get_blob_client("a/b/c.dcm").get_block_list()
        sizes = [block.size for block in committed]
        assert len(sizes) > 1 and sum(sizes) == len(data)
        assert all(1024 * 1024 <= size < 1024 * 1024 + 300_000 for size in sizes[:-1])
        assert [name async for name in store.list_instances()] == [("a/b/c.dcm", {"generation": "g1"})]

    _run(emulators, scenario)


def test_a_second_commit_of_the_same_name_is_a_duplicate(emulators: dict[str, str]) -> None:
    async def scenario(store: BlobStore) -> None:
        first = store.upload("a/b/c.dcm", 1024, 2)
        await first.write(b"first")
        await first.commit({})
        second = store.upload("a/b/c.dcm", 1024, 2)
        await second.write(b"second")
        with pytest.raises(Duplicate):
            await second.commit({})
        assert (await store.read_range("a/b/c.dcm", 0, 5))[0] == b"first"

    _run(emulators, scenario)


def test_an_aborted_upload_leaves_no_blob(emulators: dict[str, str]) -> None:
    async def scenario(store: BlobStore) -> None:
        upload = store.upload("a/b/c.dcm", 1024, 2)
        await upload.write(os.urandom(10_000))
        await upload.abort()
        assert not await store.exists("a/b/c.dcm")

    _run(emulators, scenario)


def test_ranged_reads_check_the_etag(emulators: dict[str, str]) -> None:
    async def scenario(store: BlobStore) -> None:
        upload = store.upload("a/b/c.dcm", 1024, 2)
        await upload.write(b"0123456789")
        etag = await upload.commit({})
        assert await store.read_range("a/b/c.dcm", 3, 4, etag) == (b"3456", etag)
        await store.instances.upload_blob("a/b/c.dcm", b"replaced!!", overwrite=True)
        with pytest.raises(StaleBlob):
            await store.read_range("a/b/c.dcm", 3, 4, etag)
        with pytest.raises(NotFound):
            await store.read_range("a/b/missing.dcm", 0, 1)

    _run(emulators, scenario)


def test_archived_blobs_fail_with_a_clear_error(emulators: dict[str, str]) -> None:
    async def scenario(store: BlobStore) -> None:
        upload = store.upload("a/b/c.dcm", 1024, 2)
        await upload.write(b"0123456789")
        await upload.commit({})
        await store.instances.get_blob_client("a/b/c.dcm").set_standard_blob_tier("Archive")
        with pytest.raises(Archived, match="rehydrate"):
            await store.read_range("a/b/c.dcm", 0, 4)

    _run(emulators, scenario)


def test_sidecars_round_trip_and_are_listed(emulators: dict[str, str]) -> None:
    async def scenario(store: BlobStore) -> None:
        await store.put_sidecar("a/b/c.json", b"{}")
        await store.put_sidecar("a/b/c.frames", b"DWFI")
        assert await store.get_sidecar("a/b/c.json") == b"{}"
        assert [n async for n in store.list_metadata_sidecars()] == ["a/b/c.json"]
        await store.delete(None, ["a/b/c.json", "a/b/c.frames", "a/b/never.json"])
        with pytest.raises(NotFound):
            await store.get_sidecar("a/b/c.json")

    _run(emulators, scenario)
