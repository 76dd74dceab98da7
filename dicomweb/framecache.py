"""Recently read frames, shared by concurrent requests, with read-ahead for viewer bursts.

A viewer panning a slide asks for a block of neighbouring tiles at once, one request
per tile (Slim asks for about 6×4). In a TILED_FULL instance the tiles of one row lie
back to back in the file, so once two requests for nearby frames of one instance
arrive close together, the next read fetches a window of neighbours with one ranged
read; the requests that follow are answered from that read, or wait for it while it
is in flight. Lone random requests still read exactly their own frame.

Cached frames are served without revalidation for at most ``ttl`` seconds, and keyed
by the instance's generation, so a replaced instance is never mixed with the old one.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from typing import Sequence

Key = tuple[str, str, int]

#: Frames either side of a request that count as its neighbours.
NEIGHBOURHOOD = 8
#: How long a request is remembered when looking for neighbours.
RECENT_SECONDS = 1.0
#: Requests remembered per instance.
RECENT_PER_INSTANCE = 64
#: Read-ahead window around a request once neighbours are seen: frames before and after.
WINDOW_BEFORE, WINDOW_AFTER = 3, 8


class FrameCache:
    """An LRU of frame bytes bounded in bytes and age, plus the reads in flight."""

    def __init__(self, max_bytes: int, ttl: float) -> None:
        self._max = max_bytes
        self._ttl = ttl
        self._size = 0
        self._items: OrderedDict[Key, tuple[float, bytes]] = OrderedDict()
        self._pending: dict[Key, asyncio.Future[bytes]] = {}
        self._recent: OrderedDict[str, deque[tuple[float, int]]] = OrderedDict()

    def get(self, key: Key) -> bytes | None:
        """A cached frame younger than the TTL."""
        item = self._items.get(key)
        if item is None:
            return None
        stamp, data = item
        if time.monotonic() - stamp > self._ttl:
            self._evict(key)
            return None
        self._items.move_to_end(key)
        return data

    def pending(self, key: Key) -> asyncio.Future[bytes] | None:
        """The in-flight read that will deliver ``key``, if any."""
        return self._pending.get(key)

    def begin(self, keys: Sequence[Key]) -> dict[Key, asyncio.Future[bytes]]:
        """Announce a read of ``keys`` so concurrent requests wait for it instead of reading again."""
        loop = asyncio.get_running_loop()
        futures = {}
        for key in keys:
            if key not in self._pending:
                future: asyncio.Future[bytes] = loop.create_future()
                future.add_done_callback(_consume)
                self._pending[key] = futures[key] = future
        return futures

    def finish(self, futures: dict[Key, asyncio.Future[bytes]], frames: dict[Key, bytes]) -> None:
        """Deliver a completed read to its waiters and the cache."""
        for key, data in frames.items():
            self.put(key, data)
        for key, future in futures.items():
            self._pending.pop(key, None)
            if not future.done():
                future.set_result(frames[key])

    def fail(self, futures: dict[Key, asyncio.Future[bytes]], error: BaseException) -> None:
        """A read failed: its waiters get the error and try for themselves."""
        for key, future in futures.items():
            self._pending.pop(key, None)
            if not future.done():
                future.set_exception(error)

    def put(self, key: Key, data: bytes) -> None:
        """Cache ``data``, evicting the least recently used frames beyond the budget."""
        self._evict(key)
        if len(data) > self._max:
            return
        self._items[key] = (time.monotonic(), data)
        self._size += len(data)
        while self._size > self._max:
            self._evict(next(iter(self._items)))

    def drop_instance(self, name: str) -> None:
        """Forget every cached frame of instance blob ``name`` (deleted or replaced here)."""
        for key in [k for k in self._items if k[0] == name]:
            self._evict(key)

    def window(self, name: str, first: int, last: int, count: int) -> tuple[int, int]:
        """Frames to read for a request of ``first..last`` of an instance with ``count`` frames.

        The request itself, widened to a window of neighbours when other requests for
        nearby frames of the same instance arrived within the last moment.
        """
        now = time.monotonic()
        recent = self._recent.pop(name, None) or deque(maxlen=RECENT_PER_INSTANCE)
        self._recent[name] = recent
        while len(self._recent) > 1024:
            self._recent.popitem(last=False)
        near = any(
            now - stamp <= RECENT_SECONDS and 0 < abs(number - first) <= NEIGHBOURHOOD for stamp, number in recent
        )
        recent.append((now, first))
        if not near:
            return first, last
        return max(1, first - WINDOW_BEFORE), min(count, max(last, first + WINDOW_AFTER))

    def _evict(self, key: Key) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._size -= len(item[1])


def _consume(future: asyncio.Future[bytes]) -> None:
    """Mark a failed read's error as seen: the requests that asked for it handle it."""
    if not future.cancelled():
        future.exception()
