"""A local stand-in for the Functions host: serves ``function_app.app`` with uvicorn.

Inside Azure, the Python worker forwards each HTTP-streams request to a uvicorn
server in the worker process; here uvicorn receives it directly. Routes and methods
come from the function registrations, so there is no second route table. Timer
functions run on their schedule while the app runs (the ``*/N`` schedules this
service uses; the Functions host runs any NCRONTAB).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any, AsyncIterator, Awaitable, Callable

import azure.functions as func
from azure.functions.decorators.http import HttpTrigger
from azure.functions.decorators.timer import TimerTrigger
from azure.functions.timer import TimerRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomweb.api.http import ROUTE_PREFIX

log = logging.getLogger(__name__)

_UNITS = (1, 60, 3600)


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


@functools.cache
def registered(app: func.FunctionApp) -> list[Any]:
    """The functions ``app`` registers. ``FunctionApp.get_functions`` builds them anew and fails when
    called twice (its names would repeat), so the first answer is kept."""
    return app.get_functions()


def build_app(app: func.FunctionApp) -> Starlette:
    """An ASGI app with one route per registered HTTP function, under host.json's route prefix."""
    routes = []
    timers: list[tuple[int, str, Callable[[TimerRequest], Awaitable[None]]]] = []
    for function in registered(app):
        trigger = function.get_trigger()
        if isinstance(trigger, TimerTrigger):
            timers.append((interval_seconds(trigger.schedule), function.get_function_name(),
                           function.get_user_function()))
        if not isinstance(trigger, HttpTrigger):
            continue
        path = "/" + "/".join(part for part in (ROUTE_PREFIX, trigger.route) if part)
        methods = [str(getattr(m, "value", m)) for m in trigger.methods or ["GET", "POST"]]
        routes.append(Route(path, _endpoint(function.get_user_function()), methods=methods))

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(_every(*timer)) for timer in timers]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    return Starlette(routes=routes, lifespan=lifespan)
