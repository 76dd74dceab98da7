"""Builds the Azure SDK clients: connection strings locally, managed identity in Azure."""

from __future__ import annotations

from azure.core.pipeline.transport import AioHttpTransport
from azure.cosmos.aio import CosmosClient
from azure.identity.aio import DefaultAzureCredential
from azure.storage.blob.aio import BlobServiceClient, ExponentialRetry
from azure.storage.queue.aio import QueueServiceClient

from dicomweb.config import Settings
from dicomweb.storage.blobs import BlobStores
from dicomweb.storage.changes import ChangeStore
from dicomweb.storage.claims import ClaimStore
from dicomweb.storage.index import IndexStore
from dicomweb.storage.queues import JobQueue, QueueConsumer


def _transport(settings: Settings) -> AioHttpTransport:
    """aiohttp without environment proxy/netrc lookups (with them every blob call paid a thread hop).

    The timeouts belong to the transport: given to a client that gets its own transport,
    they would not reach it, and a frozen store would hang every call.
    """
    seconds = settings.storage_timeout_seconds
    return AioHttpTransport(use_env_settings=False, connection_timeout=seconds, read_timeout=seconds)


def _limits(settings: Settings) -> dict[str, int]:
    """Bounded waits on every call: a store that stops answering gives a 503 within seconds, not a hang."""
    seconds = settings.storage_timeout_seconds
    return {"connection_timeout": seconds, "read_timeout": seconds, "retry_total": 2}


def _blob_retries() -> ExponentialRetry:
    """Two quick retries (about 1 s, then 3 s): the Blob SDK's default waits 15 s and more between tries,
    which turned a frozen store into a 50 s wait per call."""
    return ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=2, random_jitter_range=1)


def blob_store(settings: Settings, credential: object | None = None) -> BlobStores:
    """Blob adapter from a connection string, else account URL + ``credential`` (default: managed identity)."""
    # Whole-file transfers (the inbox's download of a scanner file, its upload of each converted instance) move
    # blocks of the service's block size rather than the SDK's 4 MiB: half the requests.
    sizes = {"max_block_size": settings.block_size, "max_chunk_get_size": settings.block_size}
    if settings.storage_connection_string:
        service = BlobServiceClient.from_connection_string(settings.storage_connection_string, transport=_transport(settings),
                                                           retry_policy=_blob_retries(), **_limits(settings), **sizes)
    elif settings.storage_account_url:
        service = BlobServiceClient(settings.storage_account_url, credential=credential or DefaultAzureCredential(),
                                    transport=_transport(settings), retry_policy=_blob_retries(),
                                    **_limits(settings), **sizes)
    else:
        raise ValueError("set DICOMWEB_STORAGE_CONNECTION_STRING or DICOMWEB_STORAGE_ACCOUNT_URL")
    return BlobStores(service, settings.instance_container, settings.sidecar_container, settings.staging_container,
                      settings.inbox_container, settings.storage_timeout_seconds)


def _throttle_retries(settings: Settings) -> dict[str, int]:
    """How the Cosmos SDK retries a 429 (it waits the x-ms-retry-after-ms Cosmos sends): up to 9 times, as by
    default, but for at most the storage timeout in all. Given alone, ``retry_total`` would also cap these
    retries (at 2, too few for a partition briefly over its request units); a 429 that outlasts them is a
    503 with Retry-After (:func:`dicomweb.storage.cosmos._unavailable`)."""
    return {"retry_throttle_total": 9, "retry_throttle_backoff_max": settings.storage_timeout_seconds}


def cosmos_stores(settings: Settings, credential: object | None = None
                  ) -> tuple[IndexStore, ClaimStore, ChangeStore]:
    """The search index, the claims and the change feed: three stores over one container and one client,
    from a connection string, else endpoint + ``credential`` (default: managed identity)."""
    limits = {**_limits(settings), **_throttle_retries(settings), "timeout": settings.storage_timeout_seconds}
    if settings.cosmos_connection_string:
        client = CosmosClient.from_connection_string(settings.cosmos_connection_string, **limits)
    elif settings.cosmos_endpoint:
        client = CosmosClient(settings.cosmos_endpoint, credential=credential or DefaultAzureCredential(), **limits)
    else:
        raise ValueError("set DICOMWEB_COSMOS_CONNECTION_STRING or DICOMWEB_COSMOS_ENDPOINT")
    names = (settings.cosmos_database, settings.cosmos_container)
    return IndexStore(client, *names), ClaimStore(client, *names), ChangeStore(client, *names)


def queue_service(settings: Settings, credential: object | None = None) -> QueueServiceClient:
    """Queue service from the connection string, else its URL + ``credential`` (default: managed identity).

    The settings are the queue trigger's connection (``DICOMWEB_QUEUES``), so the service
    sends where the Functions host listens.
    """
    # The same quick retries as Blob's (the client builds its retry policy from these).
    options = {"transport": _transport(settings), "initial_backoff": 1, "increment_base": 2, **_limits(settings)}
    if settings.queue_connection_string:
        return QueueServiceClient.from_connection_string(settings.queue_connection_string, **options)
    if settings.queue_service_url:
        return QueueServiceClient(settings.queue_service_url, credential=credential or DefaultAzureCredential(),
                                  **options)
    raise ValueError("set DICOMWEB_QUEUES (a connection string) or DICOMWEB_QUEUES__queueServiceUri")


def job_queue(settings: Settings) -> JobQueue:
    """The job queue the service sends background work to."""
    return JobQueue(queue_service(settings), settings.jobs_queue)


def event_queue(settings: Settings) -> JobQueue:
    """The queue Event Grid delivers the instance container's blob events to (provisioned locally; only the
    queue trigger reads it)."""
    return JobQueue(queue_service(settings), settings.blob_events_queue)


def inbox_queue(settings: Settings) -> JobQueue:
    """The queue Event Grid delivers the inbox's BlobCreated events to (provisioned locally; only the queue trigger
    reads it)."""
    return JobQueue(queue_service(settings), settings.inbox_queue)


def queue_consumer(settings: Settings, name: str) -> QueueConsumer:
    """The consumer side of queue ``name``, for the local host (the Functions host consumes in Azure)."""
    return QueueConsumer(queue_service(settings), name)
