"""Blob Storage adapter: one store per container (instance files, sidecars, staging).

Blob is the system of record. Every stored version of an instance is a *generation*
with blob names that are never reused: the Part 10 file
``<study>/<series>/<sop>/<generation>.dcm`` in the instance container and, in the
sidecar container, the metadata (``….json``) and the frame offset record
(``….frames``) of that generation. A replacement writes a new generation and removes
the old one once the index names the new one, so a reader never sees a file change
under a name it holds. Everything the Cosmos index holds can be rebuilt from these
blobs. The staging container holds upload sessions: the data blobs clients write
through a write-only SAS, and the sessions' small JSON records.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
import uuid
from dataclasses import dataclass
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
    BlockState,
    ContainerSasPermissions,
    UserDelegationKey,
    generate_blob_sas,
    generate_container_sas,
)
from azure.storage.blob.aio import BlobClient, BlobServiceClient, ContainerClient

from dicomweb.errors import Archived, ConcurrentChange, DicomWebError, NotFound, StateConflict, StorageFailure

#: Blob index tag the lifecycle policy filters on: ``auto`` blobs move to cool, cold and archive as they
#: go unread; ``hot`` ones (sidecars, labels, overviews, thumbnails, small pyramid levels) stay hot.
TIER_TAG = "dicomweb_tier"
HOT, AUTO = "hot", "auto"
#: Blob index tag on an instance blob whose deletion has begun; its value is the change-feed sequence of the
#: delete. A tag, not metadata: Azure refuses Set Blob Metadata on an Archive blob (409 BlobArchived) but
#: allows Set Blob Tags, and a tag leaves the blob's ETag alone (readers holding it keep reading).
DELETING = "deleting"
SIDECAR_KINDS = ("json", "frames", "thumbnail")


class StaleBlob(ConcurrentChange):
    """A conditional write lost a race: the blob changed since it was read."""


def new_generation() -> str:
    """A generation id: microseconds since the epoch (so names sort by age) and 48 random bits."""
    return f"{time.time_ns() // 1000:014x}{secrets.token_hex(6)}"


@dataclass(frozen=True)
class Location:
    """Where one generation of an instance lives: its UIDs and generation."""

    study: str
    series: str
    sop: str
    generation: str

    @property
    def stem(self) -> str:
        return f"{self.study}/{self.series}/{self.sop}/{self.generation}"

    @property
    def instance(self) -> str:
        """Blob name of the Part 10 file."""
        return f"{self.stem}.dcm"

    def sidecar(self, kind: str) -> str:
        """Blob name of a sidecar: ``kind`` is "json" (metadata), "frames" (frame offset record) or
        "thumbnail" (a PNG made on first request)."""
        return f"{self.stem}.{kind}"

    @property
    def sidecars(self) -> list[str]:
        return [self.sidecar(kind) for kind in SIDECAR_KINDS]

    @classmethod
    def parse(cls, name: str) -> "Location | None":
        """The location a blob name belongs to (None for names of another shape)."""
        parts = name.rsplit(".", 1)[0].split("/")
        if len(parts) != 4 or not all(parts):
            return None
        return cls(*parts)


def _failure(exc: AzureError, what: str) -> DicomWebError:
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


def _fresh_block_id(taken: set[str], width: int) -> str:
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
        """Stage the rest, wait for every block, commit them as one blob.

        Generation names are never reused, so no condition is needed: the one writer
        that commits a name again is an upload session resuming its own ingest.
        """
        if self._pending_size:
            await self._flush()
        await asyncio.gather(*list(self._tasks))
        if self._error is not None:
            raise _failure(self._error, self._blob.blob_name) if isinstance(self._error, AzureError) else self._error
        try:
            await self._blob.commit_block_list([BlobBlock(block_id=i) for i in self._ids], metadata=metadata, tags=tags)
        except AzureError as exc:
            raise _failure(exc, self._blob.blob_name) from exc

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


async def _prefixes(container: ContainerClient, what: str) -> AsyncIterator[str]:
    """The top-level "folders" of ``container`` (``<study>/``), without listing the blobs in them."""
    try:
        async for item in container.walk_blobs(delimiter="/"):
            if item.name.endswith("/"):
                yield item.name
    except AzureError as exc:
        raise _failure(exc, what) from exc


async def _delete(container: ContainerClient, names: list[str]) -> None:
    """Delete blobs of one container; missing ones are fine."""
    for name in names:
        try:
            await container.delete_blob(name)
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            raise _failure(exc, name) from exc


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
            raise _failure(exc, location.instance) from exc
        if status != "success":
            raise StorageFailure(f"the copy to {location.instance} ended {status}")

    async def stream(self, location: Location) -> AsyncIterator[bytes]:
        """The bytes of a stored file, chunk by chunk."""
        try:
            downloader = await self.container.download_blob(location.instance)
            async for chunk in downloader.chunks():
                yield chunk
        except AzureError as exc:
            raise _failure(exc, location.instance) from exc

    async def delete(self, location: Location) -> None:
        """Delete a stored file; a missing one is fine."""
        await _delete(self.container, [location.instance])

    async def check_readable(self, location: Location) -> None:
        """Raise what reading ``location`` would raise (NotFound, Archived, StorageFailure), without reading."""
        try:
            properties = await self.container.get_blob_client(location.instance).get_blob_properties()
        except AzureError as exc:
            raise _failure(exc, location.instance) from exc
        if properties.blob_tier == "Archive":
            raise Archived(f"{location.instance} is in the Archive tier; rehydrate it before reading")

    async def exists(self, location: Location) -> bool:
        """Whether ``location``'s file is committed."""
        try:
            await self.container.get_blob_client(location.instance).get_blob_properties()
        except ResourceNotFoundError:
            return False
        except AzureError as exc:
            raise _failure(exc, location.instance) from exc
        return True

    def studies(self) -> AsyncIterator[str]:
        """``<study>/`` of every study with a file."""
        return _prefixes(self.container, "instance listing")

    async def list(self, prefix: str = "") -> AsyncIterator[tuple[Location, dict[str, str]]]:
        """(location, blob index tags) of every committed file under ``prefix``, in name order."""
        try:
            async for blob in self.container.list_blobs(name_starts_with=prefix or None, include=["tags"]):
                location = Location.parse(blob.name)
                if location is not None and blob.name == location.instance:
                    yield location, dict(blob.tags or {})
        except AzureError as exc:
            raise _failure(exc, "instance listing") from exc

    async def deletion_mark(self, location: Location) -> str | None:
        """The DELETING mark of ``location``'s file (None when unmarked or gone)."""
        try:
            tags = await self.container.get_blob_client(location.instance).get_blob_tags()
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise _failure(exc, location.instance) from exc
        return tags.get(DELETING)

    async def mark_deleting(self, location: Location, sequence: int) -> bool:
        """Record in the file itself that its deletion began, as change ``sequence`` (False if it is gone).

        Blob is the system of record: a deletion that dies half way is finished by
        ``reindex`` instead of being indexed again. The mark joins the file's other tags
        (set at commit, never changed after), so an archived file can be marked too.
        """
        blob = self.container.get_blob_client(location.instance)
        try:
            await blob.set_blob_tags({**await blob.get_blob_tags(), DELETING: str(sequence)})
        except ResourceNotFoundError:
            return False
        except AzureError as exc:
            raise _failure(exc, location.instance) from exc
        return True


class SidecarStore:
    """The sidecar container: metadata and frame offset record of each generation, always hot."""

    def __init__(self, container: ContainerClient) -> None:
        self.container = container

    async def put(self, name: str, data: bytes) -> None:
        """Write a sidecar in one request, pinned to the hot tier (every frame request reads it)."""
        try:
            await self.container.upload_blob(name, data, overwrite=True, tags={TIER_TAG: HOT})
        except AzureError as exc:
            raise _failure(exc, name) from exc

    async def get(self, name: str) -> bytes:
        """Read a whole sidecar."""
        try:
            downloader = await self.container.download_blob(name)
            return await downloader.readall()
        except AzureError as exc:
            raise _failure(exc, name) from exc

    async def delete(self, names: list[str]) -> None:
        """Delete sidecars; missing ones are fine."""
        await _delete(self.container, names)

    def studies(self) -> AsyncIterator[str]:
        """``<study>/`` of every study with a sidecar."""
        return _prefixes(self.container, "sidecar listing")

    async def list(self, prefix: str = "") -> AsyncIterator[Location]:
        """The generation of every metadata sidecar under ``prefix``."""
        async for location, kind in self.entries(prefix):
            if kind == "json":
                yield location

    async def entries(self, prefix: str = "") -> AsyncIterator[tuple[Location, str]]:
        """(generation, kind) of every sidecar under ``prefix``."""
        try:
            async for blob in self.container.list_blobs(name_starts_with=prefix or None):
                location = Location.parse(blob.name)
                kind = blob.name.rsplit(".", 1)[-1]
                if location is not None and kind in SIDECAR_KINDS and blob.name == location.sidecar(kind):
                    yield location, kind
        except AzureError as exc:
            raise _failure(exc, "sidecar listing") from exc


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
        """URL of staging blob ``name`` as the source of a server-side copy within the account.

        Under the account key the copy request's own signature authorizes the source; under
        a managed identity the source carries a read-only user-delegation SAS for it alone.
        """
        url = f"{self.container.url}/{quote(name, safe='/')}"
        if self._signer.shared_key:
            return url
        return f"{url}?{await self._signer.read_blob(self.container.container_name, name, expiry)}"

    async def properties(self, name: str) -> tuple[str, int]:
        """(etag, size) of committed staging blob ``name``."""
        try:
            properties = await self.container.get_blob_client(name).get_blob_properties()
        except AzureError as exc:
            raise _failure(exc, name) from exc
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
            raise _failure(exc, name) from exc
        blocks = [(str(b.id), int(b.size)) for b in committed or []] or [("", size)]
        covered, count = 0, 0
        while count < len(blocks) and covered < len(head):
            covered += blocks[count][1]
            count += 1
        if covered > largest_block:
            raise StateConflict(f"the first block of {name} is larger than {largest_block} bytes")
        original = await self._ranges.read(self.container, name, 0, covered, etag)
        new_id = _fresh_block_id({block_id for block_id, _ in blocks}, len(blocks[0][0]) or 8)
        try:
            await blob.stage_block(new_id, head + original[len(head):], length=covered)
            result = await blob.commit_block_list(
                [BlobBlock(block_id=new_id, state=BlockState.UNCOMMITTED)]
                + [BlobBlock(block_id=block_id, state=BlockState.COMMITTED) for block_id, _ in blocks[count:]],
                etag=etag, match_condition=MatchConditions.IfNotModified)
        except AzureError as exc:
            raise _failure(exc, name) from exc
        return str(result["etag"])

    async def blocks(self, name: str) -> tuple[dict[str, int], dict[str, int]]:
        """(committed, uncommitted) blocks of staging blob ``name``: id → size; empty when none arrived."""
        try:
            committed, uncommitted = await self.container.get_blob_client(name).get_block_list("all")
        except ResourceNotFoundError:
            return {}, {}
        except AzureError as exc:
            raise _failure(exc, name) from exc
        return ({str(b.id): int(b.size) for b in committed or []}, {str(b.id): int(b.size) for b in uncommitted or []})

    async def commit(self, name: str, block_ids: list[str]) -> None:
        """Commit the staged blocks of ``name`` in order, making it a readable blob."""
        try:
            await self.container.get_blob_client(name).commit_block_list([BlobBlock(block_id=i) for i in block_ids])
        except AzureError as exc:
            raise _failure(exc, name) from exc

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
            raise _failure(exc, name) from exc

    async def put_record(self, name: str, data: bytes, etag: str | None = None) -> str:
        """Write a small staging record; with ``etag``, only if nobody changed it since (else StaleBlob)."""
        condition = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        try:
            result = await self.container.get_blob_client(name).upload_blob(data, overwrite=True, **condition)
        except AzureError as exc:
            raise _failure(exc, name) from exc
        return str(result["etag"])

    async def get_record(self, name: str) -> tuple[bytes, str]:
        """A staging record and its etag."""
        try:
            downloader = await self.container.download_blob(name)
            return await downloader.readall(), str(downloader.properties.etag)
        except AzureError as exc:
            raise _failure(exc, name) from exc

    async def list_records(self, prefix: str) -> AsyncIterator[str]:
        """Names of the staging records under ``prefix``."""
        try:
            async for blob in self.container.list_blobs(name_starts_with=prefix):
                yield blob.name
        except AzureError as exc:
            raise _failure(exc, "staging listing") from exc

    async def delete_record(self, name: str) -> None:
        """Delete a staging record; a missing one is fine."""
        await _delete(self.container, [name])


class BlobStores:
    """The storage account: its three stores, sharing one SAS signer and one ranged reader."""

    def __init__(self, service: BlobServiceClient, instance_container: str, sidecar_container: str,
                 staging_container: str, timeout_seconds: int = 20) -> None:
        self._service = service
        self.signer = SasSigner(service)
        self._ranges = RangeReader(self.signer, timeout_seconds)
        self.instances = InstanceStore(service.get_container_client(instance_container), self._ranges)
        self.sidecars = SidecarStore(service.get_container_client(sidecar_container))
        self.staging = StagingStore(service.get_container_client(staging_container), self.signer, self._ranges)

    async def provision(self) -> None:
        """Create the containers where missing (idempotent): for the local stack only
        (:mod:`dicomweb.local.provision`); in Azure the Bicep owns them."""
        for store in (self.instances, self.sidecars, self.staging):
            try:
                await store.container.create_container()
            except ResourceExistsError:
                pass
            except AzureError as exc:
                raise _failure(exc, store.container.container_name) from exc

    async def close(self) -> None:
        """Release the HTTP sessions."""
        await self._ranges.close()
        await self._service.close()
