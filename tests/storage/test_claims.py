"""The claims against the local Cosmos-protocol server."""

from __future__ import annotations

import pytest

from dicomweb.storage.claims import ClaimStore, claim_partition
from dicomweb.storage.cosmos import Conflict
from tests.storage.test_cosmos import run_store


def _claim(sop: str, study: str, state: str, sequence: int) -> dict:
    return {"id": f"claim:{sop}", "type": "claim", "studyInstanceUID": claim_partition(sop), "sop": sop,
            "study": study, "series": f"{study}.1", "generation": "g", "sequence": sequence, "state": state}


def test_claims_are_read_changed_and_removed_only_as_read(emulators: dict[str, str]) -> None:
    async def scenario(store: ClaimStore) -> None:
        for sop, study, state, sequence in (("1.1.1.1", "1.1", "current", 1), ("1.1.1.2", "1.1", "deleting", 2),
                                            ("1.1.1.3", "1.1", "deleting", 3), ("2.2.1.1", "2.2", "deleting", 4)):
            await store.create(_claim(sop, study, state, sequence))
        assert (await store.get("1.1.1.1"))["state"] == "current" and await store.get("9.9") is None
        assert sorted(c["sop"] for c in await store.in_state("deleting", "1.1")) == ["1.1.1.2", "1.1.1.3"]
        assert [c["sop"] for c in await store.in_state("deleting", "1.1", "1.1.1", "1.1.1.3")] == ["1.1.1.3"]
        assert (await store.of_change(4))["sop"] == "2.2.1.1" and await store.of_change(5) is None
        read = await store.get("1.1.1.2")
        with pytest.raises(Conflict):
            await store.update("1.1.1.2", [{"op": "set", "path": "/state", "value": "current"}],
                               "FROM c WHERE c.state = 'publishing'")
        changed = await store.update("1.1.1.2", [{"op": "incr", "path": "/sequence", "value": 1}],
                                     "FROM c WHERE c.sequence = 2")
        assert changed["sequence"] == 3
        with pytest.raises(Conflict):
            await store.remove(read)  # changed since it was read
        assert await store.remove(changed)
        assert not await store.remove(changed), "gone already"

    run_store(emulators, ClaimStore, scenario)
