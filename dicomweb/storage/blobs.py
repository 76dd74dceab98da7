"""Blob Storage adapter: instance files, sidecars, block uploads and ranged reads.

Blob is the system of record. Per instance it holds three blobs named from the UIDs:
the Part 10 file (``<study>/<series>/<instance>.dcm`` in the instance container) and,
in the sidecar container, the metadata (``.json``) and the frame offset record
(``.frames``). Everything the Cosmos index holds can be rebuilt from the sidecars.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import AsyncIterator

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobBlock
from azure.storage.blob.aio import BlobClient, BlobServiceClient, ContainerClient

from dicomweb.errors import Archived, Duplicate, NotFound, StorageFailure


class StaleBlob(Exception):
    """The blob changed since its etag was cached: reload what was derived from it."""


def instance_name(study: str, series: str, instance: str) -> str:
    """Blob name of an instance's Part 10 file."""
    return f"{study}/{series}/{instance}.dcm"


def sidecar_name(study: str, series: str, instance: str, kind: str) -> str:
    """Blob name of an instance's sidecar: ``kind`` is "json" (metadata) or "frames"."""
    return f"{study}/{series}/{instance}.{kind}"


def _failure(exc: AzureError, what: str) -> Exception:
    """One mapping from Azure SDK errors to service errors."""
    if isinstance(exc, ResourceNotFoundError):
        return NotFound(f"{what} not found")
    if isinstance(exc, ResourceModifiedError):
        return StaleBlob(what)
    if isinstance(exc, HttpResponseError) and exc.error_code == "BlobArchived":
        return Archived(f"{what} is in the Archive tier; rehydrate it before reading")
    return StorageFailure(f"Blob Storage failed on {what}: {exc.__class__.__name__}")


class BlockUpload:
    """Stages blocks of one blob in parallel (bounded) and commits them as one block list.

    Memory stays at most ``concurrency + 1`` blocks whatever the blob's size; until
    :meth:`commit` nothing is visible (uncommitted blocks are garbage-collected by Azure).
    """

    def __init__(self, blob: BlobClient, block_size: int, concurrency: int) -> None:
        self._blob = blob
        self._block_size = block_size
        self._slots = asyncio.Semaphore(concurrency)
        self._buffer = bytearray()
        self._ids: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._prefix = uuid.uuid4().hex[:16]
        self._error: BaseException | None = None

    async def write(self, data: bytes) -> None:
        """Append ``data``; stage every full block (waits while all slots are busy)."""
        self._buffer += data
        while len(self._buffer) >= self._block_size:
            block = bytes(self._buffer[: self._block_size])
            del self._buffer[: self._block_size]
            await self._stage(block)

    async def _stage(self, block: bytes) -> None:
        if self._error is not None:
            raise self._error
        await self._slots.acquire()
        block_id = base64.b64encode(f"{self._prefix}-{len(self._ids):08d}".encode()).decode()
        self._ids.append(block_id)
        task = asyncio.create_task(self._put(block_id, block))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _put(self, block_id: str, block: bytes) -> None:
        try:
            await self._blob.stage_block(block_id, block, length=len(block))
        except BaseException as exc:  # noqa: BLE001 - handed to the writer, which re-raises it
            self._error = self._error or exc
        finally:
            self._slots.release()

    async def commit(self, metadata: dict[str, str], tags: dict[str, str] | None = None) -> str:
        """Stage the rest, wait for every block, commit; fail with Duplicate if the blob exists."""
        if self._buffer:
            await self._stage(bytes(self._buffer))
            self._buffer.clear()
        await asyncio.gather(*list(self._tasks))
        if self._error is not None:
            raise _failure(self._error, self._blob.blob_name) if isinstance(self._error, AzureError) else self._error
        try:
            result = await self._blob.commit_block_list(
                [BlobBlock(block_id=i) for i in self._ids], metadata=metadata, tags=tags, if_none_match="*"
            )
        except ResourceExistsError as exc:
            raise Duplicate("the instance is already stored") from exc
        except HttpResponseError as exc:
            if exc.status_code in (409, 412):
                raise Duplicate("the instance is already stored") from exc
            raise _failure(exc, self._blob.blob_name) from exc
        return str(result["etag"])

    async def abort(self) -> None:
        """Stop staging; the uncommitted blocks never become a blob."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)


class BlobStore:
    """The instance and sidecar containers of one storage account."""

    def __init__(self, service: BlobServiceClient, instance_container: str, sidecar_container: str) -> None:
        self._service = service
        self.instances: ContainerClient = service.get_container_client(instance_container)
        self.sidecars: ContainerClient = service.get_container_client(sidecar_container)

    async def ensure_containers(self) -> None:
        """Create the containers if they do not exist (idempotent)."""
        for container in (self.instances, self.sidecars):
            try:
                await container.create_container()
            except ResourceExistsError:
                pass

    async def close(self) -> None:
        """Release the HTTP sessions."""
        await self._service.close()

    def upload(self, name: str, block_size: int, concurrency: int) -> BlockUpload:
        """A block upload for the instance blob ``name``."""
        return BlockUpload(self.instances.get_blob_client(name), block_size, concurrency)

    async def put_sidecar(self, name: str, data: bytes) -> None:
        """Write (or overwrite) a sidecar in one request."""
        try:
            await self.sidecars.upload_blob(name, data, overwrite=True)
        except AzureError as exc:
            raise _failure(exc, name) from exc

    async def get_sidecar(self, name: str) -> bytes:
        """Read a whole sidecar."""
        try:
            downloader = await self.sidecars.download_blob(name)
            return await downloader.readall()
        except AzureError as exc:
            raise _failure(exc, name) from exc

    async def read_range(self, name: str, offset: int, length: int, etag: str | None = None) -> tuple[bytes, str]:
        """One ranged read of an instance blob; ``etag`` makes it fail with StaleBlob if the blob changed."""
        kwargs = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        try:
            downloader = await self.instances.download_blob(name, offset=offset, length=length, **kwargs)
            data = await downloader.readall()
        except AzureError as exc:
            raise _failure(exc, name) from exc
        return data, str(downloader.properties.etag)

    async def stream(self, name: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """The bytes of an instance blob, chunk by chunk."""
        try:
            downloader = await self.instances.download_blob(name, offset=offset, length=length)
            async for chunk in downloader.chunks():
                yield chunk
        except AzureError as exc:
            raise _failure(exc, name) from exc

    async def delete(self, instance: str | None, sidecars: list[str]) -> None:
        """Delete an instance blob and sidecars; missing ones are fine."""
        pairs = [(self.sidecars, name) for name in sidecars]
        if instance is not None:
            pairs.append((self.instances, instance))
        for container, name in pairs:
            try:
                await container.delete_blob(name)
            except ResourceNotFoundError:
                pass
            except AzureError as exc:
                raise _failure(exc, name) from exc

    async def exists(self, name: str) -> bool:
        """Whether the instance blob ``name`` is committed."""
        try:
            return await self.instances.get_blob_client(name).exists()
        except AzureError as exc:
            raise _failure(exc, name) from exc

    async def list_instances(self) -> AsyncIterator[tuple[str, str]]:
        """(name, generation) of every committed instance blob."""
        try:
            async for blob in self.instances.list_blobs(include=["metadata"]):
                yield blob.name, (blob.metadata or {}).get("generation", "")
        except AzureError as exc:
            raise _failure(exc, "instance listing") from exc

    async def list_metadata_sidecars(self) -> AsyncIterator[str]:
        """Names of every metadata sidecar: one per stored instance."""
        try:
            async for blob in self.sidecars.list_blobs():
                if blob.name.endswith(".json"):
                    yield blob.name
        except AzureError as exc:
            raise _failure(exc, "sidecar listing") from exc
