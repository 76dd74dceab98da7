"""The frame offset record: where every frame of an instance lies in its stored file.

Computed once at ingest from the fragment layout seen while the bytes stream past,
stored as a compact binary sidecar, and used to serve any frame with one ranged read.
One builder per pixel-data layout, as wsidicom does: native (PS3.5 §8.1.1), Basic
Offset Table, Extended Offset Table and empty Basic Offset Table (PS3.5 §A.4).
"""

from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass
from typing import Sequence

from dicomweb.errors import InvalidDataset

ITEM_HEADER = 8
_MAGIC = b"DWFI"
_VERSION = 1
_HEADER = struct.Struct("<4sHHIHH")

# Markers that open a frame's first fragment: JPEG/JPEG-LS SOI, JPEG 2000 SOC+SIZ, JP2 signature box.
_FRAME_STARTS = (b"\xff\xd8", b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP")


@dataclass(frozen=True, slots=True)
class Fragment:
    """One encapsulated fragment: file offset of its item header and its payload length."""

    offset: int
    length: int
    head: bytes  # first bytes of the payload, to spot where a frame starts


@dataclass(frozen=True)
class FrameIndex:
    """Offsets of every frame in the stored file.

    ``fragments[i] == 1``: frame i is the ``lengths[i]`` bytes at ``offsets[i]``.
    ``fragments[i] > 1``: those bytes run from the first fragment's item header to the
    end of the last fragment; :func:`join_fragments` strips the item headers.
    """

    transfer_syntax: str
    generation: str
    offsets: array
    lengths: array
    fragments: array

    def __len__(self) -> int:
        return len(self.offsets)

    def span(self, number: int) -> tuple[int, int]:
        """(offset, length) of 1-based frame ``number`` in the stored file."""
        return self.offsets[number - 1], self.lengths[number - 1]

    def to_bytes(self) -> bytes:
        """Encode as the binary sidecar: a header, then three little-endian arrays."""
        ts = self.transfer_syntax.encode()
        gen = self.generation.encode()
        header = _HEADER.pack(_MAGIC, _VERSION, 0, len(self), len(ts), len(gen))
        return header + ts + gen + b"".join(_le(a) for a in (self.offsets, self.lengths, self.fragments))

    @classmethod
    def from_bytes(cls, data: bytes) -> "FrameIndex":
        """Decode a sidecar written by :meth:`to_bytes`."""
        magic, version, _, count, ts_len, gen_len = _HEADER.unpack_from(data)
        if magic != _MAGIC or version != _VERSION:
            raise ValueError("not a frame offset record")
        pos = _HEADER.size
        ts = data[pos : pos + ts_len].decode()
        pos += ts_len
        gen = data[pos : pos + gen_len].decode()
        pos += gen_len
        arrays = []
        for code in ("Q", "I", "I"):
            a = array(code)
            size = a.itemsize * count
            a.frombytes(data[pos : pos + size])
            if sys.byteorder == "big":
                a.byteswap()
            arrays.append(a)
            pos += size
        return cls(ts, gen, *arrays)


def _le(a: array) -> bytes:
    if sys.byteorder == "big":
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def _index(transfer_syntax: str, generation: str, frames: Sequence[Sequence[Fragment]]) -> FrameIndex:
    offsets, lengths, counts = array("Q"), array("I"), array("I")
    for number, group in enumerate(frames, 1):
        if not any(f.length for f in group):
            raise InvalidDataset(f"frame {number} is empty: its fragments hold no bytes")
        first, last = group[0], group[-1]
        if len(group) == 1:
            offsets.append(first.offset + ITEM_HEADER)
            lengths.append(first.length)
        else:
            offsets.append(first.offset)
            lengths.append(last.offset + ITEM_HEADER + last.length - first.offset)
        counts.append(len(group))
    return FrameIndex(transfer_syntax, generation, offsets, lengths, counts)


def native_index(
    transfer_syntax: str, generation: str, value_offset: int, value_length: int, frame_count: int, frame_bytes: int
) -> FrameIndex:
    """Native pixel data: frames are ``frame_bytes`` apart from the value's first byte."""
    if frame_bytes <= 0 or frame_count * frame_bytes > value_length:
        raise InvalidDataset(
            f"Pixel Data holds {value_length} bytes, fewer than {frame_count} frames of {frame_bytes} bytes"
        )
    offsets = array("Q", (value_offset + i * frame_bytes for i in range(frame_count)))
    return FrameIndex(transfer_syntax, generation, offsets, array("I", [frame_bytes]) * frame_count,
                      array("I", [0]) * frame_count)


def bot_index(
    transfer_syntax: str, generation: str, bot: Sequence[int], fragments: Sequence[Fragment], frame_count: int
) -> FrameIndex:
    """Basic Offset Table: each entry is a frame's first item header, relative to the first fragment."""
    if len(bot) != frame_count:
        raise InvalidDataset(f"Basic Offset Table has {len(bot)} entries for {frame_count} frames")
    if not fragments:
        raise InvalidDataset("Pixel Data has no fragments")
    base = fragments[0].offset
    starts = {f.offset - base: i for i, f in enumerate(fragments)}
    bounds = []
    for entry in bot:
        if entry not in starts:
            raise InvalidDataset(f"Basic Offset Table entry {entry} does not point at a fragment")
        bounds.append(starts[entry])
    bounds.append(len(fragments))
    if any(b >= e for b, e in zip(bounds, bounds[1:])):
        raise InvalidDataset("Basic Offset Table entries are not increasing")
    return _index(transfer_syntax, generation, [fragments[b:e] for b, e in zip(bounds, bounds[1:])])


def eot_index(
    transfer_syntax: str,
    generation: str,
    eot: Sequence[int],
    eot_lengths: Sequence[int],
    fragments: Sequence[Fragment],
    frame_count: int,
) -> FrameIndex:
    """Extended Offset Table (PS3.3 C.7.6.3.1.8): one fragment per frame, 64-bit offsets."""
    if len(eot) != frame_count or len(eot_lengths) != frame_count:
        raise InvalidDataset(f"Extended Offset Table has {len(eot)} entries for {frame_count} frames")
    if not fragments:
        raise InvalidDataset("Pixel Data has no fragments")
    base = fragments[0].offset
    by_offset = {f.offset - base: f for f in fragments}
    frames = []
    for entry, length in zip(eot, eot_lengths):
        fragment = by_offset.get(entry)
        if fragment is None or fragment.length < length:
            raise InvalidDataset(f"Extended Offset Table entry {entry} does not point at a fragment")
        frames.append([Fragment(fragment.offset, length, b"")])
    return _index(transfer_syntax, generation, frames)


def empty_bot_index(
    transfer_syntax: str, generation: str, fragments: Sequence[Fragment], frame_count: int
) -> FrameIndex:
    """Empty Basic Offset Table: one fragment per frame, one frame in all fragments, or split at frame markers."""
    if frame_count == len(fragments):
        return _index(transfer_syntax, generation, [[f] for f in fragments])
    if frame_count == 1 and fragments:
        return _index(transfer_syntax, generation, [list(fragments)])
    groups: list[list[Fragment]] = []
    for fragment in fragments:
        if not groups or fragment.head.startswith(_FRAME_STARTS):
            groups.append([fragment])
        else:
            groups[-1].append(fragment)
    if len(groups) != frame_count:
        raise InvalidDataset(
            f"cannot find {frame_count} frames in {len(fragments)} fragments without an offset table"
        )
    return _index(transfer_syntax, generation, groups)


def join_fragments(span: bytes, fragments: int) -> bytes:
    """Strip the item headers from the bytes of a frame spread over several fragments."""
    if fragments <= 1:
        return span
    parts = []
    pos = 0
    for _ in range(fragments):
        (length,) = struct.unpack_from("<I", span, pos + 4)
        parts.append(span[pos + ITEM_HEADER : pos + ITEM_HEADER + length])
        pos += ITEM_HEADER + length
    return b"".join(parts)
