"""Moving bytes to and from Blob Storage, shared by the stores: the one mapping from SDK errors to service
errors, block uploads, SAS signing, ranged reads, and listing and deletion within a container."""

from __future__ import annotations

import asyncio
import base64
import secrets
import uuid
from datetime import datetime, timedelta, timezone
from typing import AsyncIterator
from urllib.parse import quote

import aiohttp
from azure.core import MatchConditions
from azure.core.exceptions import AzureError, HttpResponseError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import (
    BlobBlock,
    BlobSasPermissions,
    ContainerSasPermissions,
    UserDelegationKey,
    generate_blob_sas,
    generate_container_sas,
)
from azure.storage.blob.aio import BlobClient, BlobServiceClient, ContainerClient

from dicomweb.errors import Archived, ConcurrentChange, DicomWebError, NotFound, StorageFailure


class StaleBlob(ConcurrentChange):
    """A conditional write lost a race: the blob changed since it was read."""


def failure(exc: AzureError, what: str) -> DicomWebError:
    """One mapping from Azure SDK errors to service errors."""
    if isinstance(exc, ResourceNotFoundError) and exc.error_code == "ContainerNotFound":
        return StorageFailure(f"Blob Storage has no container for {what}: the infrastructure (infra/) deploys it",
                              retry_after=5)
    if isinstance(exc, ResourceNotFoundError):
        return NotFound(f"{what} not found")
    if isinstance(exc, ResourceModifiedError):
        return StaleBlob(f"{what} changed while it was being written")
    if isinstance(exc, HttpResponseError) and exc.error_code == "BlobArchived":
        return Archived(f"{what} is in the Archive tier; rehydrate it before reading")
    return StorageFailure(f"Blob Storage failed on {what}: {exc.__class__.__name__}")


def fresh_block_id(taken: set[str], width: int) -> str:
    """A block id of ``width`` characters that none of ``taken`` is (the ids of one blob have one length)."""
    while (candidate := secrets.token_hex(width)[:width]) in taken:
        pass
    return candidate


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

    async def commit(self, metadata: dict[str, str], tags: dict[str, str] | None = None) -> None:
        """Stage the rest, wait for every block, commit them as one blob (a blob smaller than a block: put whole).

        Generation names are never reused, so no condition is needed: the one writer
        that commits a name again is an upload session resuming its own ingest.
        """
        if not self._ids:  # it all fits one block: one Put Blob instead of a Put Block and a Put Block List
            data = b"".join(self._pending)
            try:
                await self._blob.upload_blob(data, length=len(data), overwrite=True, metadata=metadata, tags=tags)
            except AzureError as exc:
                raise failure(exc, self._blob.blob_name) from exc
            return
        if self._pending_size:
            await self._flush()
        await asyncio.gather(*list(self._tasks))
        if self._error is not None:
            raise failure(self._error, self._blob.blob_name) if isinstance(self._error, AzureError) else self._error
        try:
            await self._blob.commit_block_list([BlobBlock(block_id=i) for i in self._ids], metadata=metadata, tags=tags)
        except AzureError as exc:
            raise failure(exc, self._blob.blob_name) from exc

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

    @property
    def shared_key(self) -> bool:
        """Whether requests are signed with the account key (then a same-account copy source needs no SAS)."""
        return bool(getattr(self._service.credential, "account_key", None))

    async def read_blob(self, container: str, name: str, expiry: datetime) -> str:
        """Read-only SAS for exactly one blob (the source of a server-side copy)."""
        return generate_blob_sas(
            self._service.account_name or "", container, name, permission=BlobSasPermissions(read=True),
            expiry=expiry, start=datetime.now(timezone.utc) - timedelta(minutes=5), **await self._signing(expiry))

    async def copy_source(self, container: ContainerClient, name: str, expiry: datetime) -> str:
        """URL of blob ``name`` of ``container`` as the source of a server-side copy within the account.

        Under the account key the copy request's own signature authorizes the source; under
        a managed identity the source carries a read-only user-delegation SAS for it alone.
        """
        url = f"{container.url}/{quote(name, safe='/')}"
        if self.shared_key:
            return url
        return f"{url}?{await self.read_blob(container.container_name, name, expiry)}"

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

    def __init__(self, signer: SasSigner, timeout_seconds: int) -> None:
        self._signer = signer
        self._timeout = timeout_seconds
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
                timeout=aiohttp.ClientTimeout(total=self._timeout * 3, sock_connect=self._timeout,
                                              sock_read=self._timeout),
            )
        return self._session

    async def read(self, container: ContainerClient, name: str, offset: int, length: int,
                   etag: str | None = None) -> bytes:
        """Bytes ``offset .. offset+length`` of blob ``name``; retries transient failures.

        With ``etag``, only of that version of the blob (else :class:`StaleBlob`).
        """
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
                        return await response.read()
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
                raise StaleBlob(f"{name} changed while it was being read")
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


async def server_copy(target: BlobClient, source_url: str, source_etag: str, tags: dict[str, str] | None = None) -> str:
    """Make ``target`` a server-side copy of the blob at ``source_url`` as it was at ``source_etag``; how the copy
    ended (``success`` unless it failed or was aborted). No byte passes through this process: within one account
    the copy is done when the call returns (Azurite, and Azure mostly), and a pending one is waited for. SDK
    errors are the caller's to map (a 412: the source changed)."""
    copy = await target.start_copy_from_url(source_url, tags=tags, source_etag=source_etag,
                                            source_match_condition=MatchConditions.IfNotModified)
    status, wait = copy.get("copy_status"), 0.05
    while status == "pending":
        await asyncio.sleep(wait)
        wait = min(wait * 2, 2.0)
        status = (await target.get_blob_properties()).copy.status
    return str(status)


async def prefixes(container: ContainerClient, what: str) -> AsyncIterator[str]:
    """The top-level "folders" of ``container`` (``<study>/``), without listing the blobs in them."""
    try:
        async for item in container.walk_blobs(delimiter="/"):
            if item.name.endswith("/"):
                yield item.name
    except AzureError as exc:
        raise failure(exc, what) from exc


async def delete_names(container: ContainerClient, names: list[str]) -> None:
    """Delete blobs of one container; missing ones are fine."""
    for name in names:
        try:
            await container.delete_blob(name)
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            raise failure(exc, name) from exc
