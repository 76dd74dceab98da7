"""The Cosmos adapter against the local Cosmos-protocol server."""

from __future__ import annotations

import asyncio
import uuid
from typing import Awaitable, Callable

import pytest
from azure.cosmos.aio import CosmosClient

from dicomweb.dicom.attributes import BY_KEYWORD
from dicomweb.dicom.query import Filter
from dicomweb.errors import BadRequest, DicomWebError, StorageFailure
from dicomweb.storage.index import CHANGEFEED, Conflict, IndexStore, build_search, document_id, patch_path


def _doc(study: str, series: str, sop: str, number: int) -> dict:
    return {"id": document_id("instance", sop), "type": "instance", "studyInstanceUID": study,
            "seriesInstanceUID": series, "sopInstanceUID": sop, "instanceNumber": number}


def _run(emulators: dict[str, str], scenario: Callable[[IndexStore], Awaitable[None]]) -> None:
    async def main() -> None:
        store = IndexStore(CosmosClient.from_connection_string(emulators["DICOMWEB_COSMOS_CONNECTION_STRING"]),
                           f"db-{uuid.uuid4().hex[:8]}", "index")
        await store.provision()
        try:
            await scenario(store)
        finally:
            await store.close()

    asyncio.run(main())


def test_documents_by_study_and_series(emulators: dict[str, str]) -> None:
    async def scenario(store: IndexStore) -> None:
        assert await store.count() == 0
        await store.create(_doc("1.1", "1.1.1", "1.1.1.2", 2))
        await store.create(_doc("1.1", "1.1.1", "1.1.1.1", 1))
        await store.create(_doc("1.1", "1.1.2", "1.1.2.1", 1))
        await store.create(_doc("2.2", "2.2.1", "2.2.1.1", 1))
        with pytest.raises(Conflict):
            await store.create(_doc("1.1", "1.1.1", "1.1.1.1", 1))
        assert [d["sopInstanceUID"] for d in await store.instances("1.1")] == ["1.1.1.1", "1.1.1.2", "1.1.2.1"]
        assert [d["sopInstanceUID"] for d in await store.instances("1.1", "1.1.2")] == ["1.1.2.1"]
        assert (await store.find("2.2", "instance", "2.2.1.1"))["seriesInstanceUID"] == "2.2.1"
        assert await store.find("1.1", "instance", "2.2.1.1") is None
        await store.replace({**(await store.find("1.1", "instance", "1.1.1.1")), "instanceNumber": 7})
        assert (await store.find("1.1", "instance", "1.1.1.1"))["instanceNumber"] == 7
        assert await store.delete("1.1", "instance", "1.1.1.1")
        assert not await store.delete("1.1", "instance", "1.1.1.1")
        assert await store.count() == 3

    _run(emulators, scenario)


def test_conditional_writes_and_concurrent_increments(emulators: dict[str, str]) -> None:
    async def scenario(store: IndexStore) -> None:
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
        assert (await store.summaries("1.1"))[0]["type"] in ("series", "study")

    _run(emulators, scenario)


def test_sequences_are_unique_and_the_watermark_only_rises(emulators: dict[str, str]) -> None:
    async def scenario(store: IndexStore) -> None:
        numbers = await asyncio.gather(*(store.next_sequence() for _ in range(50)))
        assert sorted(numbers) == list(range(1, 51))
        assert await store.watermark() == 0
        await store.raise_watermark(7)
        await store.raise_watermark(3)
        assert await store.watermark() == 7
        for sequence in (1, 2, 4):
            await store.add_change({"sequence": sequence, "timestamp": f"t{sequence}", "action": "create",
                                    "study": "1", "series": "1", "sop": f"1.{sequence}", "generation": "g"})
        await store.add_change({"sequence": 3, "timestamp": "t3", "action": "skip", "study": "", "series": "",
                                "sop": "", "generation": ""})
        with pytest.raises(Conflict):
            await store.add_change({"sequence": 2, "timestamp": "t", "action": "skip", "study": "", "series": "",
                                    "sop": "", "generation": ""})
        assert [c["sequence"] for c in await store.changes_after(1, 10)] == [2, 3, 4]
        assert [c["sequence"] for c in await store.visible_changes(0, 3, None, None, 10)] == [1, 2]
        assert (await store.latest_visible(3))["sequence"] == 2
        assert (await store.change(3))["action"] == "skip" and await store.change(9) is None
        assert all(doc["studyInstanceUID"] == CHANGEFEED for doc in await store.changes_after(0, 10))

    _run(emulators, scenario)


def test_a_document_above_2_mb_is_refused_for_good(emulators: dict[str, str]) -> None:
    """Cosmos DB's item limit (413): not a 503, which would have the client retry what never fits."""
    async def scenario(store: IndexStore) -> None:
        big = {**_doc("1.1", "1.1.1", "1.1.1.1", 1), "attributes": "x" * (2 * 1024 * 1024 + 100_000)}
        with pytest.raises(DicomWebError, match="2 MB") as refused:
            await store.create(big)
        assert not isinstance(refused.value, StorageFailure) and refused.value.status == 500
        await store.create(_doc("1.1", "1.1.1", "1.1.1.1", 1))
        with pytest.raises(DicomWebError, match="2 MB"):
            await store.patch("1.1", document_id("instance", "1.1.1.1"),
                              [{"op": "set", "path": "/attributes", "value": big["attributes"]}])

    _run(emulators, scenario)


def test_modalities_in_study_match_the_per_modality_counts() -> None:
    filters = [Filter(BY_KEYWORD["ModalitiesInStudy"], "in", ("SM", "CT"))]
    sql, params, _ = build_search("study", filters)
    assert "c.modalities[@p1] > 0 OR c.modalities[@p2] > 0" in sql and "c.numberOfInstances > 0" in sql
    assert [p["value"] for p in params[1:]] == ["SM", "CT"]
    with pytest.raises(BadRequest):
        build_search("study", [Filter(BY_KEYWORD["ModalitiesInStudy"], "prefix", ("S",))])
