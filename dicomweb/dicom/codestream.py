"""What a frame's codestream header declares, read without decoding, and its check against the instance.

A compressed frame names its own size: the JPEG frame header (ITU-T T.81 §B.2.2), the JPEG 2000
and HTJ2K image and tile size marker segment SIZ (ISO/IEC 15444-1 §A.5.1), the JPEG-LS frame
header SOF55 (ISO/IEC 14495-1 §C.2.2). Decoders size their output by that header, not by the
instance's Rows and Columns, so a 256×256 frame whose header claims 30000×30000 makes them
allocate gigabytes. :func:`check` holds the header against the Image Pixel attributes (PS3.3
§C.7.6.3) before a decoder sees the frame; an RLE frame declares no size, but its segment table
(PS3.5 Annex G) must fit the samples and the frame. Ingest checks the first and the last frame of
an instance the same way. Reading a header walks at most :data:`MAX_HEADER` bytes and
:data:`MAX_SEGMENTS` marker segments or boxes: microseconds for a real frame.
"""

from __future__ import annotations

import itertools
import re
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from dicomweb.dicom.syntax import FRAME_MEDIA_TYPES, NATIVE_SYNTAXES

if TYPE_CHECKING:
    from dicomweb.dicom.codecs import PixelFormat

#: The most bytes of a frame walked to reach its header (JPEG application segments may come first).
MAX_HEADER = 1024 * 1024
#: The most marker segments (or JP2 boxes) walked to reach it.
MAX_SEGMENTS = 1024

_FILL = re.compile(rb"\xff*")
_U16 = struct.Struct(">H")
#: JPEG frame header markers (T.81 Table B.1; C4 DHT, C8 JPG and CC DAC are not) and the sample precisions
#: each process allows (T.81 Table B.2): baseline 8; extended and progressive DCT 8 or 12; lossless 2 to 16.
#: DHP (DE) opens a hierarchical image with the same parameters as a frame header (T.81 §B.3.2).
_DCT = frozenset({8, 12})
_LOSSLESS = frozenset(range(2, 17))
_JPEG_FRAMES = {0xC0: frozenset({8}), 0xC1: _DCT, 0xC2: _DCT, 0xC3: _LOSSLESS, 0xC5: _DCT, 0xC6: _DCT,
                0xC7: _LOSSLESS, 0xC9: _DCT, 0xCA: _DCT, 0xCB: _LOSSLESS, 0xCD: _DCT, 0xCE: _DCT,
                0xCF: _LOSSLESS, 0xDE: _LOSSLESS}
#: The JPEG-LS frame header, SOF55 (T.87 §C.2.2), and its precisions.
_JPEG_LS_FRAMES = {0xF7: _LOSSLESS}
#: Markers without a length: TEM and RST0-7 (T.81 §B.1.1.3).
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_RLE = "image/x-dicom-rle"


class HeaderError(ValueError):
    """A frame's codestream header is malformed, or declares another image than the instance's attributes."""


class Truncated(HeaderError):
    """The bytes given end before the header does: more of the frame may hold it."""


@dataclass(frozen=True)
class Declared:
    """The image a codestream header declares."""

    #: The header that says so, as a message names it (``JPEG frame header (SOF0)``).
    source: str
    columns: int
    rows: int
    samples: int
    #: Bits per sample (the largest of the components').
    precision: int


def _need(data: bytes, pos: int, size: int) -> None:
    """The header goes on for ``size`` bytes from ``pos``: they must be within bounds, and given."""
    if pos + size > MAX_HEADER:
        raise HeaderError(f"the codestream header does not end within the frame's first {MAX_HEADER} bytes")
    if pos + size > len(data):
        raise Truncated(f"the bytes end at {len(data)}, inside the codestream header")


def _frame_header(data: bytes, pos: int, marker: int, what: str, precisions: frozenset[int]) -> Declared:
    """A T.81 §B.2.2 (or T.87 §C.2.2) frame header at ``pos``: Lf, P, Y, X, Nf and Nf component specifications."""
    _need(data, pos, 8)
    length, precision, rows, columns, samples = struct.unpack_from(">HBHHB", data, pos)
    source = f"{what} frame header ({'DHP' if marker == 0xDE else f'SOF{marker - 0xC0}'})"
    if samples == 0 or length != 8 + 3 * samples:
        raise HeaderError(f"the {source} is malformed: {samples} components in {length} bytes")
    _need(data, pos, length)
    if precision not in precisions:
        raise HeaderError(f"the {source} declares {precision}-bit samples, which its process does not have "
                          f"({', '.join(map(str, sorted(precisions)))})")
    return Declared(source, columns, rows, samples, precision)


def _markers(data: bytes, frames: dict[int, frozenset[int]], what: str) -> Declared:
    """Walk the marker segments from SOI, each skipped by its length, to the first frame header (T.81 §B.1.1)."""
    _need(data, 0, 2)
    if data[:2] != b"\xff\xd8":
        raise HeaderError(f"a {what} codestream starts with SOI (FFD8), this one with {bytes(data[:2]).hex()}")
    pos = 2
    for _ in range(MAX_SEGMENTS):
        _need(data, pos, 4)  # a marker, and a length or the next marker
        if data[pos] != 0xFF:
            raise HeaderError(f"the {what} codestream has no marker at byte {pos}")
        at = pos
        pos += 1
        if data[pos] == 0xFF:  # fill bytes may precede a marker (T.81 §B.1.1.2)
            pos = _FILL.match(data, pos, min(len(data), MAX_HEADER)).end()
            _need(data, pos, 3)
        marker = data[pos]
        pos += 1
        if marker in frames:
            return _frame_header(data, pos, marker, what, frames[marker])
        if marker in _STANDALONE:
            continue
        if marker in (0x00, 0xD8, 0xD9, 0xDA) or 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            raise HeaderError(f"the {what} codestream has marker FF{marker:02X} at byte {at} before any frame header")
        (length,) = _U16.unpack_from(data, pos)
        if length < 2:
            raise HeaderError(f"the {what} marker segment FF{marker:02X} at byte {at} has length {length}")
        pos += length
    raise HeaderError(f"the {what} codestream has more than {MAX_SEGMENTS} marker segments before its frame header")


def _jpeg(data: bytes) -> Declared:
    return _markers(data, _JPEG_FRAMES, "JPEG")


def _jpeg_ls(data: bytes) -> Declared:
    return _markers(data, _JPEG_LS_FRAMES, "JPEG-LS")


def _siz(data: bytes, pos: int) -> Declared:
    """SOC, then SIZ as the first marker segment of the main header (ISO/IEC 15444-1 §A.4.1, §A.5.1)."""
    _need(data, pos, 4)
    if bytes(data[pos : pos + 4]) != b"\xff\x4f\xff\x51":
        raise HeaderError("a JPEG 2000 codestream starts with SOC and SIZ (FF4F FF51), this one with "
                          f"{bytes(data[pos : pos + 4]).hex()}")
    pos += 4
    _need(data, pos, 38)
    length, _, width, height, left, top, _, _, _, _, components = struct.unpack_from(">HHIIIIIIIIH", data, pos)
    if not 1 <= components <= 16384 or length != 38 + 3 * components:
        raise HeaderError(f"the JPEG 2000 SIZ is malformed: {components} components in {length} bytes")
    _need(data, pos, length)
    if width <= left or height <= top:
        raise HeaderError(f"the JPEG 2000 SIZ declares an empty image ({width}-{left} × {height}-{top})")
    sizes = [data[pos + 38 + 3 * i] for i in range(components)]
    return Declared("JPEG 2000 SIZ", width - left, height - top, components, max((s & 0x7F) + 1 for s in sizes))


def _jp2(data: bytes) -> Declared:
    """A JP2 file (ISO/IEC 15444-1 Annex I): its boxes walked to the contiguous codestream box; the image header
    box, when there, must declare what the codestream does (decoders read both)."""
    pos, image = len(_JP2_SIGNATURE), None
    for _ in range(MAX_SEGMENTS):
        _need(data, pos, 8)
        length, kind = struct.unpack_from(">I4s", data, pos)
        body = pos + 8
        if length == 1:
            _need(data, pos, 16)
            (length,) = struct.unpack_from(">Q", data, pos + 8)
            body = pos + 16
        if kind == b"jp2c":
            declared = _siz(data, body)
            if image is not None and image != (declared.columns, declared.rows, declared.samples):
                raise HeaderError(f"the JP2 image header box declares {image[0]}×{image[1]} pixels of {image[2]} "
                                  f"samples, its codestream {declared.columns}×{declared.rows} of {declared.samples}")
            return declared
        if length < body - pos:
            raise HeaderError(f"the JP2 box {kind!r} at byte {pos} has length {length}")
        if kind == b"jp2h":  # a superbox: the image header box comes first in it (§I.5.3.1)
            _need(data, body, 22)
            if bytes(data[body + 4 : body + 8]) == b"ihdr":
                height, width, components = struct.unpack_from(">IIH", data, body + 8)
                image = (width, height, components)
        pos += length
    raise HeaderError(f"the JP2 file has more than {MAX_SEGMENTS} boxes before its codestream")


def _jpeg_2000(data: bytes) -> Declared:
    if bytes(data[: len(_JP2_SIGNATURE)]) == _JP2_SIGNATURE:
        return _jp2(data)
    return _siz(data, 0)


_READERS: dict[str, Callable[[bytes], Declared]] = {
    "image/jpeg": _jpeg,
    "image/jls": _jpeg_ls,
    "image/jp2": _jpeg_2000,
    "image/jpx": _jpeg_2000,
    "image/jphc": _jpeg_2000,
}

#: Encapsulated transfer syntaxes whose frames :func:`check` reads a header of.
HEADERS = frozenset(ts for ts, media_type in FRAME_MEDIA_TYPES.items() if media_type in _READERS or media_type == _RLE)


def declared(data: bytes, transfer_syntax: str) -> Declared | None:
    """The image the header of a frame of ``transfer_syntax`` declares; None for a syntax without one here
    (native, RLE). :class:`Truncated` when ``data`` ends inside the header, :class:`HeaderError` when it is
    malformed."""
    reader = _READERS.get(FRAME_MEDIA_TYPES.get(transfer_syntax, ""))
    return reader(data) if reader is not None else None


def rle_segments(data: bytes, length: int, segments: int) -> list[int]:
    """The segment offsets of an RLE frame of ``length`` bytes, from its 64-byte header (PS3.5 §G.5): as many
    segments as the instance has (samples × bytes per sample, PS3.5 §G.2), the first right after the header,
    each after the one before, all inside the frame."""
    _need(data, 0, 64)
    count, *offsets = struct.unpack_from("<16I", data)
    if count != segments or not 1 <= count <= 15:
        raise HeaderError(f"the RLE header declares {count} segments, not the instance's {segments} "
                          "(SamplesPerPixel × BitsAllocated / 8, 1 to 15)")
    offsets = offsets[:count]
    if offsets[0] != 64 or any(b <= a for a, b in itertools.pairwise(offsets)) or offsets[-1] >= length:
        raise HeaderError(f"the RLE segment offsets {offsets} do not lie in order after the 64-byte header and "
                          f"inside the {length}-byte frame")
    return offsets


def check(data: bytes, transfer_syntax: str, fmt: PixelFormat, length: int | None = None) -> None:
    """Refuse a frame whose header does not declare the image ``fmt`` describes: other Columns, Rows or
    SamplesPerPixel, samples wider than BitsAllocated (only Bits Allocated bounds the memory a decoded sample
    takes; Bits Stored below the precision is common, as 16-bit lossless JPEG of 12-bit data), an RLE segment
    table that does not fit, a native frame of another length. ``data`` is the frame, or its first bytes of
    ``length``.

    :class:`HeaderError` names what differs; :class:`Truncated` when ``data`` ends inside the header but the
    frame goes on. A syntax without a header read here passes: it is not decoded either.
    """
    length = len(data) if length is None else length
    if transfer_syntax in NATIVE_SYNTAXES:
        if length != fmt.native_length:
            raise HeaderError(f"a native frame of {fmt.columns}×{fmt.rows}×{fmt.samples} needs {fmt.native_length} "
                              f"bytes, not {length}")
        return
    try:
        if FRAME_MEDIA_TYPES.get(transfer_syntax) == _RLE:
            rle_segments(data, length, fmt.samples * -(-fmt.bits_allocated // 8))
            return
        found = declared(data, transfer_syntax)
    except Truncated:
        if len(data) >= length:
            raise HeaderError("the frame ends inside its codestream header") from None
        raise
    if found is None:
        return
    if (found.columns, found.rows, found.samples) != (fmt.columns, fmt.rows, fmt.samples):
        raise HeaderError(f"its {found.source} declares {found.columns}×{found.rows} pixels of {found.samples} "
                          f"samples, not the instance's {fmt.columns}×{fmt.rows} of {fmt.samples} "
                          "(Columns × Rows, SamplesPerPixel)")
    if found.precision > fmt.bits_allocated:
        raise HeaderError(f"its {found.source} declares {found.precision}-bit samples, wider than the instance's "
                          f"BitsAllocated {fmt.bits_allocated}")
