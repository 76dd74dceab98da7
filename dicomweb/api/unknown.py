"""What the service does not have: every other path below the base URL, and every other method of a path it has,
answers in DICOM JSON like any error (404, or 405 with ``Allow``), not with the platform's plain-text page.

One function with a catch-all route (``{*path}``) takes them. The Functions host matches routes
in the alphabetical order of their functions' names, not by how specific the route is (ASP.NET's
precedence; azure-functions-host issue 9876), so its name sorts after every other function's
(``tests/api/test_unknown.py`` checks it, and ``dicomweb serve`` orders routes the same way). A
method a route lacks fails that route's method constraint and falls through to it as well.
"""

from __future__ import annotations

import functools
import re

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from dicomweb.api.http import ROUTES, endpoint
from dicomweb.errors import MethodNotAllowed, NotFound
from dicomweb.service import Service

blueprint = func.Blueprint()

#: Sorts after every other function's name: the host tries routes in that order.
NAME = "zz_unknown_route"
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


@functools.cache
def _templates() -> list[tuple[re.Pattern[str], tuple[str, ...]]]:
    """Each other route as a pattern of the path below the base URL, with its methods."""
    return [(re.compile(re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(route)) + "/?"), methods)
            for name, (route, methods) in ROUTES.items() if name != NAME]


@endpoint(blueprint, NAME, "{*path}", METHODS, None)
async def unknown(req: Request, service: Service) -> Response:  # noqa: ARG001 - the endpoint's shape
    """404 for a path the service does not have; 405 naming the methods of one it has."""
    path = req.path_params.get("path") or ""
    allowed = sorted({method for pattern, methods in _templates() if pattern.fullmatch(path) for method in methods})
    if allowed:
        allowed.append("OPTIONS")  # every route answers a browser's preflight
        raise MethodNotAllowed(f"{req.method} is not a method of this resource; it takes {', '.join(allowed)}",
                               tuple(allowed))
    raise NotFound("no such resource: see the README's API for the paths this service has")
