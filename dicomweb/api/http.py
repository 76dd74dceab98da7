"""What every DICOMweb HTTP function shares: registration, errors, CORS and URLs.

This package is the only code that imports ``azure.functions``. Handlers use the
Functions HTTP streams model (FastAPI ``Request`` / ``StreamingResponse``), so
bodies stream both ways. Annotations stay real objects (no postponed evaluation):
the Functions worker reads them to pick the streams model.
"""

import functools
import ipaddress
import json
import logging
import re
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response, StreamingResponse

from dicomweb import audit, auth
from dicomweb.auth import Permission
from dicomweb.config import Settings
from dicomweb.dicom.syntax import is_valid_uid
from dicomweb.errors import (Archived, BadRequest, DicomWebError, Forbidden, MethodNotAllowed, NotConfigured,
                             RangeNotSatisfiable, Rehydrating, StorageFailure, Unauthorized)
from dicomweb.service import Service, get_service
from dicomweb.storage import monitor

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
#: Response headers a browser client may read.
EXPOSED = "Content-Type, Warning, Location, WWW-Authenticate, Retry-After, ETag, Link, Content-Range, Accept-Ranges"
Handler = Callable[[Request, Service], Awaitable[Response]]
#: The permission each HTTP function needs, by function name: declared by :func:`endpoint`, where it is registered
#: (None: any authenticated caller).
REQUIREMENTS: dict[str, Permission | None] = {}
#: The route template and methods of each HTTP function, by function name (the service's own route table).
ROUTES: dict[str, tuple[str, tuple[str, ...]]] = {}


def _route_prefix() -> str:
    """The ``extensions.http.routePrefix`` of host.json: the DICOMweb base path."""
    host = json.loads((Path(__file__).resolve().parents[2] / "host.json").read_text())
    return host.get("extensions", {}).get("http", {}).get("routePrefix", "api").strip("/")


ROUTE_PREFIX = _route_prefix()


_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_PREFIX = re.compile(r"(/[A-Za-z0-9._~\-]+)*")


def _trusted(peer: str | None, proxies: tuple[str, ...]) -> bool:
    """Whether the connection comes from a proxy whose forwarding headers are believed (DICOMWEB_TRUSTED_PROXIES)."""
    if "*" in proxies:
        return True
    try:
        address = ipaddress.ip_address(peer or "")
    except ValueError:
        return False
    for proxy in proxies:
        try:
            if address in ipaddress.ip_network(proxy, strict=False):
                return True
        except ValueError:
            continue
    return False


def _forwarded(req: Request) -> tuple[str | None, str | None, str | None]:
    """(proto, host, path prefix) the client used, as the nearest proxy tells: ``Forwarded`` (RFC 7239,
    its first element: the proxy the client reached), else ``X-Forwarded-Proto`` / ``-Host`` / ``-Prefix``."""
    proto = host = None
    if forwarded := req.headers.get("forwarded"):
        for pair in forwarded.split(",")[0].split(";"):
            name, _, value = pair.strip().partition("=")
            name, value = name.strip().lower(), value.strip().strip('"')
            if name == "proto":
                proto = value
            elif name == "host":
                host = value
    proto = proto or (req.headers.get("x-forwarded-proto") or "").split(",")[0].strip() or None
    host = host or (req.headers.get("x-forwarded-host") or "").split(",")[0].strip() or None
    prefix = (req.headers.get("x-forwarded-prefix") or "").split(",")[0].strip().rstrip("/") or None
    return proto, host, prefix


def _own_host(req: Request) -> str:
    """The request's ``Host``, with the port the connection came in on when a client dropped it.

    A ``Host`` that is no host name or address is refused: it would be written into URLs (and JSON).
    A client that reached this server directly sends its address as ``Host``, port included
    (RFC 9110 §7.2); dicomweb-client sends the address alone. A name other than the listening
    address came through a name or a proxy, and stays as it is.
    """
    host = req.headers.get("host") or req.url.netloc
    if not _HOST.fullmatch(host):
        raise BadRequest("the Host header names no host (it goes into the URLs of the answer)")
    server = req.scope.get("server")
    if server and host == server[0] and server[1] not in (None, 80, 443):
        return f"{host}:{server[1]}"
    return host


def base_url(req: Request, settings: Settings) -> str:
    """The public DICOMweb base URL, for RetrieveURLs and BulkDataURIs.

    ``DICOMWEB_PUBLIC_BASE_URL`` when set; else what a trusted proxy says the client used
    (a viewer behind a reverse proxy must fetch the ICC profile and frames through it); else
    the request's own ``Host``. Forwarded values that are no host name, scheme or path are ignored.
    """
    if settings.public_base_url:
        return settings.public_base_url
    proto, host, prefix = req.url.scheme, _own_host(req), ""
    if _trusted(req.client.host if req.client else None, settings.trusted_proxies):
        said_proto, said_host, said_prefix = _forwarded(req)
        if said_proto in ("http", "https"):
            proto = said_proto
        if said_host and _HOST.fullmatch(said_host):
            host = said_host
        if said_prefix and _PREFIX.fullmatch(said_prefix):
            prefix = said_prefix
    route = f"/{ROUTE_PREFIX}" if ROUTE_PREFIX else ""
    return f"{proto}://{host}{prefix}{route}"


async def primed(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``body`` with its first chunk already produced.

    Once a 200 and its headers are out, a failure can only cut the body short. Producing
    the first chunk before answering turns the failures of opening the source (an
    archived or vanished blob, storage down) into a status with a reason instead.
    """
    first = await anext(body, None)

    async def rest() -> AsyncIterator[bytes]:
        if first is not None:
            yield first
        async for chunk in body:
            yield chunk

    return rest()


async def streaming(body: AsyncIterator[bytes], media_type: str, headers: dict[str, str] | None = None
                    ) -> StreamingResponse:
    """A streamed answer whose first bytes already exist (see :func:`primed`)."""
    return StreamingResponse(await primed(body), media_type=media_type, headers=headers)


async def small_json(req: Request, most: int, shape: str) -> dict[str, Any]:
    """A request body that is a small JSON object (at most ``most`` bytes, counted as it arrives; empty: ``{}``);
    400 naming ``shape`` for anything else."""
    raw = b""
    async for chunk in req.stream():
        raw += chunk
        if len(raw) > most:
            raise BadRequest(f"the request is a small JSON object (at most {most} bytes): {shape}")
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise BadRequest(f"send a JSON object: {shape}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"send a JSON object: {shape}")
    return body


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A plain JSON answer (the extensions' resources: upload sessions, operations, rehydration, usage)."""
    return Response(json.dumps(body).encode(), status_code=status, headers=headers, media_type="application/json")


def dicom_json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A DICOM JSON answer with exactly ``Content-Type: application/dicom+json`` (no charset)."""
    response = Response(json.dumps(body).encode(), status_code=status, headers=headers)
    response.headers["content-type"] = DICOM_JSON
    return response


_UNSAFE = re.compile(r'[^\x20-\x7e]|"')


def warning_header(message: str) -> str:
    """An HTTP Warning header value (RFC 7234 §5.5, code 299) for ``message``.

    Header values are Latin-1 without control characters: anything else (a CR LF or a
    NUL a client put in a parameter, non-ASCII text) is written as an escape, so no
    client-chosen text can break the answer.
    """
    text = _UNSAFE.sub(lambda m: "'" if m.group() == '"' else m.group().encode("unicode_escape").decode(), message)
    return '299 dicomweb "' + text[:1000] + '"'


def error_response(error: DicomWebError, rehydrate: str | None = None) -> Response:
    """The one place a service error becomes an HTTP answer: status, ErrorComment, Warning header.

    Bytes that are not online (Archived) also name ``rehydrate``, the absolute URL a writer
    POSTs to bring them back: in the body, the Warning and a ``Link`` header.
    """
    message = error.message
    body: dict[str, object] = {"00000902": {"vr": "LO", "Value": [message[:64]]}, "message": message}
    headers: dict[str, str] = {}
    if isinstance(error, Archived) and rehydrate:
        message = f"{message}; POST {rehydrate}"
        body.update(message=message, rehydrate=rehydrate)
        headers["link"] = f'<{rehydrate}>; rel="rehydrate"'
    if isinstance(error, Rehydrating):
        headers["retry-after"] = str(error.retry_after)
    headers["warning"] = warning_header(message)
    if isinstance(error, Unauthorized):
        headers["www-authenticate"] = 'Bearer error="invalid_token"'
    if isinstance(error, Forbidden):
        headers["www-authenticate"] = 'Bearer error="insufficient_scope"'
    if isinstance(error, StorageFailure):
        headers["retry-after"] = str(error.retry_after)
    if isinstance(error, MethodNotAllowed):
        headers["allow"] = ", ".join(error.allowed)
    if isinstance(error, RangeNotSatisfiable):
        headers["content-range"] = f"bytes */{error.length}"
    return dicom_json(body, error.status, headers)


#: Path parameters that name UIDs: every route checks them here, before any handler uses them.
UID_PARAMETERS = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID", "instance": "SOPInstanceUID"}


def _check_path(req: Request) -> None:
    for name, keyword in UID_PARAMETERS.items():
        uid = req.path_params.get(name)
        if uid is not None and not is_valid_uid(uid):
            raise BadRequest(f"the {keyword} in the path is not a valid UID (PS3.5 9.1)")


def _cors_headers(origin: str | None, settings: Settings) -> dict[str, str]:
    allowed = settings.cors_origins
    if not origin or not allowed:
        return {}
    if "*" in allowed:
        return {"access-control-allow-origin": "*", "access-control-expose-headers": EXPOSED}
    if origin in allowed:
        return {
            "access-control-allow-origin": origin,
            "vary": "Origin",
            "access-control-expose-headers": EXPOSED,
        }
    return {}


def _preflight(req: Request, settings: Settings) -> Response:
    headers = _cors_headers(req.headers.get("origin"), settings)
    if headers:
        headers.update({
            "access-control-allow-methods": "GET, HEAD, POST, PUT, DELETE, OPTIONS",
            "access-control-allow-headers": req.headers.get("access-control-request-headers")
            or "accept, authorization, content-type",
            "access-control-max-age": "86400",
        })
    return Response(status_code=204, headers=headers)


def start_up() -> None:
    """Once per worker: export logs to Application Insights when configured, and say if nothing will be served."""
    monitor.configure()
    try:
        problem = auth.configuration_problem(Settings.from_env())
    except ValueError as exc:
        problem = str(exc)
    if problem:
        log.error("no data will be served: %s", problem)


def rehydration_url(req: Request, settings: Settings | None) -> str | None:
    """The rehydration resource of what the request addresses (its study, series or instance)."""
    study, series, instance = (req.path_params.get(name) for name in ("study", "series", "instance"))
    if settings is None or study is None:
        return None
    path = f"/studies/{study}" + (f"/series/{series}" if series else "")
    path += f"/instances/{instance}" if instance else ""
    return f"{base_url(req, settings)}{path}/rehydrate"


#: Path parameters an audit record names (UIDs and upload session ids: never patient data).
_AUDITED = {"study": "study", "series": "series", "instance": "instance", "id": "session"}


async def _answer(req: Request, handler: Handler, name: str, needs: Permission | None) -> Response:
    settings = None
    try:
        try:
            service = await get_service()
        except ValueError as exc:  # a setting that cannot be read: nothing is served until it is fixed
            raise NotConfigured(str(exc)) from None
        settings = service.settings
        if req.method == "OPTIONS":
            return _preflight(req, settings)
        principal = await service.auth.authenticate(req.headers.get("authorization"))
        auth.act_as(principal)
        if needs is not None:
            service.auth.authorize(principal, needs)
        _check_path(req)
        response = await handler(req, service)
    except DicomWebError as error:
        response = error_response(error, rehydration_url(req, settings) if isinstance(error, Archived) else None)
    except Exception:  # noqa: BLE001 - a bug still answers in DICOM JSON, and is logged
        log.exception("%s failed", name)
        response = error_response(DicomWebError("internal error; the service log has the details"))
    if needs is not Permission.READ and req.method != "GET":  # not every poll of an upload's status
        audit.record("request", "done" if response.status_code < 400 else "refused", route=name,
                     status=response.status_code, **{field: req.path_params.get(param) for param, field in _AUDITED.items()})
    if settings is not None:
        cors = _cors_headers(req.headers.get("origin"), settings)
        if (vary := cors.pop("vary", None)) is not None:
            response.headers["vary"] = ", ".join(filter(None, (response.headers.get("vary"), vary)))
        response.headers.update(cors)
    return response


def endpoint(
    blueprint: func.Blueprint, name: str, route: str, methods: list[str], needs: Permission | None
) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """Register ``handler(req, service)`` for ``route``, open to principals holding ``needs`` (None: to any
    authenticated one).

    Authentication, the permission check, path checks, errors, CORS and preflights are
    handled here, before the handler reads any of the body; every write and delete is audited.
    """
    REQUIREMENTS[name] = needs
    ROUTES[name] = route, tuple(methods)

    def register(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def function(req: Request) -> Response:
            acting = auth.act_as(auth.UNAUTHENTICATED)
            try:
                return await _answer(req, handler, name, needs)
            finally:
                auth.reset(acting)

        del function.__wrapped__  # the worker must see the one-argument signature
        function.__annotations__ = {"req": Request, "return": Response}
        blueprint.function_name(name)(
            blueprint.route(route=route, methods=[*methods, "OPTIONS"], auth_level=func.AuthLevel.ANONYMOUS)(function)
        )
        return function

    return register
