"""Blob Storage adapter: instance files, sidecars, block uploads and ranged reads.

Blob is the system of record. Per instance it holds three blobs named from the UIDs:
the Part 10 file (``<study>/<series>/<instance>.dcm`` in the instance container) and,
in the sidecar container, the metadata (``.json``) and the frame offset record
(``.frames``). Everything the Cosmos index holds can be rebuilt from the sidecars.
The staging container holds upload sessions: the data blobs clients write through a
write-only SAS, and the sessions' small JSON records.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import datetime, timedelta, timezone
from typing import AsyncIterator
from urllib.parse import quote

import aiohttp
from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import (
    BlobBlock,
    BlobSasPermissions,
    ContainerSasPermissions,
    UserDelegationKey,
    generate_blob_sas,
    generate_container_sas,
)
from azure.storage.blob.aio import BlobClient, BlobServiceClient, ContainerClient

from dicomweb.errors import Archived, Duplicate, NotFound, StorageFailure


GENERATION = "generation"
#: Blob index tag the lifecycle policy filters on: ``auto`` blobs move to cool, cold and archive as they
#: go unread; ``hot`` ones (sidecars, labels, overviews, thumbnails, small pyramid levels) stay hot.
TIER_TAG = "dicomweb_tier"
HOT, AUTO = "hot", "auto"
GENERATION_HEADER = "x-ms-meta-generation"
DELETING = "deleting"


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
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._ids: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._prefix = uuid.uuid4().hex[:16]
        self._error: BaseException | None = None

    async def write(self, data: bytes) -> None:
        """Append ``data``; stage a block once ``block_size`` bytes are waiting (waits while all slots are busy).

        Blocks may differ in size (Blob allows it), so a block is the waiting chunks
        joined once, with no re-slicing.
        """
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= self._block_size:
            await self._flush()

    async def _flush(self) -> None:
        block = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
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

    async def commit(self, metadata: dict[str, str], tags: dict[str, str] | None = None,
                     overwrite: bool = False) -> str:
        """Stage the rest, wait for every block, commit as one blob.

        Without ``overwrite`` the commit fails with Duplicate if the blob exists; with it,
        the new blob replaces the old one atomically.
        """
        if self._pending_size:
            await self._flush()
        await asyncio.gather(*list(self._tasks))
        if self._error is not None:
            raise _failure(self._error, self._blob.blob_name) if isinstance(self._error, AzureError) else self._error
        condition = {} if overwrite else {"if_none_match": "*"}
        try:
            result = await self._blob.commit_block_list(
                [BlobBlock(block_id=i) for i in self._ids], metadata=metadata, tags=tags, **condition
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


class SasSigner:
    """Short-lived SAS tokens: account-key signed where the client holds the key (Azurite, connection
    strings), user-delegation signed under a managed identity (the delegation key is reused while valid)."""

    KEY_LIFETIME = timedelta(hours=6)

    def __init__(self, service: BlobServiceClient) -> None:
        self._service = service
        self._delegation: UserDelegationKey | None = None
        self._delegation_until = datetime.min.replace(tzinfo=timezone.utc)

    async def _signing(self, expiry: datetime) -> dict[str, object]:
        key = getattr(self._service.credential, "account_key", None)
        if key:
            return {"account_key": key}
        now = datetime.now(timezone.utc)
        if self._delegation is None or expiry > self._delegation_until:
            until = max(expiry, now + self.KEY_LIFETIME)
            self._delegation = await self._service.get_user_delegation_key(now - timedelta(minutes=5), until)
            self._delegation_until = until
        return {"user_delegation_key": self._delegation}

    async def container(self, container: str, expiry: datetime) -> str:
        """Read-only SAS for every blob of ``container``."""
        return generate_container_sas(
            self._service.account_name or "", container, permission=ContainerSasPermissions(read=True),
            expiry=expiry, start=datetime.now(timezone.utc) - timedelta(minutes=5), **await self._signing(expiry))

    async def write_blob(self, container: str, name: str, expiry: datetime) -> str:
        """Write-only SAS for exactly one blob: stage blocks and commit them, nothing else."""
        return generate_blob_sas(
            self._service.account_name or "", container, name, permission=BlobSasPermissions(write=True),
            expiry=expiry, start=datetime.now(timezone.utc) - timedelta(minutes=5), **await self._signing(expiry))


class RangeReader:
    """Ranged reads of blobs with a read-only container SAS over a plain aiohttp session.

    Frame reads are the hot path: the SDK pipeline (policies, tracing, deserialisers)
    cost about a millisecond of CPU per read, several times the rest of a frame
    request. Each container's SAS is renewed well before it expires, and once more on a 403.
    """

    SAS_LIFETIME = timedelta(hours=1)

    def __init__(self, signer: SasSigner) -> None:
        self._signer = signer
        self._tokens: dict[str, tuple[str, datetime]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def _token(self, container: str, renew: bool = False) -> str:
        now = datetime.now(timezone.utc)
        token, renew_at = self._tokens.get(container, ("", now))
        if renew or now >= renew_at:
            token = await self._signer.container(container, now + self.SAS_LIFETIME)
            self._tokens[container] = token, now + self.SAS_LIFETIME / 2
        return token

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                trust_env=False, connector=aiohttp.TCPConnector(limit=128, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=120, sock_connect=10),
            )
        return self._session

    async def read(self, container: ContainerClient, name: str, offset: int, length: int,
                   etag: str | None) -> tuple[bytes, str, str]:
        """Bytes ``offset .. offset+length`` of blob ``name``, its etag and generation; retries transient failures."""
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        if etag:
            headers["If-Match"] = etag
        url = f"{container.url}/{quote(name, safe='/')}"
        renewed = False
        for attempt in range(3):
            try:
                token = await self._token(container.container_name, renew=renewed)
                async with self._client().get(f"{url}?{token}", headers=headers) as response:
                    if response.status in (200, 206):
                        headers = response.headers
                        return await response.read(), headers.get("ETag", ""), headers.get(GENERATION_HEADER, "")
                    code = response.headers.get("x-ms-error-code", "")
                    status = response.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                if attempt == 2:
                    raise StorageFailure(f"Blob Storage unreachable reading {name}: {exc.__class__.__name__}") from exc
                await asyncio.sleep(0.05 * (attempt + 1))
                continue
            if status == 404:
                raise NotFound(f"{name} not found")
            if status == 412:
                raise StaleBlob(name)
            if code == "BlobArchived":
                raise Archived(f"{name} is in the Archive tier; rehydrate it before reading")
            if status == 403 and not renewed:
                renewed = True
                continue
            if status < 500 or attempt == 2:
                raise StorageFailure(f"Blob Storage answered {status} {code} reading {name}")
            await asyncio.sleep(0.05 * (attempt + 1))
        raise StorageFailure(f"Blob Storage refused reading {name}")

    async def close(self) -> None:
        """Release the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None


class BlobStore:
    """The instance and sidecar containers of one storage account."""

    def __init__(self, service: BlobServiceClient, instance_container: str, sidecar_container: str,
                 staging_container: str) -> None:
        self._service = service
        self.instances: ContainerClient = service.get_container_client(instance_container)
        self.sidecars: ContainerClient = service.get_container_client(sidecar_container)
        self.staging: ContainerClient = service.get_container_client(staging_container)
        self.signer = SasSigner(service)
        self._ranges = RangeReader(self.signer)

    async def ensure_containers(self) -> None:
        """Create the containers if they do not exist (idempotent)."""
        for container in (self.instances, self.sidecars, self.staging):
            try:
                await container.create_container()
            except ResourceExistsError:
                pass

    async def close(self) -> None:
        """Release the HTTP sessions."""
        await self._ranges.close()
        await self._service.close()

    def upload(self, name: str, block_size: int, concurrency: int) -> BlockUpload:
        """A block upload for the instance blob ``name``."""
        return BlockUpload(self.instances.get_blob_client(name), block_size, concurrency)

    async def put_sidecar(self, name: str, data: bytes) -> None:
        """Write (or overwrite) a sidecar in one request, pinned to the hot tier (every frame request reads it)."""
        try:
            await self.sidecars.upload_blob(name, data, overwrite=True, tags={TIER_TAG: HOT})
        except AzureError as exc:
            raise _failure(exc, name) from exc

    async def get_sidecar(self, name: str) -> bytes:
        """Read a whole sidecar."""
        try:
            downloader = await self.sidecars.download_blob(name)
            return await downloader.readall()
        except AzureError as exc:
            raise _failure(exc, name) from exc

    async def read_range(self, name: str, offset: int, length: int, etag: str | None = None,
                         generation: str | None = None) -> tuple[bytes, str]:
        """One ranged read of an instance blob and its etag.

        Fails with StaleBlob if the blob changed since ``etag``, or is not of
        ``generation`` (a replacement whose sidecars are not written yet).
        """
        data, new_etag, found = await self._ranges.read(self.instances, name, offset, length, etag)
        if generation is not None and found and found != generation:
            raise StaleBlob(name)
        return data, new_etag

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
        return await self.generation_of(name) is not None

    async def generation_of(self, name: str) -> str | None:
        """The generation recorded on instance blob ``name`` (None when there is no such blob)."""
        try:
            properties = await self.instances.get_blob_client(name).get_blob_properties()
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise _failure(exc, name) from exc
        return (properties.metadata or {}).get(GENERATION, "")

    async def list_instances(self) -> AsyncIterator[tuple[str, dict[str, str]]]:
        """(name, metadata) of every committed instance blob: its generation, and ``deleting`` if marked."""
        try:
            async for blob in self.instances.list_blobs(include=["metadata"]):
                yield blob.name, dict(blob.metadata or {})
        except AzureError as exc:
            raise _failure(exc, "instance listing") from exc

    async def mark_deleting(self, name: str) -> bool:
        """Record in the blob itself that it is being deleted (False if it is already gone).

        Blob is the system of record: a deletion that dies half way is finished by the
        cleanup in ``reindex`` instead of being indexed again.
        """
        blob = self.instances.get_blob_client(name)
        try:
            properties = await blob.get_blob_properties()
            await blob.set_blob_metadata({**properties.metadata, DELETING: "1"}, etag=properties.etag,
                                         match_condition=MatchConditions.IfNotModified)
        except ResourceNotFoundError:
            return False
        except AzureError as exc:
            raise _failure(exc, name) from exc
        return True

    async def list_metadata_sidecars(self) -> AsyncIterator[str]:
        """Names of every metadata sidecar: one per stored instance."""
        try:
            async for blob in self.sidecars.list_blobs():
                if blob.name.endswith(".json"):
                    yield blob.name
        except AzureError as exc:
            raise _failure(exc, "sidecar listing") from exc

    # Staging: upload sessions' data blobs (written by clients through a SAS) and session records.

    async def staging_write_url(self, name: str, expiry: datetime) -> str:
        """URL of staging blob ``name`` with a write-only SAS for it alone, valid until ``expiry``."""
        sas = await self.signer.write_blob(self.staging.container_name, name, expiry)
        return f"{self.staging.url}/{quote(name, safe='/')}?{sas}"

    async def staged_blocks(self, name: str) -> tuple[dict[str, int], dict[str, int]]:
        """(committed, uncommitted) blocks of staging blob ``name``: id → size; empty when none arrived."""
        try:
            committed, uncommitted = await self.staging.get_blob_client(name).get_block_list("all")
        except ResourceNotFoundError:
            return {}, {}
        except AzureError as exc:
            raise _failure(exc, name) from exc
        return ({str(b.id): int(b.size) for b in committed or []}, {str(b.id): int(b.size) for b in uncommitted or []})

    async def commit_staged(self, name: str, block_ids: list[str]) -> None:
        """Commit the staged blocks of ``name`` in order, making it a readable blob."""
        try:
            await self.staging.get_blob_client(name).commit_block_list([BlobBlock(block_id=i) for i in block_ids])
        except AzureError as exc:
            raise _failure(exc, name) from exc

    async def read_staged(self, name: str, size: int, chunk: int, ahead: int) -> AsyncIterator[bytes]:
        """The bytes of committed staging blob ``name`` in order: ranged reads, ``ahead`` of them in flight."""
        starts = list(range(0, size, chunk))
        pending: list[asyncio.Task[tuple[bytes, str, str]]] = []
        try:
            for index in range(len(starts)):
                while len(pending) < ahead and index + len(pending) < len(starts):
                    start = starts[index + len(pending)]
                    length = min(chunk, size - start)
                    pending.append(asyncio.create_task(self._ranges.read(self.staging, name, start, length, None)))
                data, _, _ = await pending.pop(0)
                yield data
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def discard_staged(self, name: str) -> None:
        """Delete staging blob ``name`` with its uncommitted blocks (an empty commit discards them first)."""
        blob = self.staging.get_blob_client(name)
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
            raise _failure(exc, name) from exc

    async def put_record(self, name: str, data: bytes, etag: str | None = None) -> str:
        """Write a small staging record; with ``etag``, only if nobody changed it since (else StaleBlob)."""
        condition = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        try:
            result = await self.staging.get_blob_client(name).upload_blob(data, overwrite=True, **condition)
        except AzureError as exc:
            raise _failure(exc, name) from exc
        return str(result["etag"])

    async def get_record(self, name: str) -> tuple[bytes, str]:
        """A staging record and its etag."""
        try:
            downloader = await self.staging.download_blob(name)
            return await downloader.readall(), str(downloader.properties.etag)
        except AzureError as exc:
            raise _failure(exc, name) from exc

    async def list_records(self, prefix: str) -> AsyncIterator[str]:
        """Names of the staging records under ``prefix``."""
        try:
            async for blob in self.staging.list_blobs(name_starts_with=prefix):
                yield blob.name
        except AzureError as exc:
            raise _failure(exc, "staging listing") from exc

    async def delete_record(self, name: str) -> None:
        """Delete a staging record; a missing one is fine."""
        try:
            await self.staging.delete_blob(name)
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            raise _failure(exc, name) from exc
