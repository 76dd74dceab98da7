"""The frame offset record: where every frame of an instance lies in its stored file.

Computed once at ingest from the fragment layout seen while the bytes stream past (or
sent by the uploading client, which walked its own file, and then checked), stored as a
compact binary sidecar, and used to serve any frame with one ranged read. One builder
per pixel-data layout, as wsidicom does: native (PS3.5 §8.1.1), Basic Offset Table,
Extended Offset Table and empty Basic Offset Table (PS3.5 §A.4). Every encapsulated
frame read checks the item headers it lands on (:func:`frame_payload`), so a record
that does not fit its file can never serve wrong bytes.
"""

from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass
from typing import Sequence

from dicomweb.errors import InvalidDataset

ITEM_HEADER = 8
_ITEM_TAG = b"\xfe\xff\x00\xe0"
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0"
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

    def read_span(self, number: int) -> tuple[int, int]:
        """(offset, length) to read for frame ``number``: its span, and the item header before a lone fragment."""
        offset, length = self.span(number)
        if self.fragments[number - 1] == 1:
            return offset - ITEM_HEADER, length + ITEM_HEADER
        return offset, length

    def payload_length(self, number: int) -> int:
        """Bytes of frame ``number`` itself: its fragments' payloads, without their item headers."""
        fragments = self.fragments[number - 1]
        return self.lengths[number - 1] - (ITEM_HEADER * fragments if fragments > 1 else 0)

    def item_start(self, number: int) -> int:
        """File offset of the first item header of encapsulated frame ``number``."""
        return self.read_span(number)[0]

    def with_generation(self, generation: str) -> "FrameIndex":
        return FrameIndex(self.transfer_syntax, generation, self.offsets, self.lengths, self.fragments)

    def to_bytes(self) -> bytes:
        """Encode as the binary sidecar: a header, then three little-endian arrays."""
        ts = self.transfer_syntax.encode()
        gen = self.generation.encode()
        header = _HEADER.pack(_MAGIC, _VERSION, 0, len(self), len(ts), len(gen))
        return header + ts + gen + b"".join(_le(a) for a in (self.offsets, self.lengths, self.fragments))

    @classmethod
    def from_bytes(cls, data: bytes) -> "FrameIndex":
        """Decode a sidecar written by :meth:`to_bytes` (ValueError for anything else)."""
        if len(data) < _HEADER.size:
            raise ValueError("not a frame offset record")
        magic, version, _, count, ts_len, gen_len = _HEADER.unpack_from(data)
        if magic != _MAGIC or version != _VERSION:
            raise ValueError("not a frame offset record")
        if len(data) != _HEADER.size + ts_len + gen_len + count * 16:
            raise ValueError(f"a frame offset record of {count} frames has {len(data)} bytes")
        pos = _HEADER.size
        ts = data[pos : pos + ts_len].decode("ascii")
        pos += ts_len
        gen = data[pos : pos + gen_len].decode("ascii")
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


class RecordMismatch(ValueError):
    """A frame's bytes do not have the item headers its frame offset record promises."""


def _items(data: bytes | memoryview, fragments: int, length: int) -> tuple[list[bytes], int]:
    """Walk the ``fragments`` items at the start of ``data``: their payloads, and where the last one ends.

    A lone fragment may be one byte longer than the frame (the padding of an odd-length
    frame, which an Extended Offset Table's lengths leave out).
    """
    parts = []
    pos = 0
    for _ in range(fragments):
        if len(data) - pos < ITEM_HEADER or bytes(data[pos : pos + 4]) != _ITEM_TAG:
            raise RecordMismatch(f"no item header at byte {pos} of the frame")
        (item_length,) = struct.unpack_from("<I", data, pos + 4)
        pos += ITEM_HEADER
        if fragments == 1:
            if item_length not in (length, length + 1):
                raise RecordMismatch(f"the frame's item holds {item_length} bytes, the record says {length}")
            return [bytes(data[pos : pos + length])], pos + item_length
        parts.append(bytes(data[pos : pos + item_length]))
        pos += item_length
    return parts, pos


def frame_payload(data: bytes | memoryview, fragments: int) -> bytes:
    """The frame in ``data``, read as :meth:`FrameIndex.read_span` says, after checking its item headers.

    Native frames (``fragments`` 0) are the bytes themselves. An encapsulated frame must
    be exactly ``fragments`` items (tag FFFE,E000) whose lengths fill ``data``; their
    payloads are joined. Anything else raises :class:`RecordMismatch`.
    """
    if fragments == 0:
        return bytes(data)
    parts, end = _items(data, fragments, len(data) - ITEM_HEADER)
    if fragments > 1 and end != len(data):
        raise RecordMismatch(f"the frame's items hold {end} bytes, the record says {len(data)}")
    return parts[0] if len(parts) == 1 else b"".join(parts)


@dataclass(frozen=True)
class OffsetTables:
    """What an encapsulated Pixel Data says of its frames' places (PS3.5 §A.4, PS3.3 C.7.6.3.1.8)."""

    #: File offset of the first fragment's item header (offsets in both tables count from it).
    first_fragment: int
    basic: Sequence[int] | None
    extended: tuple[Sequence[int], Sequence[int]] | None


def encapsulated_index(transfer_syntax: str, generation: str, tables: OffsetTables,
                       fragments: Sequence[Fragment], frame_count: int) -> FrameIndex:
    """The record of encapsulated Pixel Data from its walked fragments, by whichever table it has."""
    if tables.extended is not None:
        return eot_index(transfer_syntax, generation, *tables.extended, fragments, frame_count)
    if tables.basic:
        return bot_index(transfer_syntax, generation, tables.basic, fragments, frame_count)
    return empty_bot_index(transfer_syntax, generation, fragments, frame_count)


def check_record(record: FrameIndex, transfer_syntax: str, frame_count: int, tables: OffsetTables,
                 size: int) -> None:
    """Check a frame offset record from elsewhere against the header and the file's size; 43264 if it is wrong.

    Its frames must be as many as NumberOfFrames, encapsulated, in file order without
    overlapping, inside the Pixel Data, and agree with the offset tables the instance has.
    The bytes themselves are checked by reading a sample (:func:`sample`) and at every read.
    """
    if record.transfer_syntax != transfer_syntax:
        raise InvalidDataset(f"the frame offset record is for {record.transfer_syntax}, the file is {transfer_syntax}")
    if len(record) != frame_count:
        raise InvalidDataset(f"the frame offset record has {len(record)} frames, NumberOfFrames is {frame_count}")
    previous_end = tables.first_fragment
    for number in range(1, frame_count + 1):
        fragments = record.fragments[number - 1]
        if fragments < 1 or record.lengths[number - 1] == 0:
            raise InvalidDataset(f"the frame offset record's frame {number} is not an encapsulated frame")
        start, length = record.read_span(number)
        if start < previous_end:
            raise InvalidDataset(f"the frame offset record's frame {number} overlaps what comes before it")
        previous_end = start + length
    if previous_end + ITEM_HEADER > size:
        raise InvalidDataset("the frame offset record's frames run past the end of the file")
    if tables.extended is not None:
        offsets, lengths = tables.extended
        for number in range(1, frame_count + 1):
            expected = (tables.first_fragment + offsets[number - 1] + ITEM_HEADER, lengths[number - 1])
            if record.fragments[number - 1] != 1 or record.span(number) != expected:
                raise InvalidDataset(f"the frame offset record's frame {number} is not where the Extended Offset "
                                     "Table puts it")
    elif tables.basic:
        for number in range(1, frame_count + 1):
            if tables.first_fragment + tables.basic[number - 1] != record.item_start(number):
                raise InvalidDataset(f"the frame offset record's frame {number} is not where the Basic Offset "
                                     "Table puts it")
    elif record.item_start(1) != tables.first_fragment:
        raise InvalidDataset("the frame offset record's first frame is not the first fragment")


def sample(record: FrameIndex, most: int) -> list[int]:
    """Frame numbers whose bytes a commit checks: the first, the last, and evenly spread ones between."""
    count = len(record)
    if count <= most:
        return list(range(1, count + 1))
    step = (count - 1) / (most - 1)
    return sorted({1 + round(i * step) for i in range(most)})


#: Bytes read after a sampled frame: a padding byte and the next item's tag.
SAMPLE_TAIL = 1 + 4


def check_sampled(data: bytes, record: FrameIndex, number: int) -> None:
    """Check sampled frame ``number``, read from its :meth:`~FrameIndex.read_span` with :data:`SAMPLE_TAIL`
    bytes more: its items, and an item or the Sequence Delimitation Item right behind them (so no
    frame ends short of its fragments); 43264 if the record does not fit."""
    length = record.read_span(number)[1]
    fragments = record.fragments[number - 1]
    try:
        _, end = _items(data, fragments, length - ITEM_HEADER if fragments == 1 else length)
        if fragments > 1 and end != length:
            raise RecordMismatch(f"the frame's items hold {end} bytes, the record says {length}")
    except RecordMismatch as exc:
        raise InvalidDataset(f"the frame offset record does not fit the file at frame {number}: {exc}") from None
    expected = _SEQUENCE_DELIMITER if number == len(record) else _ITEM_TAG
    if bytes(data[end : end + 4]) != expected:
        raise InvalidDataset(f"the frame offset record does not fit the file after frame {number}")


def payload_head(data: bytes, fragments: int) -> bytes:
    """The first bytes of an encapsulated frame, from the first bytes of its :meth:`~FrameIndex.read_span`: its
    fragments' payloads joined as far as ``data`` goes (a codestream header may run over a fragment's end)."""
    parts = []
    pos = 0
    for _ in range(fragments):
        if len(data) - pos < ITEM_HEADER or bytes(data[pos : pos + 4]) != _ITEM_TAG:
            break
        (length,) = struct.unpack_from("<I", data, pos + 4)
        parts.append(bytes(data[pos + ITEM_HEADER : pos + ITEM_HEADER + length]))
        pos += ITEM_HEADER + length
    return b"".join(parts)


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
