"""Streaming multipart reader and writer."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import pytest

from dicomweb.dicom.multipart import MultipartReader, multipart_body, parse_media_type, split_list, write_multipart
from dicomweb.errors import BadRequest


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _read_all(data: bytes, boundary: str, size: int) -> list[tuple[dict[str, str], bytes]]:
    reader = MultipartReader(_chunks(data, size), boundary)
    parts = []
    while (part := await reader.next_part()) is not None:
        parts.append((part.headers, b"".join([chunk async for chunk in part])))
    return parts


PAYLOADS = [b"\r\n--almost-the-boundary\r\n" + bytes(range(256)) * 40, b"", b"second\r\n--xy"]


@pytest.mark.parametrize("size", [1, 5, 64, 100000])
def test_round_trip(size: int) -> None:
    async def parts():  # type: ignore[no-untyped-def]
        for i, payload in enumerate(PAYLOADS):
            yield {"Content-Type": f"application/dicom; n={i}"}, _chunks(payload, 7)

    async def run() -> list[tuple[dict[str, str], bytes]]:
        body = b"".join([c async for c in write_multipart(parts(), "xyz")])
        return await _read_all(b"\r\n" + body, "xyz", size)

    parsed = asyncio.run(run())
    assert [p for _, p in parsed] == PAYLOADS
    assert parsed[0][0] == {"content-type": "application/dicom; n=0"}


def test_whole_body_equals_the_streamed_one() -> None:
    async def parts():  # type: ignore[no-untyped-def]
        for payload in PAYLOADS:
            yield {"Content-Type": "image/jpeg"}, _chunks(payload, 7)

    async def streamed() -> bytes:
        return b"".join([c async for c in write_multipart(parts(), "xyz")])

    whole = multipart_body([({"Content-Type": "image/jpeg"}, p) for p in PAYLOADS], "xyz")
    assert whole == asyncio.run(streamed())
    assert [p for _, p in asyncio.run(_read_all(whole, "xyz", 64))] == PAYLOADS


def test_preamble_and_unread_parts_are_skipped() -> None:
    body = b"preamble text\r\n--b\r\nContent-Type: a\r\n\r\nONE\r\n--b\r\n\r\nTWO\r\n--b--\r\nepilogue"

    async def run() -> bytes:
        reader = MultipartReader(_chunks(body, 3), "b")
        await reader.next_part()
        second = await reader.next_part()
        assert second is not None and await reader.next_part() is None
        return b""

    asyncio.run(run())
    assert [p for _, p in asyncio.run(_read_all(body, "b", 4))] == [b"ONE", b"TWO"]


def test_truncated_body_fails() -> None:
    with pytest.raises(BadRequest, match="truncated"):
        asyncio.run(_read_all(b"--b\r\n\r\npartial data", "b", 4))


def test_missing_boundary_fails() -> None:
    with pytest.raises(BadRequest):
        asyncio.run(_read_all(b"--other\r\n\r\nx\r\n--other--", "b", 4))


def test_media_type_parsing() -> None:
    assert parse_media_type('Multipart/Related; type="application/dicom"; boundary="a;b"') == (
        "multipart/related", {"type": "application/dicom", "boundary": "a;b"})
    assert split_list('a; x="1,2", b') == ['a; x="1,2"', "b"]
