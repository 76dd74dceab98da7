"""A local stand-in for the Functions host: serves ``function_app.app`` with uvicorn.

Inside Azure, the Python worker forwards each HTTP-streams request to a uvicorn
server in the worker process; here uvicorn receives it directly. Routes and methods
come from the function registrations, so there is no second route table. Timer
functions run on their schedule while the app runs (the ``*/N`` schedules this
service uses; the Functions host runs any NCRONTAB). Queue-triggered functions get
their messages as the Functions host delivers them, with ``host.json``'s
``extensions.queues`` settings: up to ``batchSize`` at once, each kept invisible while
its function runs, made visible again ``visibilityTimeout`` after a failure, and moved
to the poison queue after ``maxDequeueCount`` deliveries. HTTP requests are let in
``concurrency`` at a time, the rest waiting their turn, as one Flex Consumption
instance gets at most ``perInstanceConcurrency`` requests in flight (the platform sends
the others to other instances): a local load test sees what one Azure instance sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import azure.functions as func
from azure.functions.decorators.http import HttpTrigger
from azure.functions.decorators.queue import QueueTrigger
from azure.functions.decorators.timer import TimerTrigger
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomweb.api.http import ROUTE_PREFIX
from dicomweb.config import Settings
from dicomweb.storage.clients import queue_consumer
from dicomweb.storage.queues import Delivery, QueueConsumer

log = logging.getLogger(__name__)

_UNITS = (1, 60, 3600)
#: How long a delivered message stays invisible while its function runs; renewed at half of it.
#: The Functions host does the same (with minutes): a worker that vanishes lets the message reappear.
HOLD_SECONDS = 10
#: The first wait after an empty receive; it doubles up to ``maxPollingInterval``, as the host's does.
FIRST_POLL_SECONDS = 0.05


def _seconds(text: str) -> float:
    """A host.json TimeSpan ("hh:mm:ss") in seconds."""
    hours, minutes, seconds = text.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@dataclass(frozen=True)
class QueueOptions:
    """``host.json`` ``extensions.queues``, with the Functions host's defaults."""

    batch_size: int = 16
    max_dequeue_count: int = 5
    visibility_timeout: float = 0.0
    max_polling_interval: float = 60.0

    @classmethod
    def from_host_json(cls, path: Path) -> "QueueOptions":
        queues = json.loads(path.read_text()).get("extensions", {}).get("queues", {})
        return cls(int(queues.get("batchSize", cls.batch_size)), int(queues.get("maxDequeueCount",
                                                                                 cls.max_dequeue_count)),
                   _seconds(queues.get("visibilityTimeout", "00:00:00")),
                   _seconds(queues.get("maxPollingInterval", "00:01:00")))


HOST_JSON = Path(__file__).resolve().parents[2] / "host.json"


def resolve(name: str, env: dict[str, str] | None = None) -> str:
    """A binding expression's value: ``%SETTING%`` parts are app settings, as the host reads them (a missing
    one is an error, as it is for the host)."""
    env = dict(os.environ) if env is None else env

    def setting(match: re.Match[str]) -> str:
        value = env.get(match.group(1), "").strip()
        if not value:
            raise ValueError(f"the binding expression {name!r} needs the app setting {match.group(1)}")
        return value

    return re.sub(r"%([^%]+)%", setting, name)


def interval_seconds(schedule: str) -> int:
    """Seconds between runs of an NCRONTAB step schedule: ``*/N * * * * *``, ``0 */N * * * *`` or ``0 0 */N * * *``."""
    fields = schedule.split()
    if len(fields) == 6 and fields[3:] == ["*", "*", "*"]:
        for position, unit in enumerate(_UNITS):
            head, step, tail = fields[:position], fields[position], fields[position + 1 : 3]
            if all(f == "0" for f in head) and step.startswith("*/") and step[2:].isdigit() \
                    and all(f == "*" for f in tail) and int(step[2:]) > 0:
                return int(step[2:]) * unit
    raise ValueError(f"the local host runs only */N schedules, not {schedule!r}")


def _endpoint(function: Callable[[Any], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await function(request)

    return endpoint


async def _every(seconds: int, name: str, function: Callable[[TimerRequest], Awaitable[None]]) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await function(TimerRequest())
        except Exception:  # noqa: BLE001 - a failed run is logged; the next one comes on schedule
            log.exception("timer function %s failed", name)


async def _deliver(consumer: QueueConsumer, delivery: Delivery, name: str,
                   function: Callable[[func.QueueMessage], Awaitable[None]], options: QueueOptions) -> None:
    """Run one delivery; complete it, make it visible again for a retry, or poison it."""
    async def keep_holding() -> None:
        while True:
            await asyncio.sleep(HOLD_SECONDS / 2)
            try:
                await consumer.hold(delivery, HOLD_SECONDS)
            except Exception:  # noqa: BLE001 - the queue service blinked: the next renewal may pass
                log.warning("queue function %s: could not renew the hold of its message", name)

    holder = asyncio.create_task(keep_holding())
    try:
        await function(QueueMessage(id=delivery.id, body=delivery.content.encode(),
                                    dequeue_count=delivery.dequeue_count, pop_receipt=delivery.pop_receipt))
        failed = False
    except Exception:  # noqa: BLE001 - a failed delivery is retried (or poisoned), as the host does
        log.exception("queue function %s failed (delivery %d)", name, delivery.dequeue_count)
        failed = True
    finally:
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)
    try:
        if not failed:
            await consumer.complete(delivery)
        elif delivery.dequeue_count >= options.max_dequeue_count:
            await consumer.poison(delivery)
        else:
            await consumer.hold(delivery, int(options.visibility_timeout))
    except Exception:  # noqa: BLE001 - the message reappears once its hold lapses
        log.exception("queue function %s: could not settle its message", name)


async def _listen(queue: str, name: str, function: Callable[[func.QueueMessage], Awaitable[None]],
                  options: QueueOptions) -> None:
    """Deliver the messages of ``queue`` to ``function`` until cancelled."""
    consumer = queue_consumer(Settings.from_env(), queue)
    running: set[asyncio.Task[None]] = set()
    wait = FIRST_POLL_SECONDS
    try:
        while True:
            try:
                await consumer.ensure()
                break
            except Exception:  # noqa: BLE001 - the queue service is not up yet
                log.warning("queue %s: cannot reach the queue service; trying again", queue)
                await asyncio.sleep(1)
        while True:
            free = options.batch_size - len(running)
            if free <= 0:
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                deliveries = await consumer.receive(min(free, 32), HOLD_SECONDS)
            except Exception:  # noqa: BLE001 - the queue service is away: try again shortly
                log.warning("queue %s: receive failed; trying again", queue)
                deliveries = []
            if not deliveries:
                await asyncio.sleep(wait)
                wait = min(wait * 2, options.max_polling_interval)
                continue
            wait = FIRST_POLL_SECONDS
            for delivery in deliveries:
                task = asyncio.create_task(_deliver(consumer, delivery, name, function, options))
                running.add(task)
                task.add_done_callback(running.discard)
    finally:
        for task in list(running):
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await consumer.close()


class PerInstanceConcurrency:
    """ASGI middleware: at most ``limit`` HTTP requests in flight, each until its last body byte is sent."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the per-instance concurrency must be at least 1, not {limit}")
        self.app = app
        self.limit = limit
        self._slots = asyncio.Semaphore(limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        async with self._slots:
            await self.app(scope, receive, send)


@functools.cache
def registered(app: func.FunctionApp) -> list[Any]:
    """The functions ``app`` registers. ``FunctionApp.get_functions`` builds them anew and fails when
    called twice (its names would repeat), so the first answer is kept."""
    return app.get_functions()


def build_app(app: func.FunctionApp, concurrency: int) -> PerInstanceConcurrency:
    """An ASGI app with one route per registered HTTP function, under host.json's route prefix, letting in
    ``concurrency`` requests at a time; timers and queue listeners run while it does."""
    routes = []
    timers: list[tuple[int, str, Callable[[TimerRequest], Awaitable[None]]]] = []
    queues: list[tuple[str, str, Callable[[func.QueueMessage], Awaitable[None]]]] = []
    # The Functions host tries routes in the alphabetical order of their functions' names (not by how specific
    # they are: azure-functions-host issue 9876), so the catch-all of dicomweb/api/unknown.py comes last.
    for function in sorted(registered(app), key=lambda function: function.get_function_name()):
        trigger = function.get_trigger()
        if isinstance(trigger, TimerTrigger):
            timers.append((interval_seconds(trigger.schedule), function.get_function_name(),
                           function.get_user_function()))
        if isinstance(trigger, QueueTrigger):
            queues.append((trigger.queue_name, function.get_function_name(), function.get_user_function()))
        if not isinstance(trigger, HttpTrigger):
            continue
        template = re.sub(r"\{\*(\w+)\}", r"{\1:path}", trigger.route)  # Azure's catch-all, in Starlette's words
        path = "/" + "/".join(part for part in (ROUTE_PREFIX, template) if part)
        methods = [str(getattr(m, "value", m)) for m in trigger.methods or ["GET", "POST"]]
        route = Route(path, _endpoint(function.get_user_function()), methods=methods)
        if "HEAD" not in methods:
            route.methods.discard("HEAD")  # Starlette adds it to GET; the Functions host does not
        routes.append(route)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        options = QueueOptions.from_host_json(HOST_JSON)
        tasks = [asyncio.create_task(_every(*timer)) for timer in timers]
        tasks += [asyncio.create_task(_listen(resolve(queue), name, function, options))
                  for queue, name, function in queues]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    return PerInstanceConcurrency(Starlette(routes=routes, lifespan=lifespan), concurrency)
