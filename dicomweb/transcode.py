"""Frames in the transfer syntax a client asks for (PS3.18 §8.7.3, PS3.5 §8).

The stored bytes are the first choice whenever the Accept header allows them; otherwise
each frame is decoded and encoded again, one frame per job of the CPU pool, so a
transcode of any size streams in bounded memory. Lossy output only happens when the
client named a lossy syntax (or a media type whose default is one, like ``image/jpeg``).
"""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator

from dicomweb import cpu
from dicomweb.dicom import codecs, media
from dicomweb.dicom.codecs import CodecError, PixelFormat
from dicomweb.errors import NotAcceptable
from dicomweb.service import CachedIndex, Service


async def pixel_format(service: Service, cached: CachedIndex) -> PixelFormat:
    """The Image Pixel attributes of a generation, from its metadata sidecar (once per process)."""
    if cached.pixels is None:
        raw = await service.blobs.sidecars.get(cached.location.sidecar("json"))
        sidecar = await cpu.run(json.loads, raw)
        try:
            cached.pixels = PixelFormat.from_json(sidecar["dataset"])
        except CodecError as exc:
            raise NotAcceptable(f"the frames cannot be transcoded: {exc}") from None
    return cached.pixels


async def choose(service: Service, cached: CachedIndex, accept: str | None, single: bool) -> media.Choice:
    """The first representation the client accepts that is stored or can be transcoded to; 406 otherwise."""
    stored = cached.frames.transfer_syntax
    label = media.frame_label(stored)
    choices = media.frame_choices(accept, stored, single)
    for choice in choices:
        if choice.transfer_syntax == label:
            return choice
        if stored in codecs.DECODABLE and codecs.encodable(choice.transfer_syntax, await pixel_format(service, cached)):
            return choice
    asked = ", ".join(f"{c.media_type} ({c.transfer_syntax})" for c in choices) or "nothing this resource serves"
    raise NotAcceptable(f"frames are stored as {media.frame_media_type(stored)} ({stored}); the request accepts "
                        f"{asked}, which cannot be produced from them")


def _transcode(data: bytes, source: str, target: str, fmt: PixelFormat, number: int) -> bytes:
    try:
        return codecs.transcode(data, source, target, fmt)
    except CodecError as exc:
        raise NotAcceptable(f"frame {number} cannot be transcoded to {target}: {exc}") from None


async def frames(stored: AsyncIterator[bytes], numbers: list[int], source: str, target: str,
                 fmt: PixelFormat) -> AsyncIterator[bytes]:
    """The stored frames re-encoded as ``target``, in order, as many at once as the CPU pool runs."""
    batch: list[tuple[int, bytes]] = []
    numbered = iter(numbers)
    async for data in stored:
        batch.append((next(numbered), data))
        if len(batch) == cpu.WORKERS:
            for out in await asyncio.gather(*(cpu.run(_transcode, d, source, target, fmt, n) for n, d in batch)):
                yield out
            batch = []
    for out in await asyncio.gather(*(cpu.run(_transcode, d, source, target, fmt, n) for n, d in batch)):
        yield out
