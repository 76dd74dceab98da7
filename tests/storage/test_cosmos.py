"""The container the stores share, against the local Cosmos-protocol server: point operations, conditional
writes, batches, and the one map of Cosmos failures to statuses."""

from __future__ import annotations

import asyncio
import uuid
from typing import Awaitable, Callable, TypeVar

import pytest
from azure.cosmos.aio import CosmosClient

from dicomweb.errors import DicomWebError, StorageFailure
from dicomweb.storage.cosmos import BatchFailed, Conflict, Container, document_id, patch_path

S = TypeVar("S", bound=Container)


def run_store(emulators: dict[str, str], kind: type[S], scenario: Callable[[S], Awaitable[None]]) -> None:
    """``scenario`` with a store of ``kind`` over a fresh database of the local Cosmos server."""
    async def main() -> None:
        store = kind(CosmosClient.from_connection_string(emulators["DICOMWEB_COSMOS_CONNECTION_STRING"]),
                     f"db-{uuid.uuid4().hex[:8]}", "index")
        await store.provision()
        try:
            await scenario(store)
        finally:
            await store.close()

    asyncio.run(main())


def _doc(study: str, sop: str) -> dict:
    return {"id": document_id("instance", sop), "type": "instance", "studyInstanceUID": study, "sopInstanceUID": sop}


def test_conditional_writes_and_concurrent_increments(emulators: dict[str, str]) -> None:
    async def scenario(store: Container) -> None:
        await store.create({"id": "series:1.2", "type": "series", "studyInstanceUID": "1.1", "numberOfInstances": 0,
                            "m": {}, "w": {}})
        increments = [{"op": "incr", "path": "/numberOfInstances", "value": 1},
                      {"op": "incr", "path": patch_path("modalities", "S/M"), "value": 1}]
        await store.create({"id": "study:1.1", "type": "study", "studyInstanceUID": "1.1", "modalities": {},
                            "m": {}, "w": {}})
        after = await asyncio.gather(*(store.patch("1.1", "study:1.1", increments) for _ in range(40)))
        assert sorted(doc["numberOfInstances"] for doc in after) == list(range(1, 41)), "each sees its own step"
        assert (await store.find("1.1", "study", "1.1"))["modalities"] == {"S/M": 40}
        with pytest.raises(Conflict):
            await store.patch("1.1", "series:missing", increments)
        with pytest.raises(Conflict):
            await store.patch("1.1", "series:1.2", increments, condition="FROM c WHERE c.numberOfInstances > 5")
        current = await store.find("1.1", "series", "1.2")
        await store.replace({**current, "numberOfInstances": 3})
        with pytest.raises(Conflict):
            await store.replace({**current, "numberOfInstances": 4})
        with pytest.raises(Conflict):
            await store.delete("1.1", "series", "1.2", etag=current["_etag"])

    run_store(emulators, Container, scenario)


def test_a_document_above_2_mb_is_refused_for_good(emulators: dict[str, str]) -> None:
    """Cosmos DB's item limit (413): not a 503, which would have the client retry what never fits."""
    async def scenario(store: Container) -> None:
        big = {**_doc("1.1", "1.1.1.1"), "attributes": "x" * (2 * 1024 * 1024 + 100_000)}
        with pytest.raises(DicomWebError, match="2 MB") as refused:
            await store.create(big)
        assert not isinstance(refused.value, StorageFailure) and refused.value.status == 500
        await store.create(_doc("1.1", "1.1.1.1"))
        with pytest.raises(DicomWebError, match="2 MB"):
            await store.patch("1.1", document_id("instance", "1.1.1.1"),
                              [{"op": "set", "path": "/attributes", "value": big["attributes"]}])

    run_store(emulators, Container, scenario)




def test_a_batch_applies_whole_or_names_what_failed(emulators: dict[str, str]) -> None:
    """What keeps an instance document and its counts exact together: a batch applied twice (the SDK retries a
    write whose answer was lost) fails on its create the second time, and changes nothing."""
    async def scenario(store: Container) -> None:
        await store.create({"id": "series:1.2", "type": "series", "studyInstanceUID": "1.1", "numberOfInstances": 0})
        batch = [("create", (_doc("1.1", "1.1.1"),)),
                 ("patch", ("series:1.2", [{"op": "incr", "path": "/numberOfInstances", "value": 1}]))]
        created, counted = await store.batch("1.1", batch)
        assert created is not None and created["sopInstanceUID"] == "1.1.1" and counted["numberOfInstances"] == 1
        with pytest.raises(BatchFailed) as again:
            await store.batch("1.1", batch)
        assert (again.value.index, again.value.status) == (0, 409)
        assert (await store.find("1.1", "series", "1.2"))["numberOfInstances"] == 1, "nothing applied twice"
        with pytest.raises(BatchFailed) as missing:
            await store.batch("1.1", [("create", (_doc("1.1", "1.1.2"),)),
                                      ("patch", ("series:gone", [{"op": "incr", "path": "/n", "value": 1}]))])
        assert (missing.value.index, missing.value.status) == (1, 404)
        assert await store.find("1.1", "instance", "1.1.2") is None, "the create was undone with the batch"

    run_store(emulators, Container, scenario)
