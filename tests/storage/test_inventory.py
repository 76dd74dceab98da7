"""What the store holds and costs, against Azurite: the inventory's listing, ``dicomweb usage`` and ``GET /usage``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from azure.storage.blob.aio import BlobServiceClient

from dicomweb.config import DEFAULT_PRICES
from dicomweb.errors import StorageFailure
from dicomweb.storage.blobs import BlobStores
from dicomweb.storage.inventory import TIERS, BlobEntry
from dicomweb.storage.naming import Location
from dicomweb.usage import measure
from tests.conftest import ROOT, Server, blob_service, fresh_settings, instance_blob, start_server
from tests.oidc import Provider
from tests.wsi_factory import SlideFile, make_slide

PRICES = dict(DEFAULT_PRICES)


def _stores(emulators: dict[str, str], suffix: str) -> BlobStores:
    client = BlobServiceClient.from_connection_string(emulators["DICOMWEB_STORAGE_CONNECTION_STRING"])
    return BlobStores(client, f"i-{suffix}", f"s-{suffix}", f"t-{suffix}", f"n-{suffix}")


def test_the_inventory_lists_every_blob_with_size_and_billed_tier(emulators: dict[str, str]) -> None:
    """Sizes and tiers as Blob Storage reports them, page by page in name order; a rehydration still pending
    (the local Azurite takes a minute for one, as Azure takes hours) is Archive."""
    here = Location("1.2.3", "1.2.3.1", "1.2.3.1.1", "0000000000000a00000000000b")

    async def main() -> None:
        store = _stores(emulators, uuid.uuid4().hex[:8])
        await store.provision()
        try:
            instances = store.instances.container
            tiers = {"Hot": None, "Cool": "Cool", "Cold": "Cold", "Archive": "Archive", "pending": "Archive"}
            for number, (name, tier) in enumerate(tiers.items()):
                blob = instances.get_blob_client(Location("1.2.3", "1.2.3.1", f"1.2.3.1.{number}", "0a").instance)
                await blob.upload_blob(b"x" * (100 + number))
                if tier:
                    await blob.set_standard_blob_tier(tier)
                if name == "pending":
                    await blob.set_standard_blob_tier("Hot")  # rehydration starts: still Archive for a minute
                    assert (await blob.get_blob_properties()).archive_status == "rehydrate-pending-to-hot"
            for kind in ("json", "frames"):
                await store.sidecars.put(here.sidecar(kind), b"{}" * 7)
            await store.staging.put_record("sessions/abc.json", b"{}")
            pages = [page async for page in store.inventory.pages("instances", page_size=2)]
            assert [len(page) for page in pages] == [2, 2, 1]
            listed = [entry for page in pages for entry in page]
            assert [(e.size, e.tier) for e in listed] == [
                (100, "Hot"), (101, "Cool"), (102, "Cold"), (103, "Archive"), (104, "Archive")]
            assert [e.name for e in listed] == sorted(e.name for e in listed)
            sidecars = [e async for page in store.inventory.pages("sidecars") for e in page]
            assert sidecars == [BlobEntry(here.sidecar("frames"), 14, "Hot"), BlobEntry(here.sidecar("json"), 14, "Hot")]
            report = await measure(store.inventory, DEFAULT_PRICES, top=5)
            assert {t: report["tiers"][t]["bytes"] for t in TIERS} == {
                "Hot": 100 + 28 + 2, "Cool": 101, "Cold": 102, "Archive": 103 + 104}
            assert report["byKind"]["staging"]["total"]["bytes"] == 2
            (study,) = report["studies"]
            assert study["study"] == "1.2.3" and study["total"]["bytes"] == 100 + 101 + 102 + 103 + 104 + 28
        finally:
            for each in (store.instances, store.sidecars, store.staging):
                await each.container.delete_container()
            await store.close()

    asyncio.run(main())


def test_a_missing_container_is_a_storage_failure_naming_it(emulators: dict[str, str]) -> None:
    async def main() -> None:
        store = _stores(emulators, "never" + uuid.uuid4().hex[:8])  # not provisioned
        try:
            # The three listings run at once: whichever fails first names its container.
            with pytest.raises(StorageFailure, match="no container for (instances|sidecars|staging) listing"):
                await measure(store.inventory, DEFAULT_PRICES)
        finally:
            await store.close()

    asyncio.run(main())


# --- dicomweb usage and GET /usage on a running service ----------------------------------------------------


def _store(server: Server, files: list[SlideFile]) -> None:
    for file in files:
        stored = httpx.post(f"{server.base_url}/studies", content=file.path.read_bytes(), timeout=60,
                            headers={"content-type": "application/dicom"})
        assert stored.status_code == 200, stored.text


def _expected(env: dict[str, str]) -> tuple[dict[str, int], dict[str, dict[str, int]], dict[str, int]]:
    """(bytes per tier, bytes per tier of each kind, bytes of each study), listed with the SDK here."""
    service = blob_service(env)
    per_tier = dict.fromkeys(TIERS, 0)
    per_kind: dict[str, dict[str, int]] = {}
    per_study: dict[str, int] = {}
    for kind, setting in (("instances", "DICOMWEB_INSTANCE_CONTAINER"), ("sidecars", "DICOMWEB_SIDECAR_CONTAINER"),
                          ("staging", "DICOMWEB_STAGING_CONTAINER")):
        per_kind[kind] = dict.fromkeys(TIERS, 0)
        for blob in service.get_container_client(env[setting]).list_blobs():
            pending = (blob.archive_status or "").startswith("rehydrate-pending")
            tier = "Archive" if pending else str(blob.blob_tier)
            per_tier[tier] += blob.size
            per_kind[kind][tier] += blob.size
            if kind != "staging":
                study = blob.name.split("/")[0]
                per_study[study] = per_study.get(study, 0) + blob.size
    return per_tier, per_kind, per_study


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "dicomweb", "usage", *args], check=False, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.timeout(240)
def test_usage_counts_each_tier_and_the_cli_and_the_endpoint_agree(emulators: dict[str, str], tmp_path: Path) -> None:
    settings = fresh_settings(emulators)
    server = start_server(settings, tmp_path)
    try:
        slide = make_slide(tmp_path / "a", levels=2, base_size=(600, 400), associated=("LABEL",))
        other = make_slide(tmp_path / "b", levels=1, base_size=(300, 300), associated=False)
        small = make_slide(tmp_path / "c", levels=1, base_size=(256, 256), associated=False)
        for files in (slide, other, small):
            _store(server, files)
        session = httpx.post(f"{server.base_url}/uploads", json={"size": 5000})
        assert session.status_code == 201, session.text  # its record is in staging
        env = server.env
        instances = blob_service(env).get_container_client(env["DICOMWEB_INSTANCE_CONTAINER"])
        archived, cooled, rehydrating = (
            instances.get_blob_client(instance_blob(env, f.study_uid, f.series_uid, f.sop_uid))
            for f in (slide[0], other[0], slide[1]))
        archived.set_standard_blob_tier("Archive")
        cooled.set_standard_blob_tier("Cool")
        rehydrating.set_standard_blob_tier("Archive")
        rehydrating.set_standard_blob_tier("Hot")  # pending for a minute on the local Azurite: still Archive
        sizes = {name: blob.get_blob_properties().size for name, blob in
                 (("archived", archived), ("cooled", cooled), ("rehydrating", rehydrating))}

        answer = httpx.get(f"{server.base_url}/usage", timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("application/json")
        report = answer.json()
        from_cli = json.loads(_cli(env, "--json").stdout)
        per_tier, per_kind, per_study = _expected(env)
        assert rehydrating.get_blob_properties().archive_status == "rehydrate-pending-to-hot", "still pending"

        assert from_cli == report
        assert {tier: report["tiers"][tier]["bytes"] for tier in TIERS} == per_tier
        assert per_tier["Archive"] == sizes["archived"] + sizes["rehydrating"]
        assert per_tier["Cool"] == sizes["cooled"] and per_tier["Cold"] == 0
        for tier in TIERS:
            assert report["tiers"][tier]["usdPerMonth"] == pytest.approx(per_tier[tier] / 2**30 * PRICES[tier])
        assert report["total"]["bytes"] == sum(per_tier.values())
        for kind, tiers in per_kind.items():
            assert {tier: report["byKind"][kind]["tiers"][tier]["bytes"] for tier in TIERS} == tiers, kind
        assert report["byKind"]["staging"]["total"]["bytes"] > 0
        assert report["byKind"]["instances"]["tiers"]["Archive"]["blobs"] == 2
        assert {s["study"]: s["total"]["bytes"] for s in report["studies"]} == per_study
        totals = [s["total"]["bytes"] for s in report["studies"]]
        assert totals == sorted(totals, reverse=True) and report["studies"][0]["study"] == slide[0].study_uid
        assert report["otherStudies"]["studies"] == 0

        top = httpx.get(f"{server.base_url}/usage", params={"top": 1}).json()
        assert [s["study"] for s in top["studies"]] == [slide[0].study_uid]
        assert top["otherStudies"]["studies"] == 2
        assert top["otherStudies"]["total"]["bytes"] == per_study[other[0].study_uid] + per_study[small[0].study_uid]
        assert json.loads(_cli(env, "--json", "--top", "1").stdout) == top
        for bad in ("-1", "1001", "x"):
            refused = httpx.get(f"{server.base_url}/usage", params={"top": bad})
            assert refused.status_code == 400 and "top" in refused.json()["message"], bad

        text = _cli(env, "--top", "2").stdout
        assert text.splitlines()[0].split() == ["Hot", "Cool", "Cold", "Archive", "Total"]
        assert slide[0].study_uid in text and other[0].study_uid in text and small[0].study_uid not in text
        assert "1 other studies" in text and "GB = 2^30 bytes" in text
        priced = json.loads(_cli({**env, "DICOMWEB_PRICES_PER_GB_MONTH": "Hot=1,Cool=2,Cold=3,Archive=4"},
                                 "--json").stdout)
        assert priced["prices"] == {"Hot": 1, "Cool": 2, "Cold": 3, "Archive": 4}
        assert priced["tiers"]["Archive"]["usdPerMonth"] == pytest.approx(per_tier["Archive"] / 2**30 * 4)
    finally:
        server.stop()


def test_only_an_owner_sees_what_the_store_costs(secured: Server, provider: Provider) -> None:
    url = f"{secured.base_url}/usage"
    for roles in (["DICOM.Reader"], ["DICOM.Writer"]):
        refused = httpx.get(url, headers=provider.bearer(roles=roles))
        assert refused.status_code == 403, (roles, refused.text)
        assert "permission" in refused.json()["message"]
    assert httpx.get(url).status_code == 401
    owner = httpx.get(url, headers=provider.bearer(roles=["DICOM.Owner"]), timeout=60)
    assert owner.status_code == 200, owner.text
    assert owner.headers["content-type"].startswith("application/json")
    assert set(owner.json()["byKind"]) == {"instances", "sidecars", "staging", "softDeleted"}
