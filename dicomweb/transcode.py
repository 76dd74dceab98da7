"""Frames in the transfer syntax a client asks for (PS3.18 §8.7.3, PS3.5 §8).

The stored bytes are the first choice whenever the Accept header allows them; otherwise
each frame is decoded and encoded again, one frame per job of the CPU pool, so a
transcode of any size streams in bounded memory. Instances get their header rewritten
for the new syntax and their frames re-encoded in turn. Lossy output only happens when the
client named a lossy syntax (or a media type whose default is one, like ``image/jpeg``).
"""

from __future__ import annotations

import io
import json
import struct
from typing import AsyncIterator

from dicomweb import cpu, retrieve
from dicomweb.dicom import codecs, media
from dicomweb.dicom.codecs import CodecError, FrameRefused, PixelFormat
from dicomweb.dicom.part10 import UNDEFINED, Header, Part10Parser
from dicomweb.dicom.syntax import NATIVE_SYNTAXES, is_encapsulated
from dicomweb.errors import NotAcceptable, UndecodableFrame
from dicomweb.service import CachedIndex, Service
from dicomweb.storage.cosmos import Document

#: The first read of a stored header; each further read is four times larger.
HEADER_READ = 256 * 1024
#: The largest defined length of an element (0xFFFFFFFF means undefined; lengths are even).
MAX_ELEMENT_LENGTH = 0xFFFFFFFE


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
        if stored in codecs.DECODABLE and decodable(service, fmt := await pixel_format(service, cached)) \
                and codecs.encodable(choice.transfer_syntax, fmt):
            return choice
    asked = ", ".join(f"{c.media_type} ({c.transfer_syntax})" for c in choices) or "nothing this resource serves"
    raise NotAcceptable(f"frames are stored as {media.frame_media_type(stored)} ({stored}); the request accepts "
                        f"{asked}, which cannot be produced from them (frames are decoded up to "
                        f"{service.settings.max_rendered_pixels} pixels)")


def decodable(service: Service, fmt: PixelFormat) -> bool:
    """Whether frames of ``fmt`` are small enough to decode: Rows × Columns are the client's to declare, and a
    decoder allocates them whole (the codestream is checked against them at decode)."""
    return fmt.rows * fmt.columns <= service.settings.max_rendered_pixels


def _transcode(data: bytes, source: str, target: str, fmt: PixelFormat, number: int) -> bytes:
    try:
        return codecs.transcode(data, source, target, fmt)
    except FrameRefused as exc:
        raise UndecodableFrame(f"frame {number} is not decoded: {exc}") from None
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
            for out in await cpu.run_all((_transcode, (d, source, target, fmt, n)) for n, d in batch):
                yield out
            batch = []
    for out in await cpu.run_all((_transcode, (d, source, target, fmt, n)) for n, d in batch):
        yield out


async def _header(service: Service, doc: Document) -> Header:
    """The stored file's header (everything before Pixel Data), read with growing ranged reads."""
    location = retrieve.location(doc)
    size, length = doc["size"], HEADER_READ
    while True:
        length = min(length, size)
        data = await service.blobs.instances.read_range(location, 0, length)
        parser = Part10Parser(service.settings.limits)
        await cpu.run(parser.feed, data)
        if parser.header is None and length == size:
            await cpu.run(parser.close)
        if parser.header is not None:
            return parser.header
        if length >= service.settings.max_header_bytes + HEADER_READ:
            raise NotAcceptable("the stored header is larger than DICOMWEB_MAX_HEADER_MB")
        length *= 4


def _rewrite(header: Header, target: str, fmt: PixelFormat | None) -> bytes:
    """The stored header as a Part 10 header of ``target``: its transfer syntax, and the Image Pixel
    attributes of re-encoded frames (PS3.5 §8.2: photometric interpretation, lossy compression)."""
    ds = header.dataset
    ds.file_meta.TransferSyntaxUID = target
    if fmt is not None:
        ds.PhotometricInterpretation = codecs.encoded_photometric(target, fmt)
        if fmt.samples > 1:
            ds.PlanarConfiguration = 0
        for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
            if keyword in ds:
                del ds[keyword]
        if target in codecs.LOSSY_METHODS:
            ds.LossyImageCompression = "01"
            methods = list(ds.get("LossyImageCompressionMethod") or [])
            ds.LossyImageCompressionMethod = [*methods, codecs.LOSSY_METHODS[target]]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _is_stored(doc: Document, target: str) -> bool:
    return target == "*" or doc["transferSyntaxUID"] == target


def native_fits(frames: int, fmt: PixelFormat) -> bool:
    """Whether ``frames`` native frames fit one Pixel Data element: its length is 32 bits (PS3.5 §7.1.1),
    so a native copy of more than 4 GB of pixels cannot be written, only encapsulated ones."""
    length = frames * fmt.decoded().native_length
    return length + length % 2 <= MAX_ELEMENT_LENGTH


async def _producible(service: Service, doc: Document, target: str) -> bool:
    """Whether instance ``doc`` can be sent as ``target``."""
    if _is_stored(doc, target):
        return True
    if not doc.get("numberOfFrames"):
        return target in NATIVE_SYNTAXES or is_encapsulated(target)
    cached = await retrieve.frame_index(service, doc["studyInstanceUID"], doc["seriesInstanceUID"],
                                        doc["sopInstanceUID"])
    stored = cached.frames.transfer_syntax
    if media.frame_label(stored) == target:
        return True
    fmt = await pixel_format(service, cached)
    if not is_encapsulated(target) and not native_fits(len(cached.frames), fmt):
        return False
    return stored in codecs.DECODABLE and decodable(service, fmt) and codecs.encodable(target, fmt)


async def choose_instances(service: Service, docs: list[Document], accept: str | None,
                           single_allowed: bool) -> media.Choice:
    """The first transfer syntax the client accepts that every instance can be sent in; 406 otherwise."""
    stored = {d["transferSyntaxUID"] for d in docs}
    choices = media.instance_choices(accept, stored, single_allowed)
    for choice in choices:
        if all([await _producible(service, doc, choice.transfer_syntax) for doc in docs]):
            return choice
    asked = ", ".join(c.transfer_syntax for c in choices) or "no application/dicom"
    raise NotAcceptable(f"the instances are stored as {', '.join(sorted(stored))}; the request accepts {asked}, "
                        "which they cannot all be sent in (native pixel data holds at most 4 GB)")


def _pixel_element(target: str, fmt: PixelFormat, frames: int) -> tuple[bytes, int]:
    """The Pixel Data element header of ``frames`` re-encoded frames, and the padding after them."""
    if is_encapsulated(target):
        return struct.pack("<HH2sHIHHI", 0x7FE0, 0x0010, b"OB", 0, UNDEFINED, 0xFFFE, 0xE000, 0), 0
    length = frames * fmt.decoded().native_length
    vr = b"OW" if fmt.bits_allocated > 8 else b"OB"
    return struct.pack("<HH2sHI", 0x7FE0, 0x0010, vr, 0, length + length % 2), length % 2


async def _items(frames_: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Frames as encapsulated items (one fragment each, padded to even length), then the delimiter (PS3.5 §A.4)."""
    async for frame in frames_:
        pad = len(frame) % 2
        yield struct.pack("<HHI", 0xFFFE, 0xE000, len(frame) + pad) + frame + b"\0" * pad
    yield struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


async def instance(service: Service, doc: Document, target: str) -> tuple[str, int | None, AsyncIterator[bytes]]:
    """Instance ``doc`` as ``target``: (its transfer syntax, its size when known, its bytes).

    Stored files go out as they are. Otherwise the header is rewritten and each frame re-encoded
    in turn (native frames of another native syntax are copied), so any size streams in bounded memory.
    """
    location = retrieve.location(doc)
    if _is_stored(doc, target):
        return doc["transferSyntaxUID"], doc["size"], service.blobs.instances.stream(location)
    header = await _header(service, doc)
    if not doc.get("numberOfFrames") or header.pixel_value_offset is None:
        head = await cpu.run(_rewrite, header, target, None)
        return target, len(head), _once(head)
    cached = await retrieve.frame_index(service, doc["studyInstanceUID"], doc["seriesInstanceUID"],
                                        doc["sopInstanceUID"])
    fmt = await pixel_format(service, cached)
    head = await cpu.run(_rewrite, header, target, fmt)
    count = len(cached.frames)
    numbers = list(range(1, count + 1))
    stored = retrieve.read_frames(service, location.study, location.series, location.sop, numbers)
    source = cached.frames.transfer_syntax
    if media.frame_label(source) == target:
        body = stored
    else:
        body = frames(stored, numbers, source, target, fmt)
    element, pad = _pixel_element(target, fmt, count)
    pixels = _items(body) if is_encapsulated(target) else body
    # The first frame is re-encoded before the answer starts: one that is not decoded is a status, not a cut body.
    first = await anext(pixels, b"")
    if is_encapsulated(target):
        return target, None, _chain(head + element + first, pixels)
    size = len(head) + len(element) + count * fmt.decoded().native_length + pad
    return target, size, _chain(head + element + first, pixels, b"\0" * pad)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _chain(first: bytes, rest: AsyncIterator[bytes], last: bytes = b"") -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk
    if last:
        yield last
