"""Builds the Azure SDK clients: connection strings locally, managed identity in Azure."""

from __future__ import annotations

from azure.core.pipeline.transport import AioHttpTransport
from azure.cosmos.aio import CosmosClient
from azure.identity.aio import DefaultAzureCredential
from azure.storage.blob.aio import BlobServiceClient

from dicomweb.config import Settings
from dicomweb.storage.blobs import BlobStores
from dicomweb.storage.index import IndexStore


def _transport() -> AioHttpTransport:
    """aiohttp without environment proxy/netrc lookups: with them every blob call paid a thread hop."""
    return AioHttpTransport(use_env_settings=False)


def _limits(settings: Settings) -> dict[str, int]:
    """Bounded waits on every call: a store that stops answering gives a 503 within seconds, not a hang."""
    seconds = settings.storage_timeout_seconds
    return {"connection_timeout": seconds, "read_timeout": seconds, "retry_total": 2}


def blob_store(settings: Settings, credential: object | None = None) -> BlobStores:
    """Blob adapter from a connection string, else account URL + ``credential`` (default: managed identity)."""
    if settings.storage_connection_string:
        service = BlobServiceClient.from_connection_string(settings.storage_connection_string, transport=_transport(),
                                                           **_limits(settings))
    elif settings.storage_account_url:
        service = BlobServiceClient(settings.storage_account_url, credential=credential or DefaultAzureCredential(),
                                    transport=_transport(), **_limits(settings))
    else:
        raise ValueError("set DICOMWEB_STORAGE_CONNECTION_STRING or DICOMWEB_STORAGE_ACCOUNT_URL")
    return BlobStores(service, settings.instance_container, settings.sidecar_container, settings.staging_container,
                      settings.storage_timeout_seconds)


def index_store(settings: Settings, credential: object | None = None) -> IndexStore:
    """Cosmos adapter from a connection string, else endpoint + ``credential`` (default: managed identity)."""
    limits = {**_limits(settings), "timeout": settings.storage_timeout_seconds}
    if settings.cosmos_connection_string:
        client = CosmosClient.from_connection_string(settings.cosmos_connection_string, **limits)
    elif settings.cosmos_endpoint:
        client = CosmosClient(settings.cosmos_endpoint, credential=credential or DefaultAzureCredential(), **limits)
    else:
        raise ValueError("set DICOMWEB_COSMOS_CONNECTION_STRING or DICOMWEB_COSMOS_ENDPOINT")
    return IndexStore(client, settings.cosmos_database, settings.cosmos_container)
