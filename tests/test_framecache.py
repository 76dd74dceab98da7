"""The frame cache: byte budget, age limit, in-flight reads and read-ahead windows."""

from __future__ import annotations

import asyncio
import time

import pytest

from dicomweb.framecache import WINDOW_AFTER, WINDOW_BEFORE, FrameCache


def test_budget_evicts_least_recently_used() -> None:
    cache = FrameCache(max_bytes=250, ttl=60)
    for number in (1, 2):
        cache.put(("a", "g", number), bytes(100))
    assert cache.get(("a", "g", 1)) is not None
    cache.put(("a", "g", 3), bytes(100))
    assert cache.get(("a", "g", 2)) is None
    assert cache.get(("a", "g", 1)) is not None and cache.get(("a", "g", 3)) is not None


def test_frames_larger_than_the_budget_are_not_cached() -> None:
    cache = FrameCache(max_bytes=10, ttl=60)
    cache.put(("a", "g", 1), bytes(11))
    assert cache.get(("a", "g", 1)) is None


def test_frames_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = FrameCache(max_bytes=1000, ttl=5)
    cache.put(("a", "g", 1), b"x")
    later = time.monotonic() + 6
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert cache.get(("a", "g", 1)) is None


def test_generation_is_part_of_the_key() -> None:
    cache = FrameCache(max_bytes=1000, ttl=60)
    cache.put(("a", "old", 1), b"x")
    assert cache.get(("a", "new", 1)) is None


def test_a_lone_request_reads_only_itself_and_neighbours_widen_the_window() -> None:
    cache = FrameCache(max_bytes=1000, ttl=60)
    assert cache.window("a", 500, 500, 20000) == (500, 500)
    assert cache.window("b", 501, 501, 20000) == (501, 501), "other instances are not neighbours"
    assert cache.window("a", 502, 502, 20000) == (502 - WINDOW_BEFORE, 502 + WINDOW_AFTER)
    assert cache.window("a", 9000, 9000, 20000) == (9000, 9000)


def test_window_stays_inside_the_instance() -> None:
    cache = FrameCache(max_bytes=1000, ttl=60)
    cache.window("a", 2, 2, 5)
    assert cache.window("a", 1, 1, 5) == (1, 5)


def test_waiters_get_the_result_of_the_read_in_flight() -> None:
    async def scenario() -> None:
        cache = FrameCache(max_bytes=1000, ttl=60)
        futures = cache.begin([("a", "g", 1), ("a", "g", 2)])
        waiter = cache.pending(("a", "g", 2))
        assert waiter is not None
        assert cache.begin([("a", "g", 2)]) == {}, "a frame already in flight is not read twice"
        cache.finish(futures, {("a", "g", 1): b"one", ("a", "g", 2): b"two"})
        assert await waiter == b"two"
        assert cache.pending(("a", "g", 2)) is None
        assert cache.get(("a", "g", 1)) == b"one"

    asyncio.run(scenario())


def test_waiters_see_a_failed_read() -> None:
    async def scenario() -> None:
        cache = FrameCache(max_bytes=1000, ttl=60)
        futures = cache.begin([("a", "g", 1)])
        waiter = cache.pending(("a", "g", 1))
        assert waiter is not None
        cache.fail(futures, OSError("gone"))
        with pytest.raises(OSError):
            await waiter
        assert cache.pending(("a", "g", 1)) is None and cache.get(("a", "g", 1)) is None

    asyncio.run(scenario())
