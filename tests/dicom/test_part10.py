"""The streaming Part 10 parser against files pydicom writes, fed in awkward chunk sizes."""

from __future__ import annotations

import base64
import io
import random
import struct
import time

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from dicomweb.dicom.dicomjson import dataset_to_json
from dicomweb.dicom.frames import join_fragments
from dicomweb.dicom.part10 import FRAME_HEAD, Limits, Part10Parser, frames_start
from dicomweb.errors import InvalidDataset
from tests.wsi_factory import make_slide

FRAMES = 6


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


def _dataset(layout: str, syntax: str = JPEGBaseline8Bit, undefined_sequences: bool = False) -> tuple[Dataset, list[bytes]]:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.6"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "P1"
    ds.Rows = ds.Columns = 32
    ds.SamplesPerPixel = 3
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PlanarConfiguration = 0
    ds.NumberOfFrames = FRAMES
    path = Dataset()
    path.OpticalPathIdentifier = "1"
    path.ICCProfile = bytes(range(256)) * 3
    inner = Dataset()
    inner.CodeValue = "A"
    path.IlluminationColorCodeSequence = Sequence([inner])
    ds.OpticalPathSequence = Sequence([path])
    if undefined_sequences:
        ds.OpticalPathSequence.is_undefined_length = True
        path.is_undefined_length_sequence_item = True
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta = meta
    if layout == "native":
        ds.PhotometricInterpretation = "RGB"
        pixels = np.random.default_rng(3).integers(0, 255, (FRAMES, 32, 32, 3), dtype=np.uint8)
        ds.PixelData = pixels.tobytes()
        return ds, [pixels[i].tobytes() for i in range(FRAMES)]
    ds.PhotometricInterpretation = "YBR_FULL_422"
    frames = [_jpeg(i) for i in range(FRAMES)]
    if layout == "eot":
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(frames)
    else:
        bot = layout in ("bot", "bot-multi")
        per_frame = 3 if layout.endswith("multi") else 1
        ds.PixelData = encapsulate(frames, fragments_per_frame=per_frame, has_bot=bot)
    ds["PixelData"].VR = "OB"
    return ds, frames


def _encode(ds: Dataset, part10: bool) -> bytes:
    out = io.BytesIO()
    if part10:
        ds.save_as(out, enforce_file_format=True)
    else:
        pydicom.dcmwrite(out, ds, implicit_vr=ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian,
                         little_endian=True)
    return out.getvalue()


def _parse(data: bytes, seed: int = 1) -> tuple[Part10Parser, bytes]:
    parser = Part10Parser(Limits(header_bytes=1 << 20))
    stored = bytearray()
    sizes = random.Random(seed)
    pos = 0
    while pos < len(data):
        step = sizes.choice([1, 7, 131, 4096, 9000])
        stored += parser.feed(data[pos : pos + step])
        pos += step
    stored += parser.close()
    return parser, bytes(stored)


@pytest.mark.parametrize("layout", ["bot", "eot", "empty", "bot-multi", "empty-multi", "native"])
@pytest.mark.parametrize("part10", [True, False], ids=["part10", "bare-dataset"])
def test_frames_match_pydicom(layout: str, part10: bool) -> None:
    syntax = ExplicitVRLittleEndian if layout == "native" else JPEGBaseline8Bit
    ds, frames = _dataset(layout, syntax)
    parser, stored = _parse(_encode(ds, part10))
    index = parser.frame_index("g1")
    assert index is not None and len(index) == FRAMES
    served = [join_fragments(stored[o : o + n], index.fragments[i]) for i, (o, n) in
              enumerate(index.span(k) for k in range(1, FRAMES + 1))]
    again = pydicom.dcmread(io.BytesIO(stored))
    if layout == "native":
        assert served == frames
    else:
        offsets = (again.ExtendedOffsetTable, again.ExtendedOffsetTableLengths) if layout == "eot" else None
        assert served == list(generate_frames(again.PixelData, number_of_frames=FRAMES, extended_offsets=offsets))
        assert [f.rstrip(b"\x00") for f in served] == [f.rstrip(b"\x00") for f in frames]
    assert stored[128:132] == b"DICM" and stored[:128] == b"\x00" * 128
    assert again.SOPInstanceUID == ds.SOPInstanceUID
    assert again.file_meta.TransferSyntaxUID == syntax


@pytest.mark.parametrize(("offset_table", "fragments"), [("bot", 1), ("eot", 1), ("empty", 1), ("bot", 3)])
@pytest.mark.parametrize("seed", [1, 2])
def test_the_walk_keeps_the_heads_of_the_first_and_the_last_fragment(tmp_path, offset_table: str,  # noqa: ANN001
                                                                     fragments: int, seed: int) -> None:
    """What the first and the last frame's codestream headers are checked with at ingest, kept whatever
    the chunks the bytes arrive in: the first bytes of the first and of the last fragment's payload."""
    (file,) = make_slide(tmp_path, levels=1, base_size=(768, 512), associated=False, offset_table=offset_table,
                         fragments_per_frame=fragments, with_icc_profile=False)
    parser, stored = _parse(file.path.read_bytes(), seed)
    index = parser.frame_index("g")
    assert index is not None

    def payload(item: int) -> bytes:
        (length,) = struct.unpack_from("<I", stored, item + 4)
        return stored[item + 8 : item + 8 + min(length, FRAME_HEAD)]

    heads = parser.frame_heads
    first, last = index.item_start(1), index.item_start(len(index))
    assert len(heads) == 2 and heads[first] == payload(first) and len(heads[first]) == FRAME_HEAD
    if fragments == 1:
        assert heads[last] == payload(last)
    else:
        assert last not in heads, "the last frame starts three fragments before the last one"


def test_a_walk_that_skips_payloads_keeps_no_partial_head(tmp_path) -> None:  # noqa: ANN001
    (file,) = make_slide(tmp_path, levels=1, base_size=(2048, 512), associated=False, with_icc_profile=False)
    data = file.path.read_bytes()
    parser = Part10Parser(Limits())
    while not parser.table_read:
        parser.feed(data[parser.position : parser.position + 65536])
    while (wanted := parser.wanted()) is not None:  # as ``dicomweb upload`` walks a local file
        parser.skip_to(max(wanted, parser.position))
        parser.feed(data[parser.position : parser.position + 16])
    index = parser.frame_index("g")
    assert index is not None
    for item, head in parser.frame_heads.items():  # the first fragment came whole with the header's read
        assert head == data[item + 8 : item + 8 + FRAME_HEAD]
    assert index.item_start(len(index)) not in parser.frame_heads, "its payload was skipped"


@pytest.mark.parametrize(("syntax", "offset_table"), [(JPEGBaseline8Bit, "bot"), (JPEGBaseline8Bit, "eot"),
                                                     (JPEGBaseline8Bit, "empty"), (ExplicitVRLittleEndian, "native")])
def test_frames_start_where_a_writer_stops_going_back(tmp_path, syntax: str, offset_table: str) -> None:  # noqa: ANN001
    """What a file still being written may still change ends where its first frame starts (after the Basic
    Offset Table, even one still all zeros; native: where the value starts), and it is not known before."""
    (file,) = make_slide(tmp_path, levels=1, base_size=(768, 512), associated=False, transfer_syntax=syntax,
                         offset_table=offset_table)
    data = bytearray(file.path.read_bytes())
    parser = Part10Parser(Limits())
    parser.feed(bytes(data))
    header = parser.header
    assert header is not None and header.pixel_value_offset is not None
    if offset_table == "native":
        expected = header.pixel_value_offset
    else:
        index = parser.frame_index("g")
        assert index is not None
        expected = index.item_start(1)
        table = struct.unpack_from("<I", data, header.pixel_value_offset + 4)[0]
        data[header.pixel_value_offset + 8 : header.pixel_value_offset + 8 + table] = bytes(table)  # not filled in yet
        assert (table > 0) == (offset_table == "bot")
    path = tmp_path / "growing.dcm"
    path.write_bytes(data)
    with path.open("rb") as handle:
        seen = {size: frames_start(handle.fileno(), size) for size in (0, 132, expected - 1, expected, len(data))}
    assert seen == {0: None, 132: None, expected - 1: None, expected: expected, len(data): expected}
    (tmp_path / "not.dcm").write_bytes(b"\0" * 4096)
    with (tmp_path / "not.dcm").open("rb") as handle:
        assert frames_start(handle.fileno(), 4096) is None


@pytest.mark.parametrize("undefined", [False, True], ids=["defined-length", "undefined-length"])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian], ids=["explicit", "implicit"])
def test_bulk_ranges_point_at_values(undefined: bool, syntax: str) -> None:
    ds, _ = _dataset("native", syntax, undefined_sequences=undefined)
    parser, stored = _parse(_encode(ds, True))
    assert parser.header is not None
    dataset, bulk = dataset_to_json(parser.header.dataset, parser.header.dataset_base)
    offset, length = bulk["00480105.0.00282000"]
    assert stored[offset : offset + length] == bytes(range(256)) * 3
    path = dataset["00480105"]["Value"][0]
    assert path["00282000"] == {"vr": "OB", "BulkDataURI": "bulkdata/00480105.0.00282000"}
    assert path["00480108"]["Value"][0]["00080100"]["Value"] == ["A"]
    parser, _ = _parse(_encode(ds, True))  # conversion caches pydicom's values: parse afresh for each
    assert parser.header is not None
    inline, same = dataset_to_json(parser.header.dataset, parser.header.dataset_base, inline_bytes=768)
    assert inline["00480105"]["Value"][0]["00282000"] == {
        "vr": "OB", "InlineBinary": base64.b64encode(bytes(range(256)) * 3).decode()}
    assert same == bulk, "an inline value is still served as bulk data"
    parser, _ = _parse(_encode(ds, True))
    assert parser.header is not None
    below, _ = dataset_to_json(parser.header.dataset, parser.header.dataset_base, inline_bytes=767)
    assert "BulkDataURI" in below["00480105"]["Value"][0]["00282000"]


def test_preamble_is_sanitised() -> None:
    ds, _ = _dataset("bot")
    data = bytearray(_encode(ds, True))
    data[:128] = b"MZ" + b"\x90" * 126
    _, stored = _parse(bytes(data))
    assert stored[:128] == b"\x00" * 128 and stored[128:] == bytes(data[128:])


def test_truncated_pixel_data_is_rejected() -> None:
    ds, _ = _dataset("bot")
    data = _encode(ds, True)
    with pytest.raises(InvalidDataset, match="truncated"):
        _parse(data[:-100])


def test_truncated_native_pixel_data_is_rejected() -> None:
    ds, _ = _dataset("native", ExplicitVRLittleEndian)
    with pytest.raises(InvalidDataset, match="truncated"):
        _parse(_encode(ds, True)[:-10])


def test_not_dicom_is_rejected() -> None:
    with pytest.raises(InvalidDataset):
        _parse(b"this is not a DICOM file at all, just some text that goes on " * 20)


def test_header_larger_than_the_limit_is_rejected() -> None:
    ds, _ = _dataset("bot")
    ds.add_new(0x00091010, "LO", "x")
    ds.ImageComments = "x" * 9000
    parser = Part10Parser(Limits(header_bytes=4096))
    with pytest.raises(InvalidDataset, match="exceeds"):
        for start in range(0, 20000, 1000):
            parser.feed(_encode(ds, True)[start : start + 1000])


def test_bot_pointing_between_fragments_is_rejected() -> None:
    ds, _ = _dataset("bot")
    data = bytearray(_encode(ds, True))
    bot_at = data.find(b"\xfe\xff\x00\xe0", data.find(b"\xe0\x7f\x10\x00")) + 8
    data[bot_at + 4 : bot_at + 8] = (3).to_bytes(4, "little")
    parser, _ = _parse(bytes(data))
    with pytest.raises(InvalidDataset, match="does not point at a fragment"):
        parser.frame_index("g")


def _raw_value(ds: Dataset, keyword_tag: int, vr: str, text: str) -> bytes:
    """``ds`` encoded with a value pydicom would refuse to write: written as LO, then relabelled."""
    ds.add_new(keyword_tag, "LO", text)
    key = struct.pack("<HH", keyword_tag >> 16, keyword_tag & 0xFFFF)
    data = _encode(ds, True)
    assert data.count(key + b"LO") == 1
    return data.replace(key + b"LO", key + vr.encode())


def _pixel_item(data: bytes) -> int:
    """Offset of the first item (the Basic Offset Table) of the encapsulated Pixel Data."""
    return data.find(b"\xfe\xff\x00\xe0", data.find(b"\xe0\x7f\x10\x00"))


def _timed_refusal(data: bytes, match: str, limits: Limits | None = None) -> None:
    started = time.perf_counter()
    parser = Part10Parser(limits or Limits())
    with pytest.raises(InvalidDataset, match=match):
        for pos in range(0, len(data), 65536):
            parser.feed(data[pos : pos + 65536])
        parser.close()
        parser.frame_index("g")
    assert time.perf_counter() - started < 2


@pytest.mark.parametrize("value, match", [("abc", "not an integer"), ("0", "not from 1"), ("2000001", "not from 1")])
def test_number_of_frames_must_be_a_positive_bounded_integer(value: str, match: str) -> None:
    ds, _ = _dataset("bot")
    del ds.NumberOfFrames
    _timed_refusal(_raw_value(ds, 0x00280008, "IS", value), match)


def test_malformed_values_are_invalid_datasets() -> None:
    ds, _ = _dataset("bot")
    parser, _ = _parse(_raw_value(ds, 0x00280030, "DS", "1.2.3\\x"))
    assert parser.header is not None
    with pytest.raises(InvalidDataset, match="PixelSpacing"):
        dataset_to_json(parser.header.dataset, parser.header.dataset_base)


@pytest.mark.parametrize("vr", ["FD", "FL", "DS"])
def test_non_finite_numbers_are_invalid_datasets(vr: str) -> None:
    """NaN and infinities are valid DICOM but no JSON number: the index and the metadata could not carry them."""
    ds, _ = _dataset("bot")
    if vr == "DS":
        data = _raw_value(ds, 0x00181050, "DS", "NaN")  # SpatialResolution
    else:
        ds.add_new(0x00189087 if vr == "FD" else 0x00109431, vr,  # DiffusionBValue, ExaminedBodyThickness
                   float("inf") if vr == "FL" else float("nan"))
        data = _encode(ds, True)
    parser, _ = _parse(data)
    assert parser.header is not None
    with pytest.raises(InvalidDataset, match="NaN or an infinite number"):
        dataset_to_json(parser.header.dataset, parser.header.dataset_base)


def test_a_binary_number_of_the_wrong_length_is_an_invalid_dataset() -> None:
    """An FD of 4 bytes (the fuzz test found one): pydicom's BytesLengthException was a 503 with a traceback."""
    ds, _ = _dataset("bot")
    ds.add_new(0x00189087, "FD", 1.5)  # DiffusionBValue
    data = _encode(ds, True)
    key = struct.pack("<HH", 0x0018, 0x9087) + b"FD" + struct.pack("<H", 8)
    assert data.count(key) == 1
    data = data.replace(key + struct.pack("<d", 1.5), struct.pack("<HH", 0x0018, 0x9087) + b"FD"
                        + struct.pack("<H", 4) + b"\x00" * 4)
    parser, _ = _parse(data)
    assert parser.header is not None
    with pytest.raises(InvalidDataset, match="has an invalid value"):
        dataset_to_json(parser.header.dataset, parser.header.dataset_base)


def test_a_huge_basic_offset_table_is_refused_at_its_item_header() -> None:
    """A BOT item declaring 0xFFFFFFF0 bytes held 96 MB and 47.7 s of CPU; now its header is enough."""
    ds, _ = _dataset("bot")
    data = bytearray(_encode(ds, True))
    at = _pixel_item(data)
    data[at + 4 : at + 8] = struct.pack("<I", 0xFFFFFFF0)
    _timed_refusal(bytes(data[: at + 8]) + bytes(96 * 1024 * 1024), "4 bytes per frame")


def test_fragments_are_bounded_by_the_frame_count() -> None:
    ds, _ = _dataset("empty")
    data = _encode(ds, True)
    at = _pixel_item(data) + 8  # after the empty BOT
    flood = (struct.pack("<HHI", 0xFFFE, 0xE000, 2) + b"\xff\xd8") * 1_000_000  # 10 MB of 2-byte fragments
    _timed_refusal(data[:at] + flood, "more than 65536 fragments")


def test_empty_frames_are_refused() -> None:
    ds, _ = _dataset("empty")
    data = _encode(ds, True)
    at = _pixel_item(data) + 8
    empty = struct.pack("<HHI", 0xFFFE, 0xE000, 0) * FRAMES + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    _timed_refusal(data[:at] + empty, "frame 1 is empty")


def _nested(depth: int) -> bytes:
    """A bare dataset whose ConceptCodeSequence nests ``depth`` levels (undefined lengths)."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.3", "1.2.4"
    head = _encode_bare(ds)
    open_level = struct.pack("<HH2sHI", 0x0040, 0xA168, b"SQ", 0, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000,
                                                                                             0xFFFFFFFF)
    close_level = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return head + open_level * depth + close_level * depth


def _encode_bare(ds: Dataset) -> bytes:
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, implicit_vr=False, little_endian=True)
    return out.getvalue()


def test_deep_nesting_is_refused_before_pydicom_recurses() -> None:
    """600 levels raised RecursionError inside pydicom (272 with a traceback)."""
    _timed_refusal(_nested(600), "nest deeper than 32 levels")
    parser, _ = _parse(_nested(30))
    assert parser.header is not None


def test_defined_length_sequences_count_towards_depth() -> None:
    ds, _ = _dataset("bot")
    level = ds
    for _ in range(8):
        inner = Dataset()
        inner.CodeValue = "x"
        level.ConceptCodeSequence = Sequence([inner])
        level = inner
    data = _encode(ds, True)
    _timed_refusal(data, "nest deeper than 5 levels", Limits(depth=5))
    assert _parse(data)[0].header is not None


def test_element_count_is_bounded() -> None:
    ds, _ = _dataset("bot")
    _timed_refusal(_encode(ds, True), "more than 10 data elements", Limits(elements=10))


def test_elements_out_of_order_are_refused() -> None:
    """60 MB of zero bytes walked 7.5 million (0000,0000) elements; the second one is refused now."""
    _timed_refusal(bytes(60 * 1024 * 1024), "ascending tag order")


def test_an_icon_with_encapsulated_pixel_data_is_skipped_not_walked() -> None:
    """The depth walk must not read an icon's JPEG fragments as data elements."""
    ds, frames = _dataset("bot")
    icon = Dataset()
    icon.Rows = icon.Columns = 32
    icon.SamplesPerPixel, icon.PhotometricInterpretation, icon.BitsAllocated = 3, "YBR_FULL_422", 8
    icon.PixelData = encapsulate([_jpeg(99)])
    icon["PixelData"].VR = "OB"
    icon["PixelData"].is_undefined_length = True
    ds.IconImageSequence = Sequence([icon])
    parser, stored = _parse(_encode(ds, True))
    index = parser.frame_index("g1")
    assert index is not None and len(index) == FRAMES
    offset, length = index.span(1)
    assert stored[offset : offset + length].rstrip(b"\x00") == frames[0].rstrip(b"\x00")
    assert parser.header is not None and "IconImageSequence" in parser.header.dataset
