"""Validators and cache headers (RFC 9110 §8.8.3 and §13.1.2, RFC 9111 §5.2).

A stored generation never changes, so every answer made from one is named by a strong
ETag over the generation and the representation chosen (frame numbers, media type,
transfer syntax, rendering parameters). Pixel answers may then be kept by the browser
for a year without asking again; metadata, whose set of instances can grow, is
revalidated each time and answered ``304`` while it is unchanged.
"""

from __future__ import annotations

import hashlib

from azurefunctions.extensions.http.fastapi import Request, Response

#: Frames, bulk data, rendered images, thumbnails: one user's browser keeps them (patient data: never shared caches).
IMMUTABLE = "private, max-age=31536000, immutable"
#: Metadata: kept, but asked again (If-None-Match) before each use.
REVALIDATE = "private, no-cache"


def etag(*parts: object) -> str:
    """A strong entity tag over ``parts`` (generation names and representation choices)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]
    return f'"{digest}"'


def boundary(tag: str) -> str:
    """The multipart boundary of the answer named ``tag``: the same bytes each time, as a strong ETag promises."""
    return "dicomweb-" + tag.strip('"')


def headers(tag: str, cache_control: str, vary: str = "Accept") -> dict[str, str]:
    """The validator and cache headers that go with every answer (and 304) of one representation."""
    return {"etag": tag, "cache-control": cache_control, "vary": vary}


def range_applies(req: Request, tag: str) -> bool:
    """Whether a ``Range`` header is to be honoured: with no ``If-Range``, or one naming ``tag`` (RFC 9110
    §13.1.5; an answer's tag names its bytes for good, so any other validator is stale)."""
    header = req.headers.get("if-range")
    return header is None or header.strip() == tag


def not_modified(req: Request, tag: str, cache_control: str, vary: str = "Accept") -> Response | None:
    """``304 Not Modified`` (no body) when ``If-None-Match`` names ``tag`` or is ``*``; None otherwise."""
    header = req.headers.get("if-none-match")
    if header is None:
        return None
    listed = {t.strip().removeprefix("W/") for t in header.split(",")}
    if "*" in listed or tag in listed:
        return Response(status_code=304, headers=headers(tag, cache_control, vary))
    return None
