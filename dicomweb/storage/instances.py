"""The instance container: one Part 10 file per generation, written by blocks or copied, read by ranges."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import AsyncIterator

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
from azure.storage.blob.aio import ContainerClient

from dicomweb.errors import Archived, StorageFailure
from dicomweb.storage.naming import Location
from dicomweb.storage.transfer import BlockUpload, RangeReader, StaleBlob, delete_names, failure, prefixes


class InstanceStore:
    """The instance container: one Part 10 file per generation, read by ranges."""

    def __init__(self, container: ContainerClient, ranges: RangeReader) -> None:
        self.container = container
        self._ranges = ranges

    def upload(self, location: Location, block_size: int, concurrency: int) -> BlockUpload:
        """A block upload of ``location``'s Part 10 file."""
        return BlockUpload(self.container.get_blob_client(location.instance), block_size, concurrency)

    async def read_range(self, location: Location, offset: int, length: int) -> bytes:
        """One ranged read of a stored file."""
        return await self._ranges.read(self.container, location.instance, offset, length)

    async def copy_from(self, location: Location, source_url: str, source_etag: str, tags: dict[str, str]) -> None:
        """Make ``location``'s file a server-side copy of the blob at ``source_url`` as it was at ``source_etag``.

        No byte passes through this process. Within one account the copy is done when the
        call returns (Azurite, and Azure mostly); a pending one is waited for.
        """
        blob = self.container.get_blob_client(location.instance)
        try:
            copy = await blob.start_copy_from_url(source_url, tags=tags, source_etag=source_etag,
                                                  source_match_condition=MatchConditions.IfNotModified)
            status, wait = copy.get("copy_status"), 0.05
            while status == "pending":
                await asyncio.sleep(wait)
                wait = min(wait * 2, 2.0)
                status = (await blob.get_blob_properties()).copy.status
        except AzureError as exc:
            if isinstance(exc, HttpResponseError) and exc.status_code == 412:
                raise StaleBlob(f"the source of {location.instance} changed before it was copied") from exc
            raise failure(exc, location.instance) from exc
        if status != "success":
            raise StorageFailure(f"the copy to {location.instance} ended {status}")

    async def stream(self, location: Location) -> AsyncIterator[bytes]:
        """The bytes of a stored file, chunk by chunk."""
        try:
            downloader = await self.container.download_blob(location.instance)
            async for chunk in downloader.chunks():
                yield chunk
        except AzureError as exc:
            raise failure(exc, location.instance) from exc

    async def delete(self, location: Location) -> None:
        """Delete a stored file; a missing one is fine."""
        await delete_names(self.container, [location.instance])

    async def check_readable(self, location: Location) -> None:
        """Raise what reading ``location`` would raise (NotFound, Archived, StorageFailure), without reading."""
        try:
            properties = await self.container.get_blob_client(location.instance).get_blob_properties()
        except AzureError as exc:
            raise failure(exc, location.instance) from exc
        if properties.blob_tier == "Archive":
            raise Archived(f"{location.instance} is in the Archive tier; rehydrate it before reading")

    async def exists(self, location: Location) -> bool:
        """Whether ``location``'s file is committed."""
        try:
            await self.container.get_blob_client(location.instance).get_blob_properties()
        except ResourceNotFoundError:
            return False
        except AzureError as exc:
            raise failure(exc, location.instance) from exc
        return True

    def studies(self) -> AsyncIterator[str]:
        """``<study>/`` of every study with a file."""
        return prefixes(self.container, "instance listing")

    async def list(self, prefix: str = "") -> AsyncIterator[tuple[Location, datetime]]:
        """(location, when it was committed) of every committed file under ``prefix``, in name order."""
        try:
            async for blob in self.container.list_blobs(name_starts_with=prefix or None):
                location = Location.parse(blob.name)
                if location is not None and blob.name == location.instance:
                    yield location, blob.creation_time
        except AzureError as exc:
            raise failure(exc, "instance listing") from exc
