"""The change feed's documents against the local Cosmos-protocol server."""

from __future__ import annotations

import asyncio

import pytest

from dicomweb.storage.changes import CHANGEFEED, ChangeStore
from dicomweb.storage.cosmos import Conflict
from tests.storage.test_cosmos import run_store


def test_sequences_are_unique_and_the_watermark_only_rises(emulators: dict[str, str]) -> None:
    async def scenario(store: ChangeStore) -> None:
        numbers = await asyncio.gather(*(store.next_sequence() for _ in range(50)))
        assert sorted(numbers) == list(range(1, 51))
        assert await store.watermark() == 0
        await store.raise_watermark(7)
        await store.raise_watermark(3)
        assert await store.watermark() == 7
        for sequence in (1, 2, 4):
            await store.add({"sequence": sequence, "timestamp": f"t{sequence}", "action": "create",
                                    "study": "1", "series": "1", "sop": f"1.{sequence}", "generation": "g"})
        await store.add({"sequence": 3, "timestamp": "t3", "action": "skip", "study": "", "series": "",
                                "sop": "", "generation": ""})
        with pytest.raises(Conflict):
            await store.add({"sequence": 2, "timestamp": "t", "action": "skip", "study": "", "series": "",
                                    "sop": "", "generation": ""})
        assert [c["sequence"] for c in await store.after(1, 10)] == [2, 3, 4]
        assert [c["sequence"] for c in await store.visible(0, 3, None, None, 10)] == [1, 2]
        assert (await store.latest_visible(3))["sequence"] == 2
        assert (await store.get(3))["action"] == "skip" and await store.get(9) is None
        assert all(doc["studyInstanceUID"] == CHANGEFEED for doc in await store.after(0, 10))

    run_store(emulators, ChangeStore, scenario)


