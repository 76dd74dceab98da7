"""CPU-bound work off the event loop, a bounded number of jobs at a time.

Parsing a large header with pydicom, building a 100,000-frame offset record or
serialising a level's metadata takes up to seconds of CPU. Run on the event loop it
would stall every other request of the worker, so it runs here instead. The pool is
small on purpose: it bounds the memory and CPU that concurrent large requests take,
while the loop goes on answering the cheap ones.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")

#: Jobs that run at once per worker process (one per core of the smallest Flex Consumption instance).
WORKERS = 2
_POOL = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="dicomweb-cpu")


async def run(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in the pool; the caller's task waits without blocking the loop."""
    return await asyncio.get_running_loop().run_in_executor(_POOL, functools.partial(fn, *args))


async def run_all(calls: Iterable[tuple[Callable[..., T], tuple[object, ...]]]) -> list[T]:
    """Each ``fn(*args)`` in the pool at once, their results in order.

    Every job ends before this returns or raises (the first failure, once all are done), so
    none outlives the request that started it.
    """
    done = await asyncio.gather(*(run(fn, *args) for fn, args in calls), return_exceptions=True)
    for outcome in done:
        if isinstance(outcome, BaseException):
            raise outcome
    return done  # type: ignore[return-value]
