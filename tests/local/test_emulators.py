"""The local stand-ins refuse what Azure refuses: Cosmos DB's item and patch limits, its throttling and its
all-or-nothing transactional batches, the Archive tier's offline blobs and slow rehydration
(``dicomweb/local/*.js``), and nothing is created but by provisioning. And they do what Azure's platform does
around Blob Storage: last access times, and blob events posted to a queue as Event Grid posts them."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.cosmos import CosmosClient, PartitionKey
from azure.cosmos.exceptions import CosmosBatchOperationError, CosmosHttpResponseError
from azure.storage.blob import BlobBlock, BlobServiceClient, ContainerClient, RehydratePriority, StandardBlobTier
from azure.storage.queue import QueueClient, QueueServiceClient

from dicomweb.config import Settings
from dicomweb.errors import StorageFailure
from dicomweb.local.emulators import Emulators, free_port
from dicomweb.local.provision import provision
from dicomweb.service import Service
from tests.conftest import fresh_settings

MB = 1024 * 1024
REHYDRATE_SECONDS = 3.0
#: The container metadata that stands for an Event Grid subscription delivering to a Storage Queue.
EVENTS_METADATA = "dicomweb_events_queue"
EVENTS_QUEUE = "slow-events"
#: The Cosmos SDK talks to the local server's self-signed certificate without checking it.
pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")


def _container(settings: dict[str, str]):  # type: ignore[no-untyped-def]
    client = CosmosClient.from_connection_string(settings["DICOMWEB_COSMOS_CONNECTION_STRING"])
    database = client.create_database_if_not_exists(f"limits-{uuid.uuid4().hex[:8]}")
    return database.create_container_if_not_exists("items", partition_key=PartitionKey(path="/pk"))


def _status(call) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(CosmosHttpResponseError) as failed:
        call()
    return failed.value.status_code


def test_cosmos_refuses_items_above_2_mb_however_they_are_written(emulators: dict[str, str]) -> None:
    container = _container(emulators)
    big = "x" * (2 * MB + 100_000)  # a 2.1 MB item
    assert _status(lambda: container.create_item({"id": "a", "pk": "p", "v": big})) == 413
    assert _status(lambda: container.upsert_item({"id": "a", "pk": "p", "v": big})) == 413
    container.create_item({"id": "a", "pk": "p", "v": "small"})
    assert _status(lambda: container.replace_item("a", {"id": "a", "pk": "p", "v": big})) == 413
    half = "y" * (MB + 100_000)
    container.patch_item("a", "p", [{"op": "set", "path": "/v", "value": half}])
    # Each patch is small; the document it would make is not.
    assert _status(lambda: container.patch_item("a", "p", [{"op": "set", "path": "/w", "value": half}])) == 413
    assert container.read_item("a", partition_key="p")["v"] == half
    almost = {"id": "b", "pk": "p", "v": "z" * (2 * MB - 100)}  # just under: Cosmos measures the JSON in UTF-8
    container.create_item(almost)
    assert _status(lambda: container.create_item({"id": "c", "pk": "p", "v": "é" * (MB + 10)})) == 413


def test_cosmos_refuses_patches_of_more_than_10_operations(emulators: dict[str, str]) -> None:
    container = _container(emulators)
    container.create_item({"id": "a", "pk": "p"})
    operations = [{"op": "set", "path": f"/f{n}", "value": n} for n in range(11)]
    assert _status(lambda: container.patch_item("a", "p", operations)) == 400
    assert "f0" not in container.read_item("a", partition_key="p")
    container.patch_item("a", "p", operations[:10])
    assert container.read_item("a", partition_key="p")["f9"] == 9


def test_a_cosmos_patch_condition_is_the_documents_and_keeps_its_case(emulators: dict[str, str]) -> None:
    """Cosmos DB evaluates a patch's condition on the one document, case-sensitive (the npm server lower-cased
    it, and scanned every document of the container for it)."""
    container = _container(emulators)
    container.create_item({"id": "a", "pk": "p", "v": "ABC"})
    container.create_item({"id": "a", "pk": "q", "v": "xyz"})  # the same id in another partition
    incr = [{"op": "incr", "path": "/n", "value": 1}]
    assert container.patch_item("a", "p", incr, filter_predicate="FROM c WHERE c.v = 'ABC'")["n"] == 1
    assert _status(lambda: container.patch_item("a", "p", incr, filter_predicate="FROM c WHERE c.v = 'abc'")) == 412
    assert _status(lambda: container.patch_item("a", "q", incr, filter_predicate="FROM c WHERE c.v = 'ABC'")) == 412
    assert "n" not in container.read_item("a", partition_key="q")


def _documents(container) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    """Every stored document by id, system properties (``_etag``, ``_rid``, ``_ts``) included."""
    return {document["id"]: document for document in container.read_all_items()}


def _failed_batch(container, operations: list) -> CosmosBatchOperationError:  # type: ignore[no-untyped-def]
    with pytest.raises(CosmosBatchOperationError) as failed:
        container.execute_item_batch(batch_operations=operations, partition_key="p")
    return failed.value


def test_a_cosmos_batch_applies_every_operation_and_returns_their_results(emulators: dict[str, str]) -> None:
    container = _container(emulators)
    container.create_item({"id": "a", "pk": "p", "n": 1})
    other = container.create_item({"id": "b", "pk": "p", "v": "old"})
    gone = container.create_item({"id": "c", "pk": "p"})
    results = container.execute_item_batch(batch_operations=[
        ("create", ({"id": "new", "pk": "p", "n": 0},)),
        ("patch", ("a", [{"op": "incr", "path": "/n", "value": 1}]), {"filter_predicate": "FROM c WHERE c.n = 1"}),
        ("replace", ("b", {"id": "b", "pk": "p", "v": "new"}), {"if_match_etag": other["_etag"]}),
        ("delete", ("c",), {"if_match_etag": gone["_etag"]}),
        ("read", ("a",)),
        ("upsert", ({"id": "new", "pk": "p", "n": 7},)),
    ], partition_key="p")
    assert [result["statusCode"] for result in results] == [201, 200, 200, 204, 200, 200]
    assert results[0]["resourceBody"]["n"] == 0
    assert results[1]["resourceBody"]["n"] == 2 and results[4]["resourceBody"]["n"] == 2
    assert results[4]["eTag"] == results[1]["eTag"]  # the read sees the patch before it
    stored = _documents(container)
    assert set(stored) == {"a", "b", "new"}
    assert stored["a"]["_etag"] == results[1]["eTag"] and stored["b"]["_etag"] == results[2]["eTag"]
    assert stored["b"]["v"] == "new" and stored["new"]["n"] == 7 and stored["new"]["_etag"] == results[5]["eTag"]


# Each fails the third operation of a batch whose first two patched "a" (n 1 -> 2) and deleted "b".
@pytest.mark.parametrize(("operation", "status"), [
    (("create", ({"id": "c", "pk": "p"},)), 409),
    (("patch", ("a", [{"op": "set", "path": "/x", "value": 1}]), {"filter_predicate": "FROM c WHERE c.n = 1"}), 412),
    (("delete", ("a",), {"if_match_etag": "stale"}), 412),
    (("patch", ("missing", [{"op": "set", "path": "/x", "value": 1}])), 404),
    (("create", ({"id": "elsewhere", "pk": "q"},)), 400),  # another partition than the batch's
], ids=["create-existing", "patch-condition-false", "delete-stale-etag", "patch-missing", "other-partition"])
def test_a_failed_cosmos_batch_leaves_every_document_as_it_was(
        emulators: dict[str, str], operation: tuple, status: int) -> None:
    container = _container(emulators)
    for document in ({"id": "a", "pk": "p", "n": 1}, {"id": "b", "pk": "p"}, {"id": "c", "pk": "p"}):
        container.create_item(document)
    before = _documents(container)
    failure = _failed_batch(container, [
        ("patch", ("a", [{"op": "incr", "path": "/n", "value": 1}])),
        ("delete", ("b",)),
        operation,
        ("create", ({"id": "after", "pk": "p"},)),
    ])
    assert (failure.error_index, failure.status_code) == (2, status)
    assert [result["statusCode"] for result in failure.operation_responses] == [424, 424, status, 424]
    assert _documents(container) == before  # same bodies and _etag, "b" back, nothing created


def test_a_cosmos_batch_of_more_than_100_operations_is_refused_whole(emulators: dict[str, str]) -> None:
    container = _container(emulators)
    creates = [("create", ({"id": f"d{n}", "pk": "p"},)) for n in range(101)]
    assert _status(lambda: container.execute_item_batch(batch_operations=creates, partition_key="p")) == 400
    assert _documents(container) == {}
    assert len(container.execute_item_batch(batch_operations=creates[:100], partition_key="p")) == 100


def test_a_cosmos_batch_with_an_item_above_2_mb_is_rolled_back(emulators: dict[str, str]) -> None:
    container = _container(emulators)
    half = "y" * (MB + 100_000)
    container.create_item({"id": "a", "pk": "p", "v": half})
    container.create_item({"id": "b", "pk": "p", "n": 1})
    before = _documents(container)
    small_writes = [("create", ({"id": "new", "pk": "p"},)), ("replace", ("b", {"id": "b", "pk": "p", "n": 2}))]
    too_large = [
        ("create", ({"id": "big", "pk": "p", "v": "x" * (2 * MB + 100_000)},)),  # 2.1 MB
        ("patch", ("a", [{"op": "set", "path": "/w", "value": half}])),  # a small patch making a 2.2 MB item
    ]
    for operation in too_large:
        failure = _failed_batch(container, [*small_writes, operation])
        assert (failure.error_index, failure.status_code) == (2, 413)
        assert _documents(container) == before
    # A request body above the server's batch limit is refused before any operation runs.
    two_halves = [("create", ({"id": f"h{n}", "pk": "p", "v": half},)) for n in range(2)]
    assert _status(lambda: container.execute_item_batch(batch_operations=two_halves, partition_key="p")) == 413
    assert _documents(container) == before


@pytest.fixture
def throttling(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A Cosmos server alone that answers every document request 429."""
    stack = Emulators(tmp_path, cosmos_port=free_port(), cosmos_throttle=1.0)
    stack.restart("cosmos")
    settings = {**stack.settings(), "DICOMWEB_COSMOS_DATABASE": "throttled", "DICOMWEB_STORAGE_TIMEOUT_SECONDS": "2"}
    try:
        provision(settings, index_only=True)  # control-plane calls are not throttled
        yield settings
    finally:
        stack.stop()


def test_the_cosmos_throttle_answers_429_with_a_wait_and_outlasting_it_is_a_503(throttling: dict[str, str]) -> None:
    endpoint = throttling["DICOMWEB_COSMOS_CONNECTION_STRING"].split("AccountEndpoint=")[1].split(";")[0]
    answer = httpx.post(f"{endpoint}dbs/throttled/colls/index/docs", json={"id": "a", "studyInstanceUID": "s"},
                        headers={"x-ms-documentdb-partitionkey": '["s"]'}, verify=False)
    assert answer.status_code == 429
    assert answer.headers["x-ms-retry-after-ms"] == "100" and answer.headers["x-ms-substatus"] == "3200"
    assert answer.json()["code"] == "TooManyRequests"

    async def scenario() -> StorageFailure:
        service = await Service.create(Settings.from_env(throttling))
        try:
            started = time.monotonic()
            with pytest.raises(StorageFailure) as failed:
                await service.index.find("s", "study", "s")
            # The SDK retried (9 times, 100 ms apart) before giving up, well within the storage timeout.
            assert 0.8 < time.monotonic() - started < 10
            return failed.value
        finally:
            await service.close()

    failure = asyncio.run(scenario())
    assert failure.status == 503 and failure.retry_after >= 1 and "throttling" in failure.message


def test_the_cosmos_server_counts_the_document_requests_it_answers(tmp_path: Path) -> None:
    """What bench_stow_concurrency reports as Cosmos calls per store."""
    stack = Emulators(tmp_path, cosmos_port=free_port())
    stack.restart("cosmos")
    try:
        provision({**stack.settings(), "DICOMWEB_COSMOS_DATABASE": "counted"}, index_only=True)
        container = CosmosClient.from_connection_string(stack.settings()["DICOMWEB_COSMOS_CONNECTION_STRING"]) \
            .get_database_client("counted").get_container_client(Settings.cosmos_container)
        before = stack.cosmos_requests()
        for n in range(5):
            container.create_item({"id": f"study:{n}", "type": "study", "studyInstanceUID": str(n)})
        container.read_item("study:0", partition_key="0")
        assert stack.cosmos_requests() - before == 6
    finally:
        stack.stop()


def test_a_partly_throttled_cosmos_is_absorbed_by_the_sdk_retries(tmp_path: Path) -> None:
    stack = Emulators(tmp_path, cosmos_port=free_port(), cosmos_throttle=0.3)
    stack.restart("cosmos")
    settings = {**stack.settings(), "DICOMWEB_COSMOS_DATABASE": "partly"}
    try:
        provision(settings, index_only=True)

        async def scenario() -> None:
            service = await Service.create(Settings.from_env(settings))
            try:
                for n in range(20):
                    await service.index.create({"id": f"study:{n}", "type": "study", "studyInstanceUID": str(n)})
                assert await service.index.count() == 20
            finally:
                await service.close()

        asyncio.run(scenario())
    finally:
        stack.stop()


def test_the_service_creates_nothing_and_names_what_is_missing(emulators: dict[str, str]) -> None:
    """In Azure the Bicep owns the database, containers and queues: a missing one is a 503 naming it."""
    settings = Settings.from_env({**emulators, "DICOMWEB_COSMOS_DATABASE": f"absent-{uuid.uuid4().hex[:8]}",
                                  "DICOMWEB_INSTANCE_CONTAINER": f"absent-{uuid.uuid4().hex[:8]}",
                                  "DICOMWEB_JOBS_QUEUE": f"absent-{uuid.uuid4().hex[:8]}"})

    async def scenario() -> None:
        service = await Service.create(settings)
        try:
            for call in (service.index.find("s", "study", "s"), service.index.count(),
                         service.index.create({"id": "study:s", "type": "study", "studyInstanceUID": "s"})):
                with pytest.raises(StorageFailure, match=f"no container 'index' in database '{settings.cosmos_database}'"):
                    await call
            with pytest.raises(StorageFailure, match="no container"):
                async for _ in service.blobs.instances.studies():
                    pass
            with pytest.raises(StorageFailure, match=f"no queue '{settings.jobs_queue}'"):
                await service.jobs.send({"kind": "nothing"})
        finally:
            await service.close()

    asyncio.run(scenario())
    cosmos = CosmosClient.from_connection_string(emulators["DICOMWEB_COSMOS_CONNECTION_STRING"])
    assert settings.cosmos_database not in {db["id"] for db in cosmos.list_databases()}
    blobs = BlobServiceClient.from_connection_string(emulators["DICOMWEB_STORAGE_CONNECTION_STRING"])
    assert not blobs.get_container_client(settings.instance_container).exists()


def test_a_restarted_cosmos_server_is_provisioned_again(tmp_path: Path) -> None:
    stack = Emulators(tmp_path / "emulators")
    settings = stack.start()
    try:
        own = fresh_settings(settings)
        stack.provision({"DICOMWEB_COSMOS_DATABASE": own["DICOMWEB_COSMOS_DATABASE"]})
        os.killpg(stack.processes["cosmos"].pid, signal.SIGKILL)
        stack.processes["cosmos"].wait(10)
        stack.restart("cosmos")
        cosmos = CosmosClient.from_connection_string(settings["DICOMWEB_COSMOS_CONNECTION_STRING"])
        databases = {db["id"] for db in cosmos.list_databases()}
        assert databases == {Settings.cosmos_database, own["DICOMWEB_COSMOS_DATABASE"]}
        container = cosmos.get_database_client(Settings.cosmos_database).get_container_client(Settings.cosmos_container)
        properties = container.read()
        assert properties["partitionKey"]["paths"] == ["/studyInstanceUID"]
        assert properties["indexingPolicy"]["excludedPaths"]  # the policy the Bicep deploys
    finally:
        stack.stop()


# The Archive tier.


def _archived(container: ContainerClient, name: str, data: bytes = b"archived bytes") -> None:
    blob = container.get_blob_client(name)
    blob.upload_blob(data, overwrite=True, tags={"dicomweb_tier": "auto"}, metadata={"kept": "yes"})
    blob.set_standard_blob_tier(StandardBlobTier.ARCHIVE)


def _code(call) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(HttpResponseError) as failed:
        call()
    return failed.value.status_code, failed.value.error_code or ""


def test_an_archived_blob_refuses_reads_and_changes_as_azure_does(emulators: dict[str, str]) -> None:
    container = BlobServiceClient.from_connection_string(
        emulators["DICOMWEB_STORAGE_CONNECTION_STRING"]).create_container(f"archive-{uuid.uuid4().hex[:8]}")
    _archived(container, "a")
    blob = container.get_blob_client("a")
    archived = (409, "BlobArchived")
    assert _code(lambda: blob.set_blob_metadata({"deleting": "1"})) == archived
    assert _code(lambda: blob.download_blob().readall()) == archived
    assert _code(lambda: blob.set_http_headers()) == archived
    assert _code(lambda: blob.upload_blob(b"new", overwrite=True)) == archived
    blob.stage_block("YmxvY2s=", b"new")
    assert _code(lambda: blob.commit_block_list([BlobBlock(block_id="YmxvY2s=")])) == archived
    assert _code(lambda: blob.create_snapshot()) == archived
    assert _code(lambda: container.get_blob_client("copy").start_copy_from_url(blob.url)) == archived
    # What stays allowed: properties, metadata and tags read, tags written, listing, and deletion.
    properties = blob.get_blob_properties()
    assert properties.blob_tier == "Archive" and properties.metadata == {"kept": "yes"}
    blob.set_blob_tags({**blob.get_blob_tags(), "deleting": "1"})
    assert blob.get_blob_tags() == {"dicomweb_tier": "auto", "deleting": "1"}
    assert [(b.name, b.tags) for b in container.list_blobs(include=["tags"])] == [
        ("a", {"dicomweb_tier": "auto", "deleting": "1"})]
    blob.delete_blob()
    with pytest.raises(ResourceNotFoundError):
        blob.get_blob_properties()


@pytest.fixture
def slow_rehydration(tmp_path: Path) -> Iterator[tuple[Emulators, ContainerClient]]:
    """Azurite's Blob and Queue services alone, rehydrations taking REHYDRATE_SECONDS; the container's blob events
    go to the queue EVENTS_QUEUE."""
    stack = Emulators(tmp_path, blob_port=free_port(), queue_port=free_port(), rehydrate_seconds=REHYDRATE_SECONDS)
    try:
        stack.restart("queue")
        stack.restart("azurite")
        QueueServiceClient.from_connection_string(stack.settings()["DICOMWEB_QUEUES"]).create_queue(EVENTS_QUEUE)
        service = BlobServiceClient.from_connection_string(stack.settings()["DICOMWEB_STORAGE_CONNECTION_STRING"])
        yield stack, service.create_container("slow", metadata={EVENTS_METADATA: EVENTS_QUEUE})
    finally:
        stack.stop()


def _wait_online(blob, tier: str) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while (properties := blob.get_blob_properties()).blob_tier != tier:
        assert properties.archive_status == f"rehydrate-pending-to-{tier.lower()}"
        assert time.monotonic() - started < REHYDRATE_SECONDS + 5
        time.sleep(0.1)
    assert properties.archive_status is None
    return time.monotonic() - started


def test_a_rehydration_stays_pending_for_its_time_then_completes(
        slow_rehydration: tuple[Emulators, ContainerClient]) -> None:
    stack, container = slow_rehydration
    _archived(container, "a")
    blob = container.get_blob_client("a")
    started = time.monotonic()
    blob.set_standard_blob_tier(StandardBlobTier.HOT)
    properties = blob.get_blob_properties()
    assert (properties.blob_tier, properties.archive_status, properties.rehydrate_priority) == (
        "Archive", "rehydrate-pending-to-hot", "Standard")
    assert _code(lambda: blob.download_blob().readall()) == (409, "BlobArchived")
    assert _code(lambda: blob.set_blob_metadata({"x": "1"})) == (409, "BlobArchived")
    assert _code(lambda: blob.set_standard_blob_tier(StandardBlobTier.COOL)) == (409, "BlobBeingRehydrated")
    blob.set_standard_blob_tier(StandardBlobTier.HOT, rehydrate_priority=RehydratePriority.HIGH)
    assert blob.get_blob_properties().rehydrate_priority == "High"
    _wait_online(blob, "Hot")
    assert REHYDRATE_SECONDS - 0.2 <= time.monotonic() - started <= REHYDRATE_SECONDS + 2
    assert blob.download_blob().readall() == b"archived bytes"
    blob.set_blob_metadata({"x": "1"})
    assert _summary(blob_events(stack.settings(), EVENTS_QUEUE, 4)) == [  # raising the priority is no event
        ("BlobCreated", "PutBlob", "a"), ("BlobTierChanged", "SetBlobTier", "a"),
        ("AsyncOperationInitiated", "SetBlobTier", "a"), ("BlobTierChanged", "SetBlobTier", "a")]


def test_a_rehydrating_copy_is_pending_until_its_time(slow_rehydration: tuple[Emulators, ContainerClient]) -> None:
    stack, container = slow_rehydration
    _archived(container, "source")
    source = container.get_blob_client("source")
    copy = container.get_blob_client("copy")
    answer = copy.start_copy_from_url(source.url, standard_blob_tier=StandardBlobTier.HOT,
                                      rehydrate_priority=RehydratePriority.HIGH)
    assert answer["copy_status"] == "pending"
    properties = copy.get_blob_properties()
    assert (properties.copy.status, properties.archive_status, properties.rehydrate_priority) == (
        "pending", "rehydrate-pending-to-hot", "High")
    assert _code(lambda: copy.download_blob().readall()) == (409, "BlobArchived")
    assert _wait_online(copy, "Hot") > REHYDRATE_SECONDS - 1
    assert copy.get_blob_properties().copy.status == "success"
    assert copy.download_blob().readall() == b"archived bytes"
    assert source.get_blob_properties().blob_tier == "Archive"
    assert _summary(blob_events(stack.settings(), EVENTS_QUEUE, 4))[2:] == [
        ("AsyncOperationInitiated", "CopyBlob", "copy"), ("BlobCreated", "CopyBlob", "copy")]


def test_a_pending_rehydration_survives_a_restart(slow_rehydration: tuple[Emulators, ContainerClient]) -> None:
    stack, container = slow_rehydration
    _archived(container, "a")
    blob = container.get_blob_client("a")
    blob.set_standard_blob_tier(StandardBlobTier.COOL)
    process = stack.processes["azurite"]
    os.killpg(process.pid, signal.SIGTERM)  # Azurite saves its database as it stops
    process.wait(10)
    stack.restart("azurite")
    assert blob.get_blob_properties().archive_status == "rehydrate-pending-to-cool"
    _wait_online(blob, "Cool")


# Blob events, as Event Grid delivers them to a Storage Queue, and last access times.


def blob_events(settings: dict[str, str], queue: str, count: int, timeout: float = 15) -> list[dict]:
    """The ``count`` blob events waiting in ``queue`` (base64 JSON, as Event Grid writes them), taken off it, in
    sequencer order; fails if fewer arrive within ``timeout`` or more are there."""
    client = QueueClient.from_connection_string(settings["DICOMWEB_QUEUES"], queue)
    found: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(found) < count and time.monotonic() < deadline:
        for message in client.receive_messages(max_messages=32):
            found.append(json.loads(base64.b64decode(message.content)))
            client.delete_message(message)
        time.sleep(0.1)
    time.sleep(0.3)  # any event too many would be there by now
    found += [json.loads(base64.b64decode(m.content)) for m in client.peek_messages(max_messages=32)]
    assert len(found) == count, [(e["eventType"], e["subject"]) for e in found]
    return sorted(found, key=lambda event: event["data"]["sequencer"])


def _summary(events: list[dict]) -> list[tuple[str, str, str]]:
    """(event type without its namespace, api, blob name) of each event."""
    return [(e["eventType"].removeprefix("Microsoft.Storage."), e["data"]["api"], e["subject"].split("/blobs/", 1)[1])
            for e in events]


def _subscribed(settings: dict[str, str], name: str) -> tuple[BlobServiceClient, ContainerClient, str]:
    """A new container whose events go to a new queue: the service, the container and the queue's name."""
    queue = f"{name}-{uuid.uuid4().hex[:8]}"
    QueueServiceClient.from_connection_string(settings["DICOMWEB_QUEUES"]).create_queue(queue)
    service = BlobServiceClient.from_connection_string(settings["DICOMWEB_STORAGE_CONNECTION_STRING"])
    return service, service.create_container(queue, metadata={EVENTS_METADATA: queue}), queue


def test_blob_events_reach_the_queue_the_container_metadata_names(emulators: dict[str, str]) -> None:
    service, container, queue = _subscribed(emulators, "events")
    name = "1.2.3/4.5.6/7.8.9/0001.dcm"
    put = container.get_blob_client(name)
    put.upload_blob(b"put blob", tags={"dicomweb_tier": "auto"})
    committed = container.get_blob_client("committed")
    committed.stage_block("YmxvY2s=", b"blocks")
    committed.commit_block_list([BlobBlock(block_id="YmxvY2s=")])
    container.get_blob_client("copy").start_copy_from_url(committed.url)
    put.set_standard_blob_tier(StandardBlobTier.COOL)
    put.set_standard_blob_tier(StandardBlobTier.COOL)  # no change, no event
    put.set_standard_blob_tier(StandardBlobTier.ARCHIVE)
    put.set_standard_blob_tier(StandardBlobTier.HOT)  # a rehydration: the session's take a minute
    committed.set_standard_blob_tier(StandardBlobTier.ARCHIVE)
    container.get_blob_client("rehydrated").start_copy_from_url(committed.url, standard_blob_tier=StandardBlobTier.COOL)
    container.delete_blob("copy")
    # Reads, properties, tags and metadata cause no event; nor does anything in a container without the metadata.
    put.get_blob_properties()
    put.set_blob_tags({"dicomweb_tier": "rehydrated"})
    list(container.list_blobs(include=["tags"]))
    quiet = service.create_container(f"quiet-{uuid.uuid4().hex[:8]}").get_blob_client("a")
    quiet.upload_blob(b"quiet")
    quiet.download_blob().readall()
    quiet.set_standard_blob_tier(StandardBlobTier.COLD)
    quiet.delete_blob()

    events = blob_events(emulators, queue, 9)
    assert _summary(events) == [
        ("BlobCreated", "PutBlob", name),
        ("BlobCreated", "PutBlockList", "committed"),
        ("BlobCreated", "CopyBlob", "copy"),
        ("BlobTierChanged", "SetBlobTier", name),
        ("BlobTierChanged", "SetBlobTier", name),
        ("AsyncOperationInitiated", "SetBlobTier", name),
        ("BlobTierChanged", "SetBlobTier", "committed"),
        ("AsyncOperationInitiated", "CopyBlob", "rehydrated"),
        ("BlobDeleted", "DeleteBlob", "copy"),
    ]
    tiers = [(e["data"]["previousTier"], e["data"]["accessTier"]) for e in events if "previousTier" in e["data"]]
    assert tiers == [("Hot", "Cool"), ("Cool", "Archive"), ("Hot", "Archive")]
    first = events[0]
    assert first["topic"] == ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/local/providers/"
                              "Microsoft.Storage/storageAccounts/devstoreaccount1")
    assert first["subject"] == f"/blobServices/default/containers/{queue}/blobs/{name}"
    assert first["data"]["url"] == put.url
    assert (first["data"]["blobType"], first["data"]["contentLength"]) == ("BlockBlob", 8)
    assert (first["dataVersion"], first["metadataVersion"]) == ("", "1")
    assert len({e["id"] for e in events}) == 9 and all(e["eventTime"].endswith("Z") for e in events)
    sequencers = [e["data"]["sequencer"] for e in events]
    assert len({len(s) for s in sequencers}) == 1 and sequencers == sorted(set(sequencers))


def test_a_rehydration_sends_its_event_when_it_completes_even_after_a_restart(
        slow_rehydration: tuple[Emulators, ContainerClient]) -> None:
    stack, container = slow_rehydration
    _archived(container, "a")
    _archived(container, "source")
    assert _summary(blob_events(stack.settings(), EVENTS_QUEUE, 4)) == [
        ("BlobCreated", "PutBlob", "a"), ("BlobTierChanged", "SetBlobTier", "a"),
        ("BlobCreated", "PutBlob", "source"), ("BlobTierChanged", "SetBlobTier", "source")]
    blob = container.get_blob_client("a")
    accessed = blob.get_blob_properties().last_accessed_on
    blob.set_standard_blob_tier(StandardBlobTier.HOT)
    copy = container.get_blob_client("copy")
    copy.start_copy_from_url(container.get_blob_client("source").url, standard_blob_tier=StandardBlobTier.COOL)
    process = stack.processes["azurite"]
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(10)
    stack.restart("azurite")
    events = blob_events(stack.settings(), EVENTS_QUEUE, 4, timeout=REHYDRATE_SECONDS + 10)
    assert _summary(events) == [
        ("AsyncOperationInitiated", "SetBlobTier", "a"), ("AsyncOperationInitiated", "CopyBlob", "copy"),
        ("BlobTierChanged", "SetBlobTier", "a"), ("BlobCreated", "CopyBlob", "copy")]
    assert (events[2]["data"]["previousTier"], events[2]["data"]["accessTier"]) == ("Archive", "Hot")
    assert events[3]["data"]["accessTier"] == "Cool"
    # The completion names the request that started it.
    assert events[2]["data"]["requestId"] == events[0]["data"]["requestId"]
    assert events[3]["data"]["requestId"] == events[1]["data"]["requestId"]
    # A rehydration is no access.
    assert blob.get_blob_properties().last_accessed_on == accessed


def test_an_instant_rehydration_is_one_tier_change_and_a_failed_post_is_logged(tmp_path: Path) -> None:
    """With ``rehydrate_seconds=0`` (Azurite's own behaviour) leaving the Archive tier is a plain tier change. An
    event for a queue that does not exist is tried a few times, then logged (Event Grid would dead-letter it):
    the blob request neither waits nor fails."""
    stack = Emulators(tmp_path, blob_port=free_port(), queue_port=free_port(), rehydrate_seconds=0)
    try:
        stack.restart("queue")
        stack.restart("azurite")
        service, container, queue = _subscribed(stack.settings(), "instant")
        nowhere = service.create_container("nowhere", metadata={EVENTS_METADATA: "no-such-queue"})
        started = time.monotonic()
        nowhere.upload_blob("lost", b"stored")
        assert time.monotonic() - started < 1
        _archived(container, "a")
        _archived(container, "source")
        container.get_blob_client("a").set_standard_blob_tier(StandardBlobTier.COLD)
        copy = container.get_blob_client("copy")
        copy.start_copy_from_url(container.get_blob_client("source").url, standard_blob_tier=StandardBlobTier.HOT)
        events = blob_events(stack.settings(), queue, 6)
        assert _summary(events)[4:] == [("BlobTierChanged", "SetBlobTier", "a"), ("BlobCreated", "CopyBlob", "copy")]
        assert (events[4]["data"]["previousTier"], events[4]["data"]["accessTier"]) == ("Archive", "Cold")
        assert nowhere.download_blob("lost").readall() == b"stored"
        log = tmp_path / "emulators.log"
        deadline = time.monotonic() + 15
        while "could not post Microsoft.Storage.BlobCreated of /blobServices/default/containers/nowhere/blobs/lost " \
                "to queue no-such-queue: 404 QueueNotFound" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        stack.stop()


def test_last_access_is_set_by_writes_and_reads_only(emulators: dict[str, str]) -> None:
    service = BlobServiceClient.from_connection_string(emulators["DICOMWEB_STORAGE_CONNECTION_STRING"])
    container = service.create_container(f"access-{uuid.uuid4().hex[:8]}")
    blob = container.get_blob_client("a")
    blob.upload_blob(b"0123456789", tags={"dicomweb_tier": "auto"})
    written = blob.get_blob_properties()
    assert written.last_accessed_on == written.last_modified

    def last_access() -> object:
        listed = {b.name: b.last_accessed_on for b in container.list_blobs(include=["tags"])}
        assert listed["a"] == blob.get_blob_properties().last_accessed_on
        return listed["a"]

    time.sleep(1.1)  # times have a resolution of a second
    blob.set_standard_blob_tier(StandardBlobTier.COOL)
    blob.set_blob_tags({"dicomweb_tier": "hot"})
    blob.get_blob_tags()
    assert last_access() == written.last_accessed_on
    assert blob.download_blob(offset=2, length=3).readall() == b"234"
    read = last_access()
    assert read > written.last_accessed_on  # type: ignore[operator]
    assert blob.download_blob().properties.last_accessed_on == read
    time.sleep(1.1)
    copy = container.get_blob_client("copy")
    copy.start_copy_from_url(blob.url)
    committed = container.get_blob_client("committed")
    committed.stage_block("YmxvY2s=", b"blocks")
    committed.commit_block_list([BlobBlock(block_id="YmxvY2s=")])
    for other in (copy, committed):
        properties = other.get_blob_properties()
        assert properties.last_accessed_on == properties.last_modified > read
