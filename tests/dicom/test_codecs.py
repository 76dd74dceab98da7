"""Frame codecs: pixel formats from DICOM JSON, native layouts, round trips, refusals and bombs."""

from __future__ import annotations

import time
from pathlib import Path

import imagecodecs
import numpy as np
import pytest

from dicomweb.dicom import codecs
from dicomweb.dicom.codecs import CodecError, FrameRefused, PixelFormat
from tests.wsi_factory import TILE, bomb_frame, rle_bomb, textured_tile

RGB = PixelFormat(64, 48, 3, 8, 8, False, "RGB", 0)
MONO16 = PixelFormat(64, 48, 1, 16, 12, False, "MONOCHROME2", 0)


def test_pixel_format_from_json() -> None:
    dataset = {"00280010": {"vr": "US", "Value": [64]}, "00280011": {"vr": "US", "Value": [48]},
               "00280002": {"vr": "US", "Value": [3]}, "00280100": {"vr": "US", "Value": [8]},
               "00280004": {"vr": "CS", "Value": ["YBR_FULL_422"]}}
    fmt = PixelFormat.from_json(dataset)
    assert fmt == PixelFormat(64, 48, 3, 8, 8, False, "YBR_FULL_422", 0)
    assert fmt.decoded().photometric == "RGB"
    with pytest.raises(CodecError):
        PixelFormat.from_json({"00280010": {"vr": "US", "Value": [64]}})
    with pytest.raises(CodecError, match=r"\(0028,0010\) is not a number"):  # a mutated VR: text where US was
        PixelFormat.from_json({**dataset, "00280010": {"vr": "LO", "Value": ["sixty-four"]}})


def test_planar_and_ybr_native_frames_decode_to_interleaved_rgb() -> None:
    image = textured_tile((48, 64), 3)
    planar = PixelFormat(64, 48, 3, 8, 8, False, "RGB", 1)
    assert np.array_equal(codecs.decode(image.transpose(2, 0, 1).tobytes(), codecs.EXPLICIT_VR_LITTLE_ENDIAN, planar),
                          image)
    grey = np.full((64, 48, 3), (200, 128, 128), np.uint8)  # YCbCr of a neutral grey
    ybr = PixelFormat(64, 48, 3, 8, 8, False, "YBR_FULL", 0)
    assert np.array_equal(codecs.decode(grey.tobytes(), codecs.EXPLICIT_VR_LITTLE_ENDIAN, ybr),
                          np.full((64, 48, 3), 200, np.uint8))


@pytest.mark.parametrize(("syntax", "fmt"), [
    (syntax, fmt) for syntax in sorted(codecs.ENCODABLE - codecs.LOSSY) for fmt in (RGB, MONO16)
    if codecs.encodable(syntax, fmt)])
def test_lossless_round_trips(syntax: str, fmt: PixelFormat) -> None:
    rng = np.random.default_rng(7)
    image = (rng.random(fmt.shape) * (2**fmt.bits_stored - 1)).astype(fmt.dtype)
    assert np.array_equal(codecs.decode(codecs.encode(image, syntax, fmt), syntax, fmt), image)


def test_eight_bit_only_syntaxes_refuse_sixteen_bits() -> None:
    assert not codecs.encodable(codecs.JPEG_BASELINE, MONO16)
    with pytest.raises(CodecError):
        codecs.encode(np.zeros(MONO16.shape, np.uint16), codecs.JPEG_BASELINE, MONO16)


def test_garbage_and_wrong_sizes_are_codec_errors() -> None:
    with pytest.raises(FrameRefused, match="no marker at byte 2"):
        codecs.decode(b"\xff\xd8 not a jpeg", codecs.JPEG_BASELINE, RGB)
    jpeg = codecs.encode(np.zeros(RGB.shape, np.uint8), codecs.JPEG_BASELINE, RGB)
    no_scan = jpeg[: jpeg.index(b"\xff\xda")] + b"\xff\xd9"  # a sound header, then the end of the image
    with pytest.raises(CodecError, match="does not decode") as failed:
        codecs.decode(no_scan, codecs.JPEG_BASELINE, RGB)
    assert not isinstance(failed.value, FrameRefused), "the decoder's own failure: another syntax may do"
    with pytest.raises(FrameRefused, match="needs"):
        codecs.decode(b"\x00" * 10, codecs.EXPLICIT_VR_LITTLE_ENDIAN, RGB)
    other = codecs.encode(np.zeros((32, 32, 3), np.uint8), codecs.JPEG_2000_LOSSLESS, RGB)
    with pytest.raises(FrameRefused, match="not the instance's"):
        codecs.decode(other, codecs.JPEG_2000_LOSSLESS, RGB)
    with pytest.raises(CodecError, match="not decoded here"):
        codecs.decode(b"", "1.2.3", RGB)


def _peak_growth_mb(job) -> float:  # noqa: ANN001 - a callable of no argument
    """How far this process's resident set rose above where it was while ``job`` ran (VmHWM reset first)."""
    def status(field: str) -> int:
        return next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith(field))

    Path("/proc/self/clear_refs").write_text("5")
    before = status("VmRSS:")
    job()
    return (status("VmHWM:") - before) / 1024


BOMB = PixelFormat(TILE, TILE, 3, 8, 8, False, "RGB", 0)


@pytest.mark.parametrize("syntax", [codecs.JPEG_BASELINE, codecs.JPEG_2000, codecs.HTJ2K_LOSSLESS,
                                    codecs.JPEG_LS_LOSSLESS, codecs.RLE_LOSSLESS])
def test_a_bomb_is_refused_before_any_decoder_allocates(syntax: str) -> None:
    """Each codec's frame whose header claims 30000×30000 (2.6 GB for JPEG, 7 GB for JPEG 2000 when decoded)."""
    image = textured_tile((TILE, TILE), 1)
    bomb = bomb_frame(codecs.encode(image, syntax, BOMB) if syntax != codecs.JPEG_BASELINE else
                      bytes(imagecodecs.jpeg8_encode(image, level=90)), syntax)

    def decode() -> None:
        with pytest.raises(FrameRefused, match="30000×30000 pixels|15 segments"):
            codecs.decode(bomb, syntax, BOMB)

    started = time.perf_counter()
    assert _peak_growth_mb(decode) < 20
    assert time.perf_counter() - started < 0.1


def test_rle_runs_expanding_beyond_the_image_fail_without_allocating_them() -> None:
    """Three segments, as an 8-bit RGB frame has, whose runs would decode to 3 × 64 MiB: the header is
    sound, so they reach the decoder, which fills a buffer of the instance's size and stops there."""
    bomb = rle_bomb(3, 1024 * 1024)

    def decode() -> None:
        with pytest.raises(CodecError, match="does not decode"):
            codecs.decode(bomb, codecs.RLE_LOSSLESS, BOMB)

    assert _peak_growth_mb(decode) < 20
