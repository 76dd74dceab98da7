"""The Cosmos adapter against the local Cosmos-protocol server."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from azure.cosmos.aio import CosmosClient

from dicomweb.errors import Duplicate
from dicomweb.storage.index import IndexStore, document_id


def _doc(study: str, series: str, sop: str, number: int) -> dict:
    return {"id": document_id("instance", sop), "type": "instance", "studyInstanceUID": study,
            "seriesInstanceUID": series, "sopInstanceUID": sop, "instanceNumber": number}


def test_documents_by_study_and_series(emulators: dict[str, str]) -> None:
    async def main() -> None:
        store = IndexStore(CosmosClient.from_connection_string(emulators["DICOMWEB_COSMOS_CONNECTION_STRING"]),
                           f"db-{uuid.uuid4().hex[:8]}", "index")
        await store.ensure()
        try:
            assert await store.count() == 0
            await store.create(_doc("1.1", "1.1.1", "1.1.1.2", 2))
            await store.create(_doc("1.1", "1.1.1", "1.1.1.1", 1))
            await store.create(_doc("1.1", "1.1.2", "1.1.2.1", 1))
            await store.create(_doc("2.2", "2.2.1", "2.2.1.1", 1))
            with pytest.raises(Duplicate):
                await store.create(_doc("1.1", "1.1.1", "1.1.1.1", 1))
            assert [d["sopInstanceUID"] for d in await store.instances("1.1")] == ["1.1.1.1", "1.1.1.2", "1.1.2.1"]
            assert [d["sopInstanceUID"] for d in await store.instances("1.1", "1.1.2")] == ["1.1.2.1"]
            assert (await store.find("2.2", "instance", "2.2.1.1"))["seriesInstanceUID"] == "2.2.1"
            assert await store.find("1.1", "instance", "2.2.1.1") is None
            await store.upsert({**_doc("1.1", "1.1.1", "1.1.1.1", 7)})
            assert (await store.find("1.1", "instance", "1.1.1.1"))["instanceNumber"] == 7
            await store.delete("1.1", "instance", "1.1.1.1")
            await store.delete("1.1", "instance", "1.1.1.1")
            assert await store.count() == 3
        finally:
            await store.close()

    asyncio.run(main())
