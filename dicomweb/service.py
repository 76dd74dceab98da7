"""The process-wide composition root: settings, storage adapters and caches.

Azure Functions keeps a worker process warm between invocations, so the clients and
the frame-index cache are built once per process, on first use.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from dicomweb.answers import AnswerCache
from dicomweb.auth import Authenticator
from dicomweb.config import Settings
from dicomweb.dicom.codecs import PixelFormat
from dicomweb.dicom.frames import FrameIndex
from dicomweb.framecache import FrameCache
from dicomweb.storage.blobs import BlobStores
from dicomweb.storage.naming import Location
from dicomweb.storage.changes import ChangeStore
from dicomweb.storage.claims import ClaimStore
from dicomweb.storage.clients import blob_store, cosmos_stores, job_queue
from dicomweb.storage.index import IndexStore
from dicomweb.storage.queues import JobQueue


@dataclass
class CachedIndex:
    """A frame offset record and the generation it belongs to (the index's current one when it was read)."""

    frames: FrameIndex
    location: Location
    #: The generation's Image Pixel attributes, read from its sidecar once something needs to decode a frame.
    pixels: PixelFormat | None = None
    #: What rendering needs of the generation (:class:`dicomweb.rendered.Source`), read once something renders.
    render: Any = None


class FrameIndexCache:
    """LRU of frame offset records, bounded by their encoded size."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._size = 0
        self._items: OrderedDict[str, tuple[CachedIndex, int]] = OrderedDict()

    def get(self, name: str) -> CachedIndex | None:
        """The cached record of instance blob ``name``, marking it recently used."""
        item = self._items.get(name)
        if item is None:
            return None
        self._items.move_to_end(name)
        return item[0]

    def put(self, name: str, entry: CachedIndex) -> None:
        """Cache ``entry``, evicting the least recently used records beyond the budget."""
        self.drop(name)
        cost = len(entry.frames) * 16 + 256
        self._items[name] = (entry, cost)
        self._size += cost
        while self._size > self._max and len(self._items) > 1:
            _, (_, evicted) = self._items.popitem(last=False)
            self._size -= evicted

    def drop(self, name: str) -> None:
        """Forget ``name`` (its blob changed or vanished)."""
        item = self._items.pop(name, None)
        if item is not None:
            self._size -= item[1]


@dataclass
class Service:
    """Everything a request handler needs."""

    settings: Settings
    blobs: BlobStores
    index: IndexStore
    #: Who holds each SOP Instance UID, and in which state (:mod:`dicomweb.generations`).
    claims: ClaimStore
    changes: ChangeStore
    #: Where work that outlives a request goes (:mod:`dicomweb.jobs`).
    jobs: JobQueue
    frame_indexes: FrameIndexCache = field(init=False)
    frames: FrameCache = field(init=False)
    #: Metadata answers ready to send, by ETag.
    answers: AnswerCache = field(init=False)
    #: Who calls and what they may do (fails closed when authentication is not configured).
    auth: Authenticator = field(init=False)

    def __post_init__(self) -> None:
        self.auth = Authenticator(self.settings)
        self.frame_indexes = FrameIndexCache(self.settings.frame_index_cache_mb * 1024 * 1024)
        self.frames = FrameCache(self.settings.frame_cache_mb * 1024 * 1024, self.settings.frame_cache_seconds)
        self.answers = AnswerCache(self.settings.metadata_cache_mb * 1024 * 1024)

    @classmethod
    async def create(cls, settings: Settings) -> "Service":
        """Clients of Blob, Queue and Cosmos; no call yet.

        The containers, queues and database are not created here: that is control-plane work,
        which Cosmos DB rate-limits and the Bicep owns (``infra/``); the local stack provisions
        its emulators itself (:mod:`dicomweb.local.provision`). A missing one answers 503 naming it.
        """
        blobs = blob_store(settings)
        index, claims, changes = cosmos_stores(settings)
        return cls(settings, blobs, index, claims, changes, job_queue(settings))

    def forget(self, location: Location) -> None:
        """Drop what this process cached of one generation (it was replaced or deleted here)."""
        self.frame_indexes.drop(location.instance)
        self.frames.drop_instance(location.instance)

    async def close(self) -> None:
        """Release the storage clients."""
        await self.blobs.close()
        await self.jobs.close()
        await self.index.close()  # the client the claims and the change feed share


_service: Service | None = None
_lock = asyncio.Lock()


async def get_service() -> Service:
    """The process's service, created from the environment on first use."""
    global _service
    if _service is None:
        async with _lock:
            if _service is None:
                _service = await Service.create(Settings.from_env())
    return _service


async def reset_service() -> None:
    """Close the process's service so the next request builds it anew (tests, shutdown)."""
    global _service
    if _service is not None:
        await _service.close()
        _service = None
