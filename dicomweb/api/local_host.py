"""A local stand-in for the Functions host: serves ``function_app.app`` with uvicorn.

Inside Azure, the Python worker forwards each HTTP-streams request to a uvicorn
server in the worker process; here uvicorn receives it directly. Routes and methods
come from the function registrations, so there is no second route table.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import azure.functions as func
from azure.functions.decorators.http import HttpTrigger
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomweb.api.http import ROUTE_PREFIX


def _endpoint(function: Callable[[Any], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await function(request)

    return endpoint


def build_app(app: func.FunctionApp) -> Starlette:
    """An ASGI app with one route per registered HTTP function, under host.json's route prefix."""
    routes = []
    for function in app.get_functions():
        trigger = function.get_trigger()
        if not isinstance(trigger, HttpTrigger):
            continue
        path = "/" + "/".join(part for part in (ROUTE_PREFIX, trigger.route) if part)
        methods = [str(getattr(m, "value", m)) for m in trigger.methods or ["GET", "POST"]]
        routes.append(Route(path, _endpoint(function.get_user_function()), methods=methods))
    return Starlette(routes=routes)
