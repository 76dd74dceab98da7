"""Streaming ``multipart/related`` (RFC 2387 over RFC 2046 §5.1) in both directions.

The reader splits a body of any size into parts without holding more than one chunk
plus a boundary's worth of bytes; the writer frames parts as their bytes are produced.
"""

from __future__ import annotations

import secrets
from typing import AsyncIterable, AsyncIterator, Iterable

from dicomweb.errors import BadRequest


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype; a=b; c="d"`` → (lower-cased type, parameters with lower-cased names)."""
    parts = _split_unquoted(value, ";")
    media = parts[0].strip().lower()
    params: dict[str, str] = {}
    for part in parts[1:]:
        name, sep, raw = part.partition("=")
        if not sep:
            continue
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = raw[1:-1]
        params[name.strip().lower()] = raw
    return media, params


def _split_unquoted(value: str, sep: str) -> list[str]:
    """Split at ``sep`` outside double quotes."""
    out, current, quoted = [], [], False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == sep and not quoted:
            out.append("".join(current))
            current = []
        else:
            current.append(char)
    out.append("".join(current))
    return out


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value (such as Accept) outside quotes."""
    return [item.strip() for item in _split_unquoted(value, ",") if item.strip()]


class Part:
    """One body part: its headers (lower-cased names) and its bytes, read once as they arrive."""

    def __init__(self, reader: "MultipartReader", headers: dict[str, str]) -> None:
        self.headers = headers
        self._reader = reader
        self.done = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._reader._part_body(self)

    @property
    def content_type(self) -> str:
        """The part's media type, lower-cased, without parameters."""
        return parse_media_type(self.headers.get("content-type", ""))[0]


class MultipartReader:
    """Reads the parts of a multipart body from an async byte stream."""

    def __init__(self, chunks: AsyncIterable[bytes], boundary: str) -> None:
        if not boundary or len(boundary) > 200:
            raise BadRequest("multipart body needs a boundary parameter of 1 to 200 characters")
        self._chunks = chunks.__aiter__()
        self._delimiter = b"\r\n--" + boundary.encode("latin-1")
        self._buf = bytearray(b"\r\n")  # lets the first delimiter match like the others
        self._eof = False
        self._finished = False
        self._truncated = False
        self._current: Part | None = None

    async def _fill(self) -> bool:
        if self._eof:
            return False
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            self._eof = True
            return False
        self._buf += chunk
        return True

    async def next_part(self) -> Part | None:
        """The next part, or None after the close delimiter. Drains an unread previous part."""
        if self._current is not None and not self._current.done and not self._truncated:
            async for _ in self._current:
                pass
        if self._finished or self._truncated:  # a truncated part has reported the body's end itself
            return None
        if self._current is None:
            await self._skip_preamble()
        # After a delimiter: "--" closes, otherwise optional whitespace then CRLF.
        while len(self._buf) < 2 and await self._fill():
            pass
        if self._buf[:2] == b"--":
            self._finished = True
            return None
        while (end := self._buf.find(b"\r\n\r\n")) < 0:
            if len(self._buf) > 16384:
                raise BadRequest("multipart part headers exceed 16 KiB")
            if not await self._fill():
                if self._buf.strip() == b"":
                    raise BadRequest("multipart body ends without its close delimiter")
                end = len(self._buf)
                break
        headers: dict[str, str] = {}
        lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        del self._buf[: end + 4]
        self._current = Part(self, headers)
        return self._current

    async def _skip_preamble(self) -> None:
        while (at := self._buf.find(self._delimiter)) < 0:
            keep = len(self._delimiter)
            if len(self._buf) > keep:
                del self._buf[: len(self._buf) - keep]
            if not await self._fill():
                raise BadRequest("multipart body holds no part with the declared boundary")
        del self._buf[: at + len(self._delimiter)]

    async def _part_body(self, part: Part) -> AsyncIterator[bytes]:
        delimiter = self._delimiter
        keep = len(delimiter) - 1
        while True:
            at = self._buf.find(delimiter)
            if at >= 0:
                if at:
                    yield bytes(self._buf[:at])
                del self._buf[: at + len(delimiter)]
                part.done = True
                return
            if len(self._buf) > keep:
                out = bytes(self._buf[: len(self._buf) - keep])
                del self._buf[: len(self._buf) - keep]
                yield out
            if not await self._fill():
                self._truncated = True
                raise BadRequest("multipart body ends inside a part (truncated upload)")


def new_boundary() -> str:
    """A boundary that cannot occur in DICOM payloads by chance."""
    return "dicomweb-" + secrets.token_hex(16)


async def write_multipart(
    parts: AsyncIterable[tuple[dict[str, str], AsyncIterable[bytes] | bytes]], boundary: str
) -> AsyncIterator[bytes]:
    """Frame each (headers, body) pair as a part, streaming the bodies (a body made whole is sent as it is)."""
    opener = f"--{boundary}\r\n".encode()
    async for headers, body in parts:
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        yield opener + head.encode("latin-1") + b"\r\n"
        if isinstance(body, bytes):
            yield body
        else:
            async for chunk in body:
                yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def multipart_body(parts: Iterable[tuple[dict[str, str], bytes]], boundary: str) -> bytes:
    """A whole multipart/related body in one piece, for answers small enough to send in one write."""
    opener = f"--{boundary}\r\n".encode()
    pieces = []
    for headers, body in parts:
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        pieces += [opener, head.encode("latin-1"), b"\r\n", body, b"\r\n"]
    pieces.append(f"--{boundary}--\r\n".encode())
    return b"".join(pieces)
