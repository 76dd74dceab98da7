"""Frame codecs: pixel formats from DICOM JSON, native layouts, round trips and refusals."""

from __future__ import annotations

import numpy as np
import pytest

from dicomweb.dicom import codecs
from dicomweb.dicom.codecs import CodecError, PixelFormat
from tests.wsi_factory import textured_tile

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
    with pytest.raises(CodecError, match="does not decode"):
        codecs.decode(b"\xff\xd8 not a jpeg", codecs.JPEG_BASELINE, RGB)
    with pytest.raises(CodecError, match="needs"):
        codecs.decode(b"\x00" * 10, codecs.EXPLICIT_VR_LITTLE_ENDIAN, RGB)
    other = codecs.encode(np.zeros((32, 32, 3), np.uint8), codecs.JPEG_2000_LOSSLESS, RGB)
    with pytest.raises(CodecError, match="not the instance's"):
        codecs.decode(other, codecs.JPEG_2000_LOSSLESS, RGB)
    with pytest.raises(CodecError, match="not decoded here"):
        codecs.decode(b"", "1.2.3", RGB)
