"""The inbox container: scanner files written by people and scanners (azcopy, Storage Explorer, a scanner's
export), converted to DICOM by :mod:`dicomweb.inbox`, then moved under ``done/`` or ``failed/``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, HttpResponseError
from azure.storage.blob.aio import ContainerClient

from dicomweb.errors import StorageFailure
from dicomweb.storage.transfer import SasSigner, failure, server_copy

#: How errors name an inbox file: its blob name may name a patient, and errors reach the logs.
LABEL = "an inbox file"
#: Parallel ranged reads of one download (each of DICOMWEB_BLOCK_SIZE_MB: 64 MiB in flight by default).
DOWNLOAD_CONCURRENCY = 8


@dataclass(frozen=True)
class InboxFile:
    """What a scanner file in the inbox is when it is looked at."""

    name: str
    etag: str
    size: int
    #: The blob's metadata (``x-ms-meta-*``: azcopy ``--metadata``, Storage Explorer), lower-cased keys.
    metadata: dict[str, str]


class InboxStore:
    """The inbox container: read a scanner file, then move it out of the way."""

    def __init__(self, container: ContainerClient, signer: SasSigner) -> None:
        self.container = container
        self._signer = signer

    async def describe(self, name: str) -> InboxFile:
        """The file ``name`` as it is now (NotFound once moved or deleted)."""
        try:
            properties = await self.container.get_blob_client(name).get_blob_properties()
        except AzureError as exc:
            raise failure(exc, LABEL) from exc
        metadata = {key.lower(): value for key, value in (properties.metadata or {}).items()}
        return InboxFile(name, str(properties.etag), int(properties.size), metadata)

    async def download(self, file: InboxFile, path: Path) -> None:
        """Write version ``file.etag`` of the file to ``path``, streamed (StaleBlob if it changed meanwhile)."""
        try:
            stream = await self.container.download_blob(file.name, etag=file.etag,
                                                        match_condition=MatchConditions.IfNotModified,
                                                        max_concurrency=DOWNLOAD_CONCURRENCY)
            with path.open("wb") as out:
                await stream.readinto(out)
        except AzureError as exc:
            raise failure(exc, LABEL) from exc

    async def move(self, file: InboxFile, to: str) -> None:
        """Move version ``file.etag`` of the file to ``to`` (a server-side copy, then the delete); a file already
        moved, or replaced by a newer version meanwhile, stays where it is."""
        target = self.container.get_blob_client(to)
        source = await self._signer.copy_source(self.container, file.name,
                                                datetime.now(timezone.utc) + timedelta(hours=1))
        try:
            if await server_copy(target, source, file.etag) != "success":
                raise StorageFailure(f"the copy of {LABEL} under done/ or failed/ did not succeed")
            await self.container.get_blob_client(file.name).delete_blob(
                etag=file.etag, match_condition=MatchConditions.IfNotModified)
        except AzureError as exc:
            if isinstance(exc, HttpResponseError) and exc.status_code in (404, 412):
                return  # moved by another delivery, or a newer version arrived: its own event handles it
            raise failure(exc, LABEL) from exc

    async def delete(self, file: InboxFile) -> None:
        """Delete version ``file.etag`` of the file (``DICOMWEB_INBOX_SOURCES=delete``); a file gone or replaced
        meanwhile stays as it is."""
        try:
            await self.container.get_blob_client(file.name).delete_blob(
                etag=file.etag, match_condition=MatchConditions.IfNotModified)
        except AzureError as exc:
            if isinstance(exc, HttpResponseError) and exc.status_code in (404, 412):
                return
            raise failure(exc, LABEL) from exc
