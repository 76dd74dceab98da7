"""What the store holds and costs (``dicomweb.usage``): the aggregation, on listings made up here (no storage)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from dicomweb.config import DEFAULT_PRICES
from dicomweb.errors import DicomWebError, StorageFailure
from dicomweb.storage.inventory import TIERS, BlobEntry, billed_tier
from dicomweb.usage import GB, Usage, _ahead, aggregate, dollars, human_bytes, monthly, table

PRICES = dict(DEFAULT_PRICES)


async def _pages(entries: list[BlobEntry] | tuple[BlobEntry, ...], size: int = 2) -> AsyncIterator[list[BlobEntry]]:
    """``entries`` as a listing would page them (small pages, so that studies straddle pages)."""
    for start in range(0, len(entries), size):
        await asyncio.sleep(0)
        yield list(entries[start:start + size])


def _run(instances: list[BlobEntry], sidecars: tuple[BlobEntry, ...] | list[BlobEntry] = (),
         staging: tuple[BlobEntry, ...] | list[BlobEntry] = (), top: int = 20) -> dict:
    async def main() -> dict:
        usage = await aggregate(_pages(instances), _pages(sidecars), _pages(staging), top)
        return usage.report(DEFAULT_PRICES)

    return asyncio.run(main())


def _file(study: str, size: int, tier: str = "Hot", sop: str = "1.9", kind: str = "dcm", **flags: bool) -> BlobEntry:
    return BlobEntry(f"{study}/{study}.1/{sop}/00000000000001aabbccddeeff.{kind}", size, tier, **flags)


def test_bytes_per_tier_and_the_monthly_price_of_each() -> None:
    instances = [_file("1.2.3", 1000, "Hot", "1"), _file("1.2.3", 3 * GB, "Archive", "2"),
                 _file("1.2.3", 5 * GB // 2, "Cool", "3"), _file("1.2.4", 7, "Cold", "4")]
    sidecars = [_file("1.2.3", 10, "Hot", "1", "json"), _file("1.2.3", 20, "Hot", "1", "frames")]
    staging = [BlobEntry("data/abc.dcm", 40, "Hot"), BlobEntry("sessions/abc.json", 2, "Hot")]
    report = _run(instances, sidecars, staging)
    assert {tier: report["tiers"][tier]["bytes"] for tier in TIERS} == {
        "Hot": 1000 + 30 + 42, "Cool": 5 * GB // 2, "Cold": 7, "Archive": 3 * GB}
    assert {tier: report["tiers"][tier]["blobs"] for tier in TIERS} == {"Hot": 5, "Cool": 1, "Cold": 1, "Archive": 1}
    for tier in TIERS:
        entry = report["tiers"][tier]
        assert entry["usdPerMonth"] == pytest.approx(entry["bytes"] / 2**30 * PRICES[tier], rel=1e-12)
    assert report["tiers"]["Archive"]["usdPerMonth"] == pytest.approx(3 * 0.00099)
    assert report["total"]["bytes"] == sum(report["tiers"][t]["bytes"] for t in TIERS)
    assert report["total"]["usdPerMonth"] == pytest.approx(sum(report["tiers"][t]["usdPerMonth"] for t in TIERS))
    assert report["total"]["blobs"] == 8
    kinds = report["byKind"]
    assert kinds["instances"]["total"]["bytes"] == 1000 + 3 * GB + 5 * GB // 2 + 7
    assert kinds["sidecars"]["tiers"]["Hot"]["bytes"] == 30
    assert kinds["staging"]["total"] == {"bytes": 42, "blobs": 2, "usdPerMonth": pytest.approx(monthly(42, 0.0184))}
    assert kinds["softDeleted"]["total"]["bytes"] == 0
    assert sum(k["total"]["bytes"] for k in kinds.values()) == report["total"]["bytes"]
    assert report["prices"] == PRICES and report["bytesPerGB"] == 2**30
    first, second = report["studies"]
    assert (first["study"], first["total"]["bytes"]) == ("1.2.3", 1000 + 3 * GB + 5 * GB // 2 + 30)
    assert first["tiers"]["Hot"]["bytes"] == 1030 and first["tiers"]["Archive"]["bytes"] == 3 * GB
    assert (second["study"], second["tiers"]["Cold"]["bytes"]) == ("1.2.4", 7)
    assert report["otherStudies"]["studies"] == 0 and report["otherStudies"]["total"]["bytes"] == 0


def test_a_study_is_merged_across_the_two_containers_in_name_order() -> None:
    """"1.2.3.4/" sorts before "1.2.3/" ('.' < '/'): the two listings are merged by that order, and a study
    with sidecars only, or files only, is a study all the same."""
    instances = [_file("1.2.3.4", 100), _file("1.2.3", 200, sop="1"), _file("1.2.3", 300, sop="2"),
                 _file("1.5", 1)]
    sidecars = [_file("1.2.3.4", 10, kind="frames"), _file("1.2.3.4", 10, kind="json"),
                _file("1.2.3", 20, sop="1", kind="json"), _file("1.4", 5, kind="json")]
    assert [e.name for e in instances] == sorted(e.name for e in instances)
    assert [e.name for e in sidecars] == sorted(e.name for e in sidecars)
    report = _run(instances, sidecars)
    assert {s["study"]: s["total"]["bytes"] for s in report["studies"]} == {
        "1.2.3": 520, "1.2.3.4": 120, "1.4": 5, "1.5": 1}
    assert [s["study"] for s in report["studies"]] == ["1.2.3", "1.2.3.4", "1.4", "1.5"], "largest first"


def test_top_bounds_the_studies_listed_and_sums_the_rest() -> None:
    sizes = {f"1.2.{n}": size for n, size in enumerate([50, 10, 70, 30, 70, 20, 60])}
    instances = sorted((_file(study, size) for study, size in sizes.items()), key=lambda e: e.name)
    report = _run(instances, top=3)
    assert [(s["study"], s["total"]["bytes"]) for s in report["studies"]] == [
        ("1.2.2", 70), ("1.2.4", 70), ("1.2.6", 60)]
    other = report["otherStudies"]
    assert other["studies"] == 4 and other["total"]["bytes"] == 50 + 10 + 30 + 20
    assert other["tiers"]["Hot"]["blobs"] == 4
    nothing = _run(instances, top=0)
    assert nothing["studies"] == [] and nothing["otherStudies"]["studies"] == 7
    assert nothing["otherStudies"]["total"]["bytes"] == nothing["total"]["bytes"] == sum(sizes.values())
    with pytest.raises(ValueError):
        Usage(-1)


def test_memory_holds_the_top_studies_whatever_the_store() -> None:
    """20,000 studies, top 5: the aggregation keeps five studies and totals, never a list of names."""
    async def listing() -> AsyncIterator[list[BlobEntry]]:
        for page in range(20):
            yield [_file(f"1.{page:03d}.{n:04d}", n + page) for n in range(1000)]

    async def main() -> tuple[Usage, dict]:
        usage = await aggregate(listing(), _pages([]), _pages([]), 5)
        return usage, usage.report(DEFAULT_PRICES)

    usage, report = asyncio.run(main())
    assert len(usage._largest) == 5 and len(report["studies"]) == 5
    assert report["otherStudies"]["studies"] == 20_000 - 5
    assert report["studies"][0]["study"] == "1.019.0999" and report["studies"][0]["total"]["bytes"] == 999 + 19


def test_soft_deleted_blobs_cost_but_belong_to_no_study_and_odd_names_to_no_study() -> None:
    instances = [_file("1.2.3", 100, sop="1"), _file("1.2.3", 400, "Cool", sop="2", soft_deleted=True),
                 BlobEntry("1.2.3/stray.dcm", 8, "Hot"), BlobEntry("zz-readme.txt", 9, "Hot")]
    sidecars = [_file("1.2.3", 50, sop="1", kind="json", soft_deleted=True)]
    report = _run(instances, sidecars)
    assert report["byKind"]["softDeleted"]["total"]["bytes"] == 450
    assert report["byKind"]["softDeleted"]["tiers"]["Cool"]["bytes"] == 400
    assert report["byKind"]["instances"]["total"]["bytes"] == 117
    assert report["total"]["bytes"] == 567
    (study,) = report["studies"]
    assert study["total"]["bytes"] == 100


def test_a_pending_rehydration_is_still_archive() -> None:
    assert billed_tier("Archive", "rehydrate-pending-to-hot") == "Archive"
    assert billed_tier("Hot", "rehydrate-pending-to-cool") == "Archive"  # as the blob reports it meanwhile
    assert billed_tier("Cold", None) == "Cold" and billed_tier("cool", None) == "Cool"
    assert billed_tier(None, None) == "Hot"  # no tier (append or page blob): the account's default


def test_a_listing_out_of_name_order_is_refused() -> None:
    instances = [_file("1.2.3", 1), _file("1.2.4", 1), _file("1.2.3", 1, sop="2")]
    with pytest.raises(DicomWebError, match="not in name order"):
        _run(instances)


def test_a_failed_listing_fails_the_whole_and_stops_the_others() -> None:
    stopped = []

    async def broken() -> AsyncIterator[list[BlobEntry]]:
        yield [_file("1.2.3", 1)]
        raise StorageFailure("Blob Storage failed on sidecars listing: ServiceRequestError")

    async def endless() -> AsyncIterator[list[BlobEntry]]:
        try:
            n = 0
            while True:
                n += 1
                await asyncio.sleep(0)
                yield [BlobEntry(f"data/{n}.dcm", 1, "Hot")]
        finally:
            stopped.append(True)

    async def main() -> None:
        staging = _ahead(endless())
        try:
            await aggregate(_ahead(_pages([_file("1.2.3", 5)])), _ahead(broken()), staging, 3)
        finally:
            await staging.aclose()

    with pytest.raises(StorageFailure, match="sidecars listing"):
        asyncio.run(main())
    assert stopped == [True]


def test_the_listing_runs_at_most_a_few_pages_ahead() -> None:
    fetched = []

    async def listing() -> AsyncIterator[list[BlobEntry]]:
        for n in range(100):
            fetched.append(n)
            yield [BlobEntry(f"data/{n}", 1, "Hot")]

    async def main() -> None:
        pages = _ahead(listing(), depth=2)
        assert (await anext(pages))[0].name == "data/0"
        await asyncio.sleep(0.05)
        assert len(fetched) <= 4  # the one read, two queued, one waiting to be queued
        await pages.aclose()

    asyncio.run(main())


def test_the_table() -> None:
    instances = [_file("1.2.3", 3 * GB, "Archive", "1"), _file("1.2.3", 100 * GB, "Hot", "2"),
                 _file("1.2.4", 1536, "Hot"), _file("1.2.5", 1, "Hot")]
    text = table(_run(instances, top=2))
    header, *rows = text.splitlines()
    assert header.split() == ["Hot", "Cool", "Cold", "Archive", "Total"]
    everything = next(row for row in rows if row.startswith("everything")).split()
    assert everything == ["everything", "100.0", "GiB", "$1.84", "-", "-", "3.0", "GiB", "<$0.01", "103.0", "GiB",
                          "$1.84"]
    assert next(row for row in rows if row.startswith("  soft-deleted")).split() == ["soft-deleted", *"-" * 5]
    (study,) = [row.split() for row in rows if row.startswith("  1.2.3 ")]
    assert study[-3:] == ["103.0", "GiB", "$1.84"]
    assert any(row.startswith("  1.2.4 ") and "1.5 KiB <$0.01" in row for row in rows)
    assert any(row.startswith("  1 other studies ") and "1 B <$0.01" in row for row in rows)
    assert "GB = 2^30 bytes" in text and "Archive $0.00099" in text
    assert human_bytes(0) == "0 B" and human_bytes(1023) == "1023 B" and human_bytes(3 * 2**40) == "3.0 TiB"
    assert dollars(0) == "$0" and dollars(0.004) == "<$0.01" and dollars(1234.5) == "$1,234.50"
