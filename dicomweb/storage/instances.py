"""The instance container: one Part 10 file per generation, written by blocks or copied, read by ranges."""

from __future__ import annotations

from datetime import datetime
from typing import AsyncIterator

from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
from azure.storage.blob import BlobProperties
from azure.storage.blob.aio import ContainerClient

from dicomweb.dicom.availability import NEARLINE, OFFLINE, ONLINE
from dicomweb.errors import Archived, DicomWebError, NotFound, Rehydrating, StorageFailure
from dicomweb.storage.naming import REHYDRATED, TIER_TAG, Location
from dicomweb.storage.transfer import BlockUpload, RangeReader, StaleBlob, delete_names, failure, prefixes, server_copy


#: What a client reading a blob being rehydrated is told to wait, by rehydration priority: Azure brings a blob
#: under 10 GB back in under an hour at High priority, in up to 15 hours at Standard.
RETRY_AFTER = {"High": 900, "Standard": 3600}


def availability(tier: str | None, archive_status: str | None) -> str:
    """Instance Availability of a blob from its access tier and archive status: the blob stays in Archive,
    ``rehydrate-pending-to-…``, until a rehydration is done."""
    if tier != "Archive":
        return ONLINE
    return NEARLINE if archive_status and archive_status.startswith("rehydrate-pending") else OFFLINE


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
        try:
            return await self._ranges.read(self.container, location.instance, offset, length)
        except Archived:
            raise await self._unreadable(location) from None

    async def copy_from(self, location: Location, source_url: str, source_etag: str, tags: dict[str, str]) -> None:
        """Make ``location``'s file a server-side copy of the blob at ``source_url`` as it was at ``source_etag``
        (no byte passes through this process)."""
        try:
            status = await server_copy(self.container.get_blob_client(location.instance), source_url, source_etag,
                                       tags)
        except AzureError as exc:
            if isinstance(exc, HttpResponseError) and exc.status_code == 412:
                raise StaleBlob(f"the source of {location.instance} changed before it was copied") from exc
            raise failure(exc, location.instance) from exc
        if status != "success":
            raise StorageFailure(f"the copy to {location.instance} ended {status}")

    async def stream(self, location: Location, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """The bytes of a stored file (or of ``length`` bytes of it from ``offset``), chunk by chunk."""
        try:
            downloader = await self.container.download_blob(location.instance, offset=offset, length=length)
            async for chunk in downloader.chunks():
                yield chunk
        except AzureError as exc:
            error = failure(exc, location.instance)
            raise (await self._unreadable(location) if isinstance(error, Archived) else error) from exc

    async def delete(self, location: Location) -> None:
        """Delete a stored file; a missing one is fine."""
        await delete_names(self.container, [location.instance])

    async def check_readable(self, location: Location) -> None:
        """Raise what reading ``location`` would raise (NotFound, Archived, Rehydrating, StorageFailure), without
        reading."""
        properties = await self._properties(location)
        if properties.blob_tier == "Archive":
            raise self._offline(properties)

    async def availability(self, location: Location) -> str | None:
        """The Instance Availability of ``location``'s file now (None when there is no such file)."""
        state = await self.tier_state(location)
        return state[0] if state is not None else None

    async def tier_state(self, location: Location) -> tuple[str, datetime | None] | None:
        """The Instance Availability of ``location``'s file now and when its tier last changed (None when there
        is no such file)."""
        try:
            properties = await self._properties(location)
        except NotFound:
            return None
        return availability(properties.blob_tier, properties.archive_status), properties.blob_tier_change_time

    async def rehydrate(self, location: Location, priority: str) -> str:
        """Ask for ``location``'s file to come back to the Hot tier in place (PS3.3 NEARLINE until it has);
        its availability afterwards. A file online already is left as it is.

        The blob is first re-tagged ``rehydrated``, which the lifecycle's archive rule does not
        match: rehydrating changes neither its last-access nor its last-modified time, so it
        would otherwise be archived again at the next daily run. Asking again while a
        rehydration is pending raises its priority at most (Azure refuses another target tier).
        """
        blob = self.container.get_blob_client(location.instance)
        properties = await self._properties(location)
        if properties.blob_tier != "Archive":
            return ONLINE
        try:
            await blob.set_blob_tags({TIER_TAG: REHYDRATED})
            await blob.set_standard_blob_tier("Hot", rehydrate_priority=priority)
        except AzureError as exc:
            if not (isinstance(exc, HttpResponseError) and exc.error_code == "BlobBeingRehydrated"):
                raise failure(exc, location.instance) from exc
        return await self.availability(location) or OFFLINE

    async def offline(self, prefix: str = "") -> AsyncIterator[tuple[Location, str]]:
        """(location, NEARLINE or OFFLINE) of every committed file under ``prefix`` that is not online: one
        listing, for reconciling the index with the tiers."""
        try:
            async for blob in self.container.list_blobs(name_starts_with=prefix or None):
                location = Location.parse(blob.name)
                found = availability(blob.blob_tier, blob.archive_status)
                if location is not None and blob.name == location.instance and found != ONLINE:
                    yield location, found
        except AzureError as exc:
            raise failure(exc, "instance listing") from exc

    async def _properties(self, location: Location) -> BlobProperties:
        try:
            return await self.container.get_blob_client(location.instance).get_blob_properties()
        except AzureError as exc:
            raise failure(exc, location.instance) from exc

    @staticmethod
    def _offline(properties: BlobProperties) -> Archived:
        if availability(properties.blob_tier, properties.archive_status) == NEARLINE:
            priority = str(properties.rehydrate_priority or "Standard")
            return Rehydrating("the instance is NEARLINE: its rehydration from the Archive tier is under way",
                               RETRY_AFTER.get(priority, RETRY_AFTER["Standard"]))
        return Archived("the instance is OFFLINE (Archive tier): ask for its rehydration first")

    async def _unreadable(self, location: Location) -> DicomWebError:
        """Why reading ``location`` was refused as archived: offline, or being rehydrated (or, when the
        rehydration ended in between, a retry that will pass)."""
        properties = await self._properties(location)
        if properties.blob_tier == "Archive":
            return self._offline(properties)
        return StorageFailure("the instance came back online while it was being read; try again")

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
