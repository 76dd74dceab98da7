"""Frame offset records: encoding, and the per-layout builders' checks."""

from __future__ import annotations

import pytest

from dicomweb.dicom import frames
from dicomweb.dicom.frames import Fragment, FrameIndex
from dicomweb.errors import InvalidDataset

JPEG = "1.2.840.10008.1.2.4.50"


def _fragments(*lengths: int, heads: tuple[bytes, ...] = ()) -> list[Fragment]:
    out, pos = [], 1000
    for i, length in enumerate(lengths):
        out.append(Fragment(pos, length, heads[i] if i < len(heads) else b"\x00\x01"))
        pos += 8 + length
    return out


def test_round_trip_through_bytes() -> None:
    index = frames.bot_index(JPEG, "gen-1", [0, 18, 36], _fragments(10, 10, 10, 4), 3)
    again = FrameIndex.from_bytes(index.to_bytes())
    assert again == index
    assert again.span(1) == (1008, 10)
    assert again.span(3) == (1036, 30) and again.fragments[2] == 2


def test_native_frames_are_evenly_spaced() -> None:
    index = frames.native_index("1.2.840.10008.1.2.1", "g", 500, 3000, 3, 1000)
    assert [index.span(i) for i in (1, 2, 3)] == [(500, 1000), (1500, 1000), (2500, 1000)]
    with pytest.raises(InvalidDataset):
        frames.native_index("1.2.840.10008.1.2.1", "g", 500, 2999, 3, 1000)


def test_empty_bot_splits_at_frame_markers() -> None:
    soi = b"\xff\xd8\xff\xe0"
    index = frames.empty_bot_index(JPEG, "g", _fragments(10, 10, 10, heads=(soi, b"ab", soi)), 2)
    assert list(index.fragments) == [2, 1]
    with pytest.raises(InvalidDataset, match="cannot find"):
        frames.empty_bot_index(JPEG, "g", _fragments(10, 10, 10, heads=(soi, b"ab", b"cd")), 2)


def test_eot_must_point_at_fragments() -> None:
    index = frames.eot_index(JPEG, "g", [0, 18], [10, 9], _fragments(10, 10), 2)
    assert index.span(2) == (1026, 9)
    with pytest.raises(InvalidDataset):
        frames.eot_index(JPEG, "g", [0, 17], [10, 10], _fragments(10, 10), 2)


def test_join_fragments_strips_item_headers() -> None:
    span = b"\xfe\xff\x00\xe0\x02\x00\x00\x00ab" + b"\xfe\xff\x00\xe0\x03\x00\x00\x00cde"
    assert frames.join_fragments(span, 2) == b"abcde"


def test_a_frame_head_is_read_from_the_start_of_its_span() -> None:
    index = frames.bot_index(JPEG, "g", [0, 18], _fragments(10, 4, 6), 2)
    assert index.payload_length(1) == 10 and index.payload_length(2) == 10  # two fragments: 4 + 6 bytes
    item = b"\xfe\xff\x00\xe0"
    span = item + b"\x04\x00\x00\x00abcd" + item + b"\x06\x00\x00\x00efghij"
    assert frames.payload_head(span, 2) == b"abcdefghij"
    assert frames.payload_head(span[:23], 2) == b"abcdefg", "as far as the bytes read go"
    assert frames.payload_head(span[:10], 2) == b"ab"
    assert frames.payload_head(b"\x00" * 20, 1) == b"", "no item header: nothing"
