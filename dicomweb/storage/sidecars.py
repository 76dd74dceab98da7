"""The sidecar container: what ingest derived of each generation (metadata, frame offset record, thumbnail)."""

from __future__ import annotations

from datetime import datetime
from typing import AsyncIterator

from azure.core.exceptions import AzureError
from azure.storage.blob.aio import ContainerClient

from dicomweb.storage.naming import HOT, SIDECAR_KINDS, TIER_TAG, Location
from dicomweb.storage.transfer import delete_names, failure, prefixes


class SidecarStore:
    """The sidecar container: metadata and frame offset record of each generation, always hot."""

    def __init__(self, container: ContainerClient) -> None:
        self.container = container

    async def put(self, name: str, data: bytes) -> None:
        """Write a sidecar in one request, pinned to the hot tier (every frame request reads it)."""
        try:
            await self.container.upload_blob(name, data, overwrite=True, tags={TIER_TAG: HOT})
        except AzureError as exc:
            raise failure(exc, name) from exc

    async def get(self, name: str) -> bytes:
        """Read a whole sidecar."""
        try:
            downloader = await self.container.download_blob(name)
            return await downloader.readall()
        except AzureError as exc:
            raise failure(exc, name) from exc

    async def delete(self, names: list[str]) -> None:
        """Delete sidecars; missing ones are fine."""
        await delete_names(self.container, names)

    def studies(self) -> AsyncIterator[str]:
        """``<study>/`` of every study with a sidecar."""
        return prefixes(self.container, "sidecar listing")

    async def list(self, prefix: str = "") -> AsyncIterator[tuple[Location, datetime]]:
        """(generation, when it was written) of every metadata sidecar under ``prefix``."""
        try:
            async for blob in self.container.list_blobs(name_starts_with=prefix or None):
                location = Location.parse(blob.name)
                if location is not None and blob.name == location.sidecar("json"):
                    yield location, blob.last_modified
        except AzureError as exc:
            raise failure(exc, "sidecar listing") from exc

    async def entries(self, prefix: str = "") -> AsyncIterator[tuple[Location, str]]:
        """(generation, kind) of every sidecar under ``prefix``."""
        try:
            async for blob in self.container.list_blobs(name_starts_with=prefix or None):
                location = Location.parse(blob.name)
                kind = blob.name.rsplit(".", 1)[-1]
                if location is not None and kind in SIDECAR_KINDS and blob.name == location.sidecar(kind):
                    yield location, kind
        except AzureError as exc:
            raise failure(exc, "sidecar listing") from exc
