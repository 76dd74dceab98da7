"""The search index against the local Cosmos-protocol server."""

from __future__ import annotations

import pytest

from dicomweb.dicom.attributes import BY_KEYWORD
from dicomweb.dicom.query import Filter
from dicomweb.errors import BadRequest
from dicomweb.storage.cosmos import Conflict, document_id
from dicomweb.storage.index import IndexStore, build_search
from tests.storage.test_cosmos import run_store


def _doc(study: str, series: str, sop: str, number: int) -> dict:
    return {"id": document_id("instance", sop), "type": "instance", "studyInstanceUID": study,
            "seriesInstanceUID": series, "sopInstanceUID": sop, "instanceNumber": number}


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

    run_store(emulators, IndexStore, scenario)


def test_modalities_in_study_match_the_per_modality_counts() -> None:
    filters = [Filter(BY_KEYWORD["ModalitiesInStudy"], "in", ("SM", "CT"))]
    sql, params, _ = build_search("study", filters)
    assert "c.modalities[@p1] > 0 OR c.modalities[@p2] > 0" in sql and "c.numberOfInstances > 0" in sql
    assert [p["value"] for p in params[1:]] == ["SM", "CT"]
    with pytest.raises(BadRequest):
        build_search("study", [Filter(BY_KEYWORD["ModalitiesInStudy"], "prefix", ("S",))])
