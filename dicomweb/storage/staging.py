"""The staging container: upload sessions' data blobs (written by clients through a write-only SAS) and the small
JSON records of sessions and operations."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import AsyncIterator
from urllib.parse import quote

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobBlock, BlockState
from azure.storage.blob.aio import ContainerClient

from dicomweb.errors import StateConflict
from dicomweb.storage.transfer import RangeReader, SasSigner, StaleBlob, delete_names, failure, fresh_block_id


class StagingStore:
    """The staging container: upload sessions' data blobs (written by clients through a SAS) and records."""

    def __init__(self, container: ContainerClient, signer: SasSigner, ranges: RangeReader) -> None:
        self.container = container
        self._signer = signer
        self._ranges = ranges

    async def write_url(self, name: str, expiry: datetime) -> str:
        """URL of staging blob ``name`` with a write-only SAS for it alone, valid until ``expiry``."""
        sas = await self._signer.write_blob(self.container.container_name, name, expiry)
        return f"{self.container.url}/{quote(name, safe='/')}?{sas}"

    async def copy_source(self, name: str, expiry: datetime) -> str:
        """URL of staging blob ``name`` as the source of a server-side copy within the account (the ingest's)."""
        return await self._signer.copy_source(self.container, name, expiry)

    async def properties(self, name: str) -> tuple[str, int]:
        """(etag, size) of committed staging blob ``name``."""
        try:
            properties = await self.container.get_blob_client(name).get_blob_properties()
        except AzureError as exc:
            raise failure(exc, name) from exc
        return str(properties.etag), int(properties.size)

    async def read_range(self, name: str, offset: int, length: int, etag: str) -> bytes:
        """One ranged read of version ``etag`` of staging blob ``name``."""
        return await self._ranges.read(self.container, name, offset, length, etag)

    async def restage_head(self, name: str, etag: str, size: int, head: bytes, largest_block: int) -> str:
        """Overwrite the first ``len(head)`` bytes of version ``etag`` of ``name`` (``size`` bytes), re-writing
        only the blocks they fall in; the new etag.

        The rest of the committed block list is committed again as it is (by id, from the
        committed list only: a block staged meanwhile through the client's SAS is never
        picked up), conditionally on the blob being unchanged. A blob put in one piece
        (no block list) is one block.
        """
        blob = self.container.get_blob_client(name)
        try:
            committed, _ = await blob.get_block_list("committed")
        except AzureError as exc:
            raise failure(exc, name) from exc
        blocks = [(str(b.id), int(b.size)) for b in committed or []] or [("", size)]
        covered, count = 0, 0
        while count < len(blocks) and covered < len(head):
            covered += blocks[count][1]
            count += 1
        if covered > largest_block:
            raise StateConflict(f"the first block of {name} is larger than {largest_block} bytes")
        original = await self._ranges.read(self.container, name, 0, covered, etag)
        new_id = fresh_block_id({block_id for block_id, _ in blocks}, len(blocks[0][0]) or 8)
        try:
            await blob.stage_block(new_id, head + original[len(head):], length=covered)
            result = await blob.commit_block_list(
                [BlobBlock(block_id=new_id, state=BlockState.UNCOMMITTED)]
                + [BlobBlock(block_id=block_id, state=BlockState.COMMITTED) for block_id, _ in blocks[count:]],
                etag=etag, match_condition=MatchConditions.IfNotModified)
        except AzureError as exc:
            raise failure(exc, name) from exc
        return str(result["etag"])

    async def blocks(self, name: str) -> tuple[dict[str, int], dict[str, int]]:
        """(committed, uncommitted) blocks of staging blob ``name``: id → size; empty when none arrived."""
        try:
            committed, uncommitted = await self.container.get_blob_client(name).get_block_list("all")
        except ResourceNotFoundError:
            return {}, {}
        except AzureError as exc:
            raise failure(exc, name) from exc
        return ({str(b.id): int(b.size) for b in committed or []}, {str(b.id): int(b.size) for b in uncommitted or []})

    async def commit(self, name: str, block_ids: list[str]) -> None:
        """Commit the staged blocks of ``name`` in order, making it a readable blob."""
        try:
            await self.container.get_blob_client(name).commit_block_list([BlobBlock(block_id=i) for i in block_ids])
        except AzureError as exc:
            raise failure(exc, name) from exc

    async def read(self, name: str, start: int, size: int, chunk: int, ahead: int, etag: str) -> AsyncIterator[bytes]:
        """Bytes ``start .. size`` of version ``etag`` of staging blob ``name`` in order: ranged reads,
        ``ahead`` of them in flight."""
        starts = list(range(start, size, chunk))
        pending: list[asyncio.Task[bytes]] = []
        try:
            for index in range(len(starts)):
                while len(pending) < ahead and index + len(pending) < len(starts):
                    begin = starts[index + len(pending)]
                    length = min(chunk, size - begin)
                    pending.append(asyncio.create_task(self._ranges.read(self.container, name, begin, length, etag)))
                yield await pending.pop(0)
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def discard(self, name: str) -> None:
        """Delete staging blob ``name`` with its uncommitted blocks (an empty commit discards them first)."""
        blob = self.container.get_blob_client(name)
        try:
            try:
                await blob.delete_blob()
                return
            except ResourceNotFoundError:
                pass
            await blob.commit_block_list([])
            await blob.delete_blob()
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            raise failure(exc, name) from exc

    async def put_record(self, name: str, data: bytes, etag: str | None = None, create: bool = False) -> str:
        """Write a small staging record; with ``etag``, only if nobody changed it since, with ``create`` only if
        there is none yet (else StaleBlob)."""
        condition = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        try:
            result = await self.container.get_blob_client(name).upload_blob(data, overwrite=not create, **condition)
        except ResourceExistsError as exc:
            raise StaleBlob(f"{name} was written by someone else first") from exc
        except AzureError as exc:
            raise failure(exc, name) from exc
        return str(result["etag"])

    async def upload_file(self, name: str, path: Path, concurrency: int) -> None:
        """Write local file ``path`` as staging blob ``name``, committed, in blocks (``concurrency`` at a time): the
        data of an upload session the service opens itself (:mod:`dicomweb.inbox`)."""
        try:
            with path.open("rb") as data:
                await self.container.get_blob_client(name).upload_blob(
                    data, length=path.stat().st_size, overwrite=True, max_concurrency=concurrency)
        except AzureError as exc:
            raise failure(exc, name) from exc

    async def get_record(self, name: str) -> tuple[bytes, str]:
        """A staging record and its etag."""
        try:
            downloader = await self.container.download_blob(name)
            return await downloader.readall(), str(downloader.properties.etag)
        except AzureError as exc:
            raise failure(exc, name) from exc

    async def list_records(self, prefix: str) -> AsyncIterator[str]:
        """Names of the staging records under ``prefix``."""
        try:
            async for blob in self.container.list_blobs(name_starts_with=prefix):
                yield blob.name
        except AzureError as exc:
            raise failure(exc, "staging listing") from exc

    async def delete_record(self, name: str) -> None:
        """Delete a staging record; a missing one is fine."""
        await delete_names(self.container, [name])
