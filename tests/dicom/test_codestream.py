"""Codestream headers read without decoding: what real encoders write, bombs, truncation, malformed headers."""

from __future__ import annotations

import random
import struct

import imagecodecs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.pixels import get_encoder
from pydicom.uid import HTJ2K, JPEG2000, HTJ2KLossless, JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless

from dicomweb.dicom import codecs, codestream
from dicomweb.dicom.codecs import PixelFormat
from dicomweb.dicom.codestream import Declared, HeaderError, Truncated
from tests.wsi_factory import BOMB_SIDE, bomb_frame, rle_bomb, textured_tile

#: Not square, so that swapped columns and rows show.
ROWS, COLUMNS = 96, 80
RGB = PixelFormat(ROWS, COLUMNS, 3, 8, 8, False, "RGB", 0)
MONO16 = PixelFormat(ROWS, COLUMNS, 1, 16, 12, False, "MONOCHROME2", 0)
COLOUR = textured_tile((COLUMNS, ROWS), 5)
GREY12 = (COLOUR[..., 0].astype(np.uint16) * 16)


def _rle(image: np.ndarray, fmt: PixelFormat) -> bytes:
    return get_encoder(RLELossless).encode(
        image.tobytes(), rows=fmt.rows, columns=fmt.columns, samples_per_pixel=fmt.samples,
        bits_allocated=fmt.bits_allocated, bits_stored=fmt.bits_stored, pixel_representation=0,
        photometric_interpretation=fmt.photometric, planar_configuration=0, number_of_frames=1, byteorder="<",
        encoding_plugin="pydicom")


#: (what, transfer syntax, frame, format, what its header declares): every header kind as real encoders write it.
ENCODED = [
    ("JPEG baseline", JPEGBaseline8Bit, lambda: imagecodecs.jpeg8_encode(COLOUR, level=90), RGB,
     ("JPEG frame header (SOF0)", 8)),
    ("JPEG extended 12-bit", codecs.JPEG_EXTENDED, lambda: imagecodecs.jpeg8_encode(GREY12, bitspersample=12),
     MONO16, ("JPEG frame header (SOF1)", 12)),
    ("JPEG lossless 16-bit", codecs.JPEG_LOSSLESS, lambda: imagecodecs.jpeg8_encode(
        GREY12, lossless=True, bitspersample=16), MONO16, ("JPEG frame header (SOF3)", 16)),
    ("JPEG-LS", JPEGLSLossless, lambda: imagecodecs.jpegls_encode(COLOUR, out=COLOUR.nbytes * 2), RGB,
     ("JPEG-LS frame header (SOF55)", 8)),
    ("JPEG 2000", JPEG2000Lossless, lambda: imagecodecs.jpeg2k_encode(
        COLOUR, level=0, codecformat="j2k", reversible=True), RGB, ("JPEG 2000 SIZ", 8)),
    ("JPEG 2000 12-bit", JPEG2000, lambda: imagecodecs.jpeg2k_encode(
        GREY12, level=40, codecformat="j2k", bitspersample=12), MONO16, ("JPEG 2000 SIZ", 12)),
    ("JP2 file", JPEG2000Lossless, lambda: imagecodecs.jpeg2k_encode(
        COLOUR, level=0, codecformat="jp2", reversible=True), RGB, ("JPEG 2000 SIZ", 8)),
    ("HTJ2K", HTJ2KLossless, lambda: imagecodecs.htj2k_encode(COLOUR, reversible=True), RGB, ("JPEG 2000 SIZ", 8)),
    ("HTJ2K lossy", HTJ2K, lambda: imagecodecs.htj2k_encode(GREY12, level=0.01), MONO16, ("JPEG 2000 SIZ", 16)),
]


def _frame(make) -> bytes:  # noqa: ANN001 - a callable of no argument
    return bytes(make())


@pytest.mark.parametrize(("what", "syntax", "make", "fmt", "expected"), ENCODED, ids=[e[0] for e in ENCODED])
def test_headers_declare_what_the_encoders_wrote(what: str, syntax: str, make, fmt: PixelFormat,  # noqa: ANN001
                                                 expected: tuple[str, int]) -> None:
    frame = _frame(make)
    source, precision = expected
    assert codestream.declared(frame, syntax) == Declared(source, COLUMNS, ROWS, fmt.samples, precision)
    codestream.check(frame, syntax, fmt)
    assert codecs.decode(frame, syntax, fmt).shape == fmt.shape, "what passes the check decodes"


@pytest.mark.parametrize(("what", "syntax", "make", "fmt", "expected"),
                         [e for e in ENCODED if e[0] != "JP2 file"], ids=[e[0] for e in ENCODED if e[0] != "JP2 file"])
def test_a_header_claiming_another_size_is_refused(what: str, syntax: str, make, fmt: PixelFormat,  # noqa: ANN001
                                                   expected: tuple[str, int]) -> None:
    bomb = bomb_frame(_frame(make), syntax)
    assert codestream.declared(bomb, syntax).columns == BOMB_SIDE  # type: ignore[union-attr]
    with pytest.raises(HeaderError, match=f"{BOMB_SIDE}×{BOMB_SIDE} pixels of {fmt.samples} samples, not the "
                                          f"instance's {COLUMNS}×{ROWS} of {fmt.samples}"):
        codestream.check(bomb, syntax, fmt)


def test_swapped_rows_and_columns_and_other_samples_are_refused() -> None:
    frame = _frame(ENCODED[0][2])
    with pytest.raises(HeaderError, match="80×96 pixels of 3 samples, not the instance's 96×80 of 3"):
        codestream.check(frame, JPEGBaseline8Bit, PixelFormat(COLUMNS, ROWS, 3, 8, 8, False, "RGB", 0))
    with pytest.raises(HeaderError, match="of 3 samples, not the instance's 80×96 of 1"):
        codestream.check(frame, JPEGBaseline8Bit, PixelFormat(ROWS, COLUMNS, 1, 8, 8, False, "MONOCHROME2", 0))


def test_samples_wider_than_bits_allocated_are_refused() -> None:
    twelve = _frame(ENCODED[1][2])
    eight = PixelFormat(ROWS, COLUMNS, 1, 8, 8, False, "MONOCHROME2", 0)
    with pytest.raises(HeaderError, match="12-bit samples, wider than the instance's BitsAllocated 8"):
        codestream.check(twelve, codecs.JPEG_EXTENDED, eight)
    j2k = _frame(ENCODED[5][2])
    with pytest.raises(HeaderError, match="12-bit samples, wider than the instance's BitsAllocated 8"):
        codestream.check(j2k, JPEG2000, eight)
    # Bits Stored below the precision is common (16-bit lossless of 12-bit data): only Bits Allocated bounds memory.
    codestream.check(_frame(ENCODED[2][2]), codecs.JPEG_LOSSLESS, MONO16)


def test_a_precision_its_jpeg_process_does_not_have_is_refused() -> None:
    frame = bytearray(_frame(ENCODED[0][2]))
    at = frame.index(b"\xff\xc0")
    frame[at + 4] = 12  # P of a baseline frame header: T.81 Table B.2 allows 8 only
    with pytest.raises(HeaderError, match=r"SOF0\) declares 12-bit samples, which its process does not have \(8\)"):
        codestream.declared(bytes(frame), JPEGBaseline8Bit)


def test_bytes_ending_inside_the_header_are_truncated_unless_the_frame_ends_there() -> None:
    frame = _frame(ENCODED[0][2])
    sof = frame.index(b"\xff\xc0")
    with pytest.raises(Truncated):
        codestream.check(frame[: sof + 6], JPEGBaseline8Bit, RGB, len(frame))
    codestream.check(frame[: sof + 19], JPEGBaseline8Bit, RGB, len(frame))  # the header ends there: enough
    with pytest.raises(HeaderError, match="ends inside its codestream header") as refused:
        codestream.check(frame[: sof + 6], JPEGBaseline8Bit, RGB)
    assert not isinstance(refused.value, Truncated)
    with pytest.raises(Truncated):
        codestream.check(_frame(ENCODED[4][2])[:20], JPEG2000Lossless, RGB, 5000)


def test_fill_bytes_and_markers_without_length_are_walked_as_decoders_do() -> None:
    frame = _frame(ENCODED[0][2])
    padded = frame[:2] + b"\xff\xd0" + b"\xff" * 5 + frame[2:]  # an RST marker, then fill bytes before APP0
    assert codestream.declared(padded, JPEGBaseline8Bit) == codestream.declared(frame, JPEGBaseline8Bit)
    assert np.array_equal(codecs.decode(padded, JPEGBaseline8Bit, RGB), codecs.decode(frame, JPEGBaseline8Bit, RGB))


@pytest.mark.parametrize(("frame", "syntax", "words"), [
    (b"\x00\x00\xff\xc0", JPEGBaseline8Bit, "starts with SOI"),
    (b"\xff\xd8\x00\xe0\x00\x10", JPEGBaseline8Bit, "no marker at byte 2"),
    (b"\xff\xd8\xff\xda\x00\x08" + bytes(64), JPEGBaseline8Bit, "marker FFDA at byte 2 before any frame header"),
    (b"\xff\xd8\xff\xd9" + bytes(8), JPEGBaseline8Bit, "marker FFD9"),
    (b"\xff\xd8\xff\xe0\x00\x01" + bytes(64), JPEGBaseline8Bit, "has length 1"),
    (b"\xff\xd8\xff\xc0\x00\x0b\x08\x00\x10\x00\x10\x03" + bytes(64), JPEGBaseline8Bit, "3 components in 11 bytes"),
    (b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x10\x00\x10\x03" + bytes(64), JPEGLSLossless, "marker FFC0"),
    (b"\xff\xd8" + b"\xff\xfe\x00\x02" * 1025, JPEGBaseline8Bit, "more than 1024 marker segments"),
    (b"\xff\xd8" + (b"\xff\xfe\xff\xff" + bytes(65533)) * 17, JPEGBaseline8Bit, "first 1048576 bytes"),
    (b"\xff\x4f\xff\x52" + bytes(64), JPEG2000Lossless, "starts with SOC and SIZ"),
    (b"\xff\x4f\xff\x51\x00\x29" + bytes(64), JPEG2000Lossless, "0 components in 41 bytes"),
])
def test_malformed_headers_are_refused(frame: bytes, syntax: str, words: str) -> None:
    with pytest.raises(HeaderError, match=words):
        codestream.check(frame, syntax, RGB)


def test_a_jp2_file_must_declare_in_its_image_header_what_its_codestream_does() -> None:
    jp2 = bytearray(_frame(ENCODED[6][2]))
    at = jp2.index(b"ihdr") + 4
    struct.pack_into(">II", jp2, at, BOMB_SIDE, BOMB_SIDE)
    with pytest.raises(HeaderError, match="image header box declares 30000×30000 pixels of 3 samples, its "
                                          "codestream 80×96 of 3"):
        codestream.check(bytes(jp2), JPEG2000Lossless, RGB)


def test_rle_segment_tables_must_fit_the_samples_and_the_frame() -> None:
    colour = _rle(COLOUR, RGB)
    codestream.check(colour, RLELossless, RGB)
    grey = _rle(GREY12, MONO16)
    assert codestream.rle_segments(grey, len(grey), 2)[0] == 64  # 16 bits: a segment per byte of a sample
    codestream.check(grey, RLELossless, MONO16)
    with pytest.raises(HeaderError, match="declares 3 segments, not the instance's 2"):
        codestream.check(colour, RLELossless, MONO16)
    with pytest.raises(HeaderError, match="declares 15 segments, not the instance's 3"):
        codestream.check(rle_bomb(15, 1024), RLELossless, RGB)
    empty = struct.pack("<16I", *[0] * 16)
    with pytest.raises(HeaderError, match="declares 0 segments, not the instance's 0"):
        codestream.check(empty, RLELossless, PixelFormat(ROWS, COLUMNS, 1, 0, 0, False, "MONOCHROME2", 0))

    def patched(index: int, value: int) -> bytes:
        out = bytearray(colour)
        struct.pack_into("<I", out, 4 * index, value)
        return bytes(out)

    for damaged in (patched(1, 60), patched(3, 64), patched(3, len(colour))):
        with pytest.raises(HeaderError, match="do not lie in order"):
            codestream.check(damaged, RLELossless, RGB)
    with pytest.raises(Truncated):
        codestream.check(colour[:40], RLELossless, RGB, len(colour))


def test_native_frames_must_have_the_length_of_the_image() -> None:
    codestream.check(bytes(ROWS * COLUMNS * 3), codecs.EXPLICIT_VR_LITTLE_ENDIAN, RGB)
    codestream.check(bytes(ROWS * COLUMNS * 2), codecs.EXPLICIT_VR_LITTLE_ENDIAN, MONO16)
    ybr422 = PixelFormat(ROWS, COLUMNS, 3, 8, 8, False, "YBR_FULL_422", 0)
    codestream.check(bytes(ROWS * COLUMNS * 2), codecs.IMPLICIT_VR_LITTLE_ENDIAN, ybr422)
    with pytest.raises(HeaderError, match=f"needs {ROWS * COLUMNS * 3} bytes, not {ROWS * COLUMNS * 3 + 2}"):
        codestream.check(bytes(ROWS * COLUMNS * 3 + 2), codecs.EXPLICIT_VR_LITTLE_ENDIAN, RGB)


def test_syntaxes_without_a_header_read_here_pass() -> None:
    assert codestream.declared(b"anything", "1.2.840.10008.1.2.4.100") is None  # MPEG2: never decoded here
    codestream.check(b"anything", "1.2.840.10008.1.2.4.100", RGB)
    assert codestream.HEADERS >= {JPEGBaseline8Bit, JPEGLSLossless, JPEG2000, HTJ2K, RLELossless}
    assert codecs.EXPLICIT_VR_LITTLE_ENDIAN not in codestream.HEADERS


FRAMES = {name: (syntax, _frame(make)) for name, syntax, make, fmt, _ in ENCODED if fmt is RGB} | {
    "RLE": (RLELossless, _rle(COLOUR, RGB))}


@settings(max_examples=1500, deadline=None, database=None)
@given(name=st.sampled_from(sorted(FRAMES)), seed=st.integers(min_value=0, max_value=2**32),
       cut=st.integers(min_value=0, max_value=400), edits=st.integers(min_value=1, max_value=8))
def test_hostile_headers_only_ever_raise_header_errors(name: str, seed: int, cut: int, edits: int) -> None:
    """Bytes flipped, overwritten with edge values, or cut anywhere in the header: a verdict, never a crash."""
    syntax, original = FRAMES[name]
    rng = random.Random(seed)
    frame = bytearray(original[: 600 + cut])
    for _ in range(edits):
        at = rng.randrange(min(len(frame), 400))
        frame[at : at + 2] = rng.choice([b"\xff\xff", b"\x00\x00", b"\xff\xc0", b"\xff\xd9", b"\xff\x51", b"\x00\x01",
                                         bytes([rng.randrange(256), rng.randrange(256)])])
    try:
        codestream.check(bytes(frame), syntax, RGB, len(original))
    except HeaderError:
        pass
