"""Streaming Part 10 parser: reads a DICOM instance as its bytes arrive, in bounded memory.

It buffers only the header (everything before Pixel Data), hands it to pydicom, and
then walks the encapsulated fragments (PS3.5 §A.4) by their 8-byte item headers,
skipping their payloads, so the frame offset record is ready when the last byte is.
What comes out of :meth:`Part10Parser.feed` is the file to store: a sanitised
128-byte preamble (as the Azure DICOM service does), ``DICM``, the File Meta
Information (the client's, or one made from the dataset when it sent none), and the
dataset bytes unchanged.
"""

from __future__ import annotations

import os
import struct
from array import array
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info

from dicomweb.dicom import frames
from dicomweb.dicom.frames import Fragment, FrameIndex
from dicomweb.dicom.syntax import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    is_encapsulated,
)
from dicomweb.errors import InvalidDataset

# pydicom warns about an invalid value by quoting it (a patient's name included) on stderr, which is
# the service's log. What the service needs valid it checks itself (dicomweb.stow.validate), and no
# dataset value may reach a log line, so pydicom's validation on reading stays silent.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

PREAMBLE = b"\x00" * 128 + b"DICM"
PIXEL_DATA = 0x7FE00010
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_VRS = _LONG_VRS | frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())
_HEAD_SNIFF = 8
#: Bytes kept of a fragment's payload for its codestream header (JPEG's frame header after its tables,
#: JPEG 2000's SIZ right after SOC, RLE's 64-byte header): of the first fragment and of the latest one.
FRAME_HEAD = 4096


#: Fragments an encapsulated Pixel Data may hold: this many per frame, and never fewer than the floor
#: (a single large frame may come in many small fragments).
FRAGMENTS_PER_FRAME = 16
FRAGMENT_FLOOR = 65536


@dataclass(frozen=True)
class Limits:
    """What one instance may hold; each bounds the memory and CPU a client can make the parser spend."""

    #: Bytes before Pixel Data (DICOMWEB_MAX_HEADER_MB).
    header_bytes: int = 64 * 1024 * 1024
    #: Data elements before Pixel Data, nested ones included (DICOMWEB_MAX_ELEMENTS).
    elements: int = 2_000_000
    #: Nesting of sequences (DICOMWEB_MAX_SEQUENCE_DEPTH).
    depth: int = 32
    #: NumberOfFrames (DICOMWEB_MAX_FRAMES).
    frames: int = 1_000_000


class _NeedMore(Exception):
    """The buffered bytes end inside an element; wait for the next chunk."""


@dataclass
class _Head:
    """The first bytes of one fragment's payload, collected as they arrive."""

    #: Stored-file offset of the fragment's item header (as :attr:`Fragment.offset`).
    offset: int
    #: Input offset of its payload.
    start: int
    wanted: int
    data: bytearray

    @property
    def done(self) -> bool:
        return len(self.data) == self.wanted


@dataclass(frozen=True)
class Header:
    """What is known once the bytes before Pixel Data have arrived."""

    dataset: Dataset
    transfer_syntax: str
    #: Stored-file offset of the first byte that pydicom's value_tell positions count from.
    dataset_base: int
    #: Pixel Data VR and stored-file offset of its value (None when the instance has no Pixel Data).
    pixel_vr: str | None
    pixel_value_offset: int | None
    pixel_value_length: int | None


def _element(buf: bytearray, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, VR, value length, header length) of the element at ``pos``."""
    if len(buf) - pos < 8:
        raise _NeedMore
    group, elem = struct.unpack_from("<HH", buf, pos)
    tag = group << 16 | elem
    if group == 0xFFFE or implicit:
        return tag, None, struct.unpack_from("<I", buf, pos + 4)[0], 8
    vr = bytes(buf[pos + 4 : pos + 6])
    if vr in _LONG_VRS:
        if len(buf) - pos < 12:
            raise _NeedMore
        return tag, vr, struct.unpack_from("<I", buf, pos + 8)[0], 12
    if vr not in _VRS:
        raise InvalidDataset(f"unknown VR {vr!r} in element ({group:04X},{elem:04X})")
    return tag, vr, struct.unpack_from("<H", buf, pos + 6)[0], 8


class _Walker:
    """Skips whole elements in the buffered header, counting elements and sequence depth.

    pydicom parses nested sequences recursively, so depth is checked here, before it
    ever sees them; defined-length sequences are walked too (explicit SQ, or implicit
    tags the data dictionary knows as SQ).
    """

    def __init__(self, buf: bytearray, limits: Limits, counted: int) -> None:
        self.buf = buf
        self.limits = limits
        self.count = counted

    def element(self, pos: int, implicit: bool, depth: int = 0) -> int:
        """Position just after the element at ``pos``."""
        buf = self.buf
        tag, vr, length, header = _element(buf, pos, implicit)
        self.count += 1
        if self.count > self.limits.elements:
            raise InvalidDataset(f"the header holds more than {self.limits.elements} data elements "
                                 "(DICOMWEB_MAX_ELEMENTS)")
        if tag >> 16 == 0xFFFE:
            raise InvalidDataset(f"unexpected item tag {tag:08X} in dataset")
        if length == UNDEFINED:
            if vr is not None and vr not in (b"SQ", b"UN"):  # encapsulated, as an icon's Pixel Data
                return self.fragments(pos + header)
            return self.sequence(pos + header, None, implicit or vr == b"UN", depth + 1)
        end = pos + header + length
        if end > len(buf):
            raise _NeedMore
        if vr == b"SQ":
            self.sequence(pos + header, end, implicit, depth + 1)
        elif vr in (None, b"UN") and _is_sequence(tag):  # pydicom reads these as (implicit) sequences
            self.sequence(pos + header, end, True, depth + 1)
        return end

    def fragments(self, pos: int) -> int:
        """Skip the items of an encapsulated value starting at ``pos``, to its Sequence Delimitation Item."""
        buf = self.buf
        while True:
            tag, _, length, _ = _element(buf, pos, True)
            if tag == SEQUENCE_DELIMITER:
                return pos + 8
            if tag != ITEM or length == UNDEFINED:
                raise InvalidDataset(f"expected a fragment item, found tag {tag:08X}")
            pos += 8 + length
            if pos > len(buf):
                raise _NeedMore

    def sequence(self, pos: int, end: int | None, implicit: bool, depth: int) -> int:
        """Walk the items of a sequence value starting at ``pos`` (ending at ``end`` if defined)."""
        if depth > self.limits.depth:
            raise InvalidDataset(f"sequences nest deeper than {self.limits.depth} levels "
                                 "(DICOMWEB_MAX_SEQUENCE_DEPTH)")
        buf = self.buf
        while end is None or pos < end:
            tag, _, length, _ = _element(buf, pos, True)
            if tag == SEQUENCE_DELIMITER and end is None:
                return pos + 8
            if tag != ITEM:
                raise InvalidDataset(f"expected a sequence item, found tag {tag:08X}")
            pos += 8
            item_end = None if length == UNDEFINED else pos + length
            if item_end is not None and (item_end > len(buf) or (end is not None and item_end > end)):
                if item_end > len(buf) and (end is None or item_end <= end):
                    raise _NeedMore
                raise InvalidDataset("a sequence item runs past the end of its sequence")
            while item_end is None or pos < item_end:
                if item_end is not None and item_end - pos < 8:
                    raise InvalidDataset("a sequence item's elements do not fill its length")
                if len(buf) - pos < 8:
                    raise _NeedMore
                if item_end is None and struct.unpack_from("<I", buf, pos)[0] == 0xE00DFFFE:
                    pos += 8
                    break
                pos = self.element(pos, implicit, depth)
            if item_end is not None and pos != item_end:
                raise InvalidDataset("a sequence item's elements do not fill its length")
        if pos != end:
            raise InvalidDataset("a sequence's items do not fill its length")
        return pos


def _is_sequence(tag: int) -> bool:
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


def number_of_frames(dataset: Dataset, most: int) -> int:
    """NumberOfFrames (PS3.3 C.7.6.6), 1 when absent; 43264 unless it is an integer from 1 to ``most``."""
    if "NumberOfFrames" not in dataset or dataset["NumberOfFrames"].value in (None, ""):
        return 1
    try:
        count = int(dataset.NumberOfFrames)
    except (ValueError, TypeError) as exc:
        raise InvalidDataset(f"NumberOfFrames {dataset['NumberOfFrames'].value!r} is not an integer") from exc
    if not 1 <= count <= most:
        raise InvalidDataset(f"NumberOfFrames {count} is not from 1 to {most} (DICOMWEB_MAX_FRAMES)")
    return count


def _read_meta(buf: bytearray, pos: int) -> tuple[int, str]:
    """End of the File Meta Information group (always explicit VR LE) and its transfer syntax."""
    syntax = ""
    while len(buf) - pos >= 2 and struct.unpack_from("<H", buf, pos)[0] == 0x0002:
        tag, _, length, header = _element(buf, pos, False)
        end = pos + header + length
        if end > len(buf):
            raise _NeedMore
        if tag == 0x00020010:
            syntax = bytes(buf[pos + header : end]).decode("ascii", "replace").rstrip("\x00 ")
        pos = end
    if len(buf) - pos < 2:
        raise _NeedMore
    return pos, syntax


class Part10Parser:
    """Feed chunks in; get the stored file's bytes out and, at the end, its frame index."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._head = bytearray()
        self._next_attempt = 256
        self._scan_pos = -1
        self._scanned_elements = 0
        self._last_tag = -1
        self.frame_count = 1
        self._fragment_budget = FRAGMENT_FLOOR
        self._input = 0
        self._shift = 0
        self.header: Header | None = None
        self._frames_total: int | None = None
        # Encapsulated pixel data walk.
        self._win = bytearray()
        self._win_start = 0
        self._item_pos = -1
        self._bot: bytes | None = None
        self._fragments: list[Fragment] = []
        self._pixel_end: int | None = None
        self._first_head: _Head | None = None
        self._last_head: _Head | None = None

    @property
    def stored_size(self) -> int:
        """Bytes of the stored file emitted so far."""
        return self._input + self._shift

    @property
    def position(self) -> int:
        """Input bytes taken so far (fed or skipped)."""
        return self._input

    @property
    def shift(self) -> int:
        """How far the stored file's offsets lie from the input's: 0 for a Part 10 file with its preamble,
        whose bytes are stored as they came but for the preamble."""
        return self._shift

    @property
    def frame_heads(self) -> dict[int, bytes]:
        """The first :data:`FRAME_HEAD` bytes of the first and of the last fragment walked, by the stored-file
        offset of their item header: where the first and the last frame's codestream headers usually are."""
        return {head.offset: bytes(head.data) for head in (self._first_head, self._last_head)
                if head is not None and head.done}

    @property
    def table_read(self) -> bool:
        """Whether the header and, for encapsulated Pixel Data, the Basic Offset Table have been read."""
        return self.header is not None and (self._item_pos < 0 or self._bot is not None or self._pixel_end is not None)

    def wanted(self) -> int | None:
        """While walking encapsulated fragments: input offset of the next item header it needs.

        A reader with random access (a local file, ranged reads) may :meth:`skip_to` it and
        feed only item headers, instead of every payload byte. None when no walk is going on.
        """
        if self.header is None or self._item_pos < 0 or self._pixel_end is not None:
            return None
        return self._item_pos

    def skip_to(self, offset: int) -> None:
        """Take input bytes up to ``offset`` as read without feeding them (never past an item header the walk needs)."""
        if offset < self._input:
            raise ValueError(f"cannot skip back from {self._input} to {offset}")
        if self.header is None:
            raise ValueError("the header must be fed, not skipped")
        walking = self._item_pos >= 0 and self._pixel_end is None
        if walking and offset > self._item_pos:
            raise ValueError(f"cannot skip past the item header at {self._item_pos}")
        self._input = offset
        if walking:
            self._win, self._win_start = bytearray(), offset
            if self._last_head is not None and not self._last_head.done:  # its bytes were skipped
                self._last_head = None

    def feed(self, chunk: bytes) -> bytes:
        """Take the next chunk of the request; return the bytes to append to the stored file."""
        self._input += len(chunk)
        if self.header is None:
            self._head += chunk
            if len(self._head) < self._next_attempt:
                return b""
            self._next_attempt = len(self._head) * 2
            out = self._try_header(final=False)
            if self.header is None and len(self._head) > self._limits.header_bytes:
                raise InvalidDataset(f"the dataset header exceeds {self._limits.header_bytes} bytes before "
                                     "Pixel Data (DICOMWEB_MAX_HEADER_MB)")
            return out
        if self._item_pos >= 0 and self._pixel_end is None:
            self._walk(chunk)
        return chunk

    def close(self) -> bytes:
        """The request ended: return the last bytes to store; raise if the instance is incomplete."""
        out = b""
        if self._input == 0:
            raise InvalidDataset("empty: no bytes of a DICOM instance arrived")
        if self.header is None:
            out = self._try_header(final=True)
        header = self.header
        assert header is not None
        if header.pixel_value_offset is not None:
            if header.pixel_value_length is not None:
                end = header.pixel_value_offset + header.pixel_value_length
                if self.stored_size < end:
                    raise InvalidDataset(f"truncated: Pixel Data needs {end} bytes, got {self.stored_size}")
            elif self._pixel_end is None:
                raise InvalidDataset("truncated: encapsulated Pixel Data has no Sequence Delimitation Item")
        return out

    def _try_header(self, final: bool) -> bytes:
        buf = self._head
        try:
            if len(buf) < 132 and not final:
                raise _NeedMore
            meta_start = 132 if buf[128:132] == b"DICM" else 0
            has_meta = buf[meta_start : meta_start + 2] == b"\x02\x00"
            if has_meta:
                dataset_start, syntax = _read_meta(buf, meta_start)
                if not syntax:
                    raise InvalidDataset("File Meta Information has no Transfer Syntax UID")
            else:
                dataset_start = meta_start
                explicit = bytes(buf[dataset_start + 4 : dataset_start + 6]) in _VRS
                syntax = EXPLICIT_VR_LITTLE_ENDIAN if explicit else IMPLICIT_VR_LITTLE_ENDIAN
            if syntax in (DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN):
                raise InvalidDataset(f"transfer syntax {syntax} is not supported for storage")
            implicit = syntax == IMPLICIT_VR_LITTLE_ENDIAN
            pos = max(self._scan_pos, dataset_start)
            while pos < len(buf):
                if len(buf) - pos < 4:
                    raise _NeedMore
                group, elem = struct.unpack_from("<HH", buf, pos)
                tag = group << 16 | elem
                if tag <= self._last_tag:
                    raise InvalidDataset(f"data element ({group:04X},{elem:04X}) is out of ascending tag order "
                                         "(PS3.5 §7.1)")
                if tag == PIXEL_DATA:
                    break
                walker = _Walker(buf, self._limits, self._scanned_elements)
                pos = walker.element(pos, implicit)
                self._scan_pos, self._scanned_elements, self._last_tag = pos, walker.count, tag
            if pos >= len(buf) and not final:
                raise _NeedMore
            pixel = _element(buf, pos, implicit) if pos < len(buf) else None
        except _NeedMore:
            if not final:
                return b""
            raise InvalidDataset("truncated: the body ends inside the dataset header") from None
        return self._start(meta_start if has_meta else dataset_start, dataset_start, syntax, pos, pixel)

    def _start(
        self,
        parse_start: int,
        dataset_start: int,
        syntax: str,
        pixel_pos: int,
        pixel: tuple[int, bytes | None, int, int] | None,
    ) -> bytes:
        buf = self._head
        try:
            dataset = pydicom.dcmread(BytesIO(bytes(buf[parse_start:pixel_pos])), force=True)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds (RecursionError too) for bad input
            raise InvalidDataset(f"not a DICOM dataset: {exc}") from exc
        if pixel is not None:
            self.frame_count = number_of_frames(dataset, self._limits.frames)
            self._fragment_budget = max(FRAGMENT_FLOOR, FRAGMENTS_PER_FRAME * self.frame_count)
        if parse_start == dataset_start:
            meta = _make_meta(dataset, syntax)
        else:
            meta = bytes(buf[parse_start:dataset_start])
        prefix = PREAMBLE + meta
        self._shift = len(prefix) - dataset_start
        base = len(PREAMBLE) if parse_start != dataset_start else len(prefix)
        pixel_vr = value_offset = value_length = None
        if pixel is not None:
            _, vr, length, header_len = pixel
            value_offset = pixel_pos + header_len + self._shift
            pixel_vr = vr.decode() if vr else "OW"
            if length == UNDEFINED:
                if not is_encapsulated(syntax):
                    raise InvalidDataset("undefined-length Pixel Data in a native transfer syntax")
                pixel_vr = "OB"
                self._item_pos = pixel_pos + header_len
                self._win_start = self._item_pos
            else:
                if is_encapsulated(syntax):
                    raise InvalidDataset(f"Pixel Data of {syntax} must be encapsulated")
                value_length = length
        self.header = Header(dataset, syntax, base, pixel_vr, value_offset, value_length)
        rest = bytes(buf[dataset_start:])
        self._head = bytearray()
        if self._item_pos >= 0:
            self._walk(rest[self._item_pos - dataset_start :])
        return prefix + rest

    def _walk(self, data: bytes) -> None:
        """Advance over fragment item headers in ``data``, the input bytes that follow the last walked.

        Fragment payloads are skipped without being copied: only the bytes of an item
        header (or the Basic Offset Table) that runs past the end of ``data`` are kept
        for the next call, in ``_win``, which starts at input offset ``_win_start``.
        """
        carry, carry_start = self._win, self._win_start
        data_start = carry_start + len(carry)
        end = data_start + len(data)

        def peek(pos: int, size: int) -> bytes | None:
            if pos + size > end:
                return None
            if pos >= data_start:
                return data[pos - data_start : pos - data_start + size]
            head = bytes(carry[pos - carry_start :])
            return (head + data[: size - len(head)])[:size]

        def collect(head: _Head) -> None:
            """Add to ``head`` what it still wants of the bytes at hand."""
            pos = head.start + len(head.data)
            stop = min(head.start + head.wanted, end)
            if stop > pos:
                if pos < data_start:
                    head.data += carry[pos - carry_start : min(stop, data_start) - carry_start]
                    pos = data_start
                head.data += data[pos - data_start : stop - data_start]

        if self._last_head is not None and not self._last_head.done:
            collect(self._last_head)
        while self._pixel_end is None:
            header = peek(self._item_pos, 8)
            if header is None:
                break
            group, elem, length = struct.unpack("<HHI", header)
            tag = group << 16 | elem
            if tag == SEQUENCE_DELIMITER:
                self._pixel_end = self._item_pos + 8
                break
            if tag != ITEM:
                raise InvalidDataset(f"unexpected tag {tag:08X} in encapsulated Pixel Data")
            if self._bot is None:
                if length not in (0, 4 * self.frame_count):
                    raise InvalidDataset(f"a Basic Offset Table of {length} bytes for {self.frame_count} frames: "
                                         "it holds 4 bytes per frame, or none (PS3.5 §A.4)")
                table = peek(self._item_pos + 8, length)
                if table is None:
                    break
                self._bot = table
            else:
                head = peek(self._item_pos + 8, min(_HEAD_SNIFF, length))
                if head is None:
                    break
                if len(self._fragments) >= self._fragment_budget:
                    raise InvalidDataset(f"Pixel Data holds more than {self._fragment_budget} fragments for "
                                         f"{self.frame_count} frames")
                self._fragments.append(Fragment(self._item_pos + self._shift, length, head))
                self._last_head = _Head(self._item_pos + self._shift, self._item_pos + 8, min(length, FRAME_HEAD),
                                        bytearray())
                self._first_head = self._first_head or self._last_head
                collect(self._last_head)
            self._item_pos += 8 + length
        keep = max(self._item_pos, carry_start)
        if keep >= end:
            self._win, self._win_start = bytearray(), end
        elif keep >= data_start:
            self._win, self._win_start = bytearray(data[keep - data_start :]), keep
        else:  # extend in place: a long offset table arriving in small chunks is copied once, not per chunk
            del carry[: keep - carry_start]
            carry += data
            self._win_start = keep

    def native_index(self, generation: str) -> FrameIndex | None:
        """The frame offset record of native Pixel Data, which the header alone gives (None otherwise)."""
        header = self.header
        if header is None or header.pixel_value_offset is None or header.pixel_value_length is None:
            return None
        return frames.native_index(header.transfer_syntax, generation, header.pixel_value_offset,
                                   header.pixel_value_length, self.frame_count, _frame_bytes(header.dataset))

    def frame_index(self, generation: str) -> FrameIndex | None:
        """The frame offset record of a complete instance (None without Pixel Data)."""
        header = self.header
        if header is None or header.pixel_value_offset is None:
            return None
        if header.pixel_value_length is not None:
            return self.native_index(generation)
        return frames.encapsulated_index(header.transfer_syntax, generation, self.offset_tables(), self._fragments,
                                         self.frame_count)

    def offset_tables(self) -> frames.OffsetTables:
        """What the instance says about its frames' places: the Basic and Extended Offset Tables (PS3.5 §A.4).

        Known once :attr:`table_read` is; an encapsulated frame offset record from elsewhere
        (the uploading client) is checked against them.
        """
        assert self.header is not None and self.header.pixel_value_offset is not None
        ds = self.header.dataset
        eot, lengths = ds.get("ExtendedOffsetTable"), ds.get("ExtendedOffsetTableLengths")
        first = self.header.pixel_value_offset + frames.ITEM_HEADER + len(self._bot or b"")
        return frames.OffsetTables(
            first, _array("I", self._bot) if self._bot else None,
            (_array("Q", eot), _array("Q", lengths)) if eot is not None and lengths is not None else None)


def _array(code: str, data: bytes) -> array:
    values = array(code)
    values.frombytes(data[: len(data) // values.itemsize * values.itemsize])
    return values


def _frame_bytes(ds: Dataset) -> int:
    """Bytes of one native frame (PS3.5 §8.1.1); YBR_FULL_422 stores two samples per pixel."""
    try:
        samples = int(ds.SamplesPerPixel)
        if ds.get("PhotometricInterpretation") == "YBR_FULL_422":
            samples = 2
        return int(ds.Rows) * int(ds.Columns) * samples * int(ds.BitsAllocated) // 8
    except (AttributeError, TypeError, ValueError) as exc:
        raise InvalidDataset(f"native Pixel Data without a usable image pixel description: {exc}") from exc


def _make_meta(dataset: Dataset, syntax: str) -> bytes:
    """File Meta Information for a dataset that came without one (PS3.10 §7.1)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.get("SOPClassUID", "")
    meta.MediaStorageSOPInstanceUID = dataset.get("SOPInstanceUID", "")
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = False
    try:
        write_file_meta_info(out, meta, enforce_standard=True)
    except (ValueError, AttributeError) as exc:
        raise InvalidDataset(f"cannot make File Meta Information: {exc}") from exc
    return out.getvalue()


#: The header is read in pieces of this size; after it, only fragment item headers (and a few payload bytes).
_HEAD_READ = 1024 * 1024
_ITEM_READ = 16


def frames_start(descriptor: int, size: int) -> int | None:
    """Where the frames begin in a Part 10 file still being written, of which ``size`` bytes are on disk.

    The bytes before it (the header, and the offset tables that a writer such as wsidicom
    reserves first and fills in once the last frame is written) may still change; those
    after it are written once, in order (PS3.5 A.4: the first item after the Basic Offset
    Table; for native Pixel Data, its value). None while the bytes on disk do not reach
    that far, or for a file the service's parser does not read as one with a preamble.
    """
    parser = Part10Parser(Limits())
    try:
        while parser.header is None and parser.position < size:
            parser.feed(os.pread(descriptor, min(_HEAD_READ, size - parser.position), parser.position))
    except Exception:  # noqa: BLE001 - a partial header the parser refuses: not (yet) known
        return None
    header = parser.header
    if header is None or parser.shift != 0 or header.pixel_value_offset is None:
        return None
    if header.pixel_value_length is not None:
        return header.pixel_value_offset
    table = header.pixel_value_offset  # the Basic Offset Table's item: its length is written with its header
    item = os.pread(descriptor, 8, table) if table + 8 <= size else b""
    if len(item) < 8:
        return None
    group, element, length = struct.unpack("<HHI", item)
    start = table + 8 + length
    return start if group << 16 | element == ITEM and start <= size else None


def frame_record(path: Path) -> bytes | None:
    """The file's frame offset record as a commit sends it, or None when the service does better without one.

    The service's own parser reads the header, then jumps from one fragment item header to
    the next (a few bytes per frame, not the whole file). Native Pixel Data needs no
    record (the header gives it), and a file that is not a Part 10 file with a preamble,
    or that the parser refuses, goes without: the service then scans it, or refuses it
    with the reason.
    """
    parser = Part10Parser(Limits())
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            descriptor = handle.fileno()
            while not parser.table_read and parser.position < size:
                parser.feed(os.pread(descriptor, _HEAD_READ, parser.position))
            header = parser.header
            if header is None or parser.shift != 0 or header.pixel_value_length is not None \
                    or header.pixel_value_offset is None:
                return None
            while (wanted := parser.wanted()) is not None and parser.position < size:
                at = max(wanted, parser.position)
                parser.skip_to(at)
                parser.feed(os.pread(descriptor, _ITEM_READ, at))
            parser.skip_to(size)
            parser.close()
            record = parser.frame_index("")
    except Exception:  # noqa: BLE001 - whatever the parser refuses, the service refuses with its reason
        return None
    return record.to_bytes() if record is not None else None
