"""Decoding and encoding of single frames, for transcoding and rendering (PS3.5 §8 and §A.4).

Frames are decoded to arrays of (rows, columns[, samples]) with imagecodecs (libjpeg-turbo,
OpenJPEG, OpenJPH, CharLS) and pydicom (RLE); colour comes out as RGB whatever the stored
photometric interpretation (YBR_FULL_422 JPEG, YBR_ICT/RCT JPEG 2000, native YBR_FULL), so an
encoder always starts from RGB or monochrome samples. CPU-heavy: run with :func:`dicomweb.cpu.run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import imagecodecs
import numpy as np
from pydicom.pixels import get_encoder

from dicomweb.dicom import codestream
from dicomweb.dicom.syntax import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, JPEG_BASELINE

JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

#: Syntaxes whose encoding loses information (PS3.5 §8.2): produced only when a client asks for one.
LOSSY = frozenset({JPEG_BASELINE, JPEG_EXTENDED, JPEG_LS_NEAR_LOSSLESS, JPEG_2000, HTJ2K})
#: Lossy Image Compression Method (0028,2114) of each lossy syntax written here (PS3.3 §C.7.6.1.1.5.1).
LOSSY_METHODS = {JPEG_BASELINE: "ISO_10918_1", JPEG_LS_NEAR_LOSSLESS: "ISO_14495_1", JPEG_2000: "ISO_15444_1",
                 HTJ2K: "ISO_15444_15"}
#: Quality of lossy output: JPEG quality (1-100), JPEG 2000 PSNR (dB), JPEG-LS NEAR, HTJ2K quantisation step.
JPEG_QUALITY = 90
JPEG_2000_PSNR = 48
JPEG_LS_NEAR = 2
HTJ2K_STEP = 0.004


class CodecError(ValueError):
    """A frame cannot be decoded, or the pixels cannot be encoded in the asked syntax."""


class FrameRefused(CodecError):
    """A frame is not decoded because its codestream header is malformed or declares another image than the
    instance's Image Pixel attributes (:mod:`dicomweb.dicom.codestream`): the stored data contradict
    themselves, whatever the representation asked for."""


@dataclass(frozen=True)
class PixelFormat:
    """The Image Pixel module attributes (PS3.3 §C.7.6.3) a codec needs."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str
    planar: int

    @classmethod
    def from_json(cls, dataset: dict[str, Any]) -> "PixelFormat":
        """From a DICOM JSON dataset (CodecError when an attribute is missing or not a number)."""
        def value(tag: str, default: object = None) -> Any:
            values = dataset.get(tag, {}).get("Value")
            if values:
                return values[0]
            if default is None:
                raise CodecError(f"the instance has no ({tag[:4]},{tag[4:]}) to decode its pixels with")
            return default

        def number(tag: str, default: object = None) -> int:
            try:
                return int(value(tag, default))
            except (TypeError, ValueError):
                raise CodecError(f"the instance's ({tag[:4]},{tag[4:]}) is not a number") from None

        bits_allocated = number("00280100")
        return cls(number("00280010"), number("00280011"), number("00280002", 1), bits_allocated,
                   number("00280101", bits_allocated), bool(value("00280103", 0)),
                   str(value("00280004", "MONOCHROME2")).strip(), number("00280006", 0))

    @property
    def dtype(self) -> np.dtype:
        if self.bits_allocated not in (8, 16, 32):
            raise CodecError(f"{self.bits_allocated}-bit pixels are not decoded")
        return np.dtype(f"<{'i' if self.signed else 'u'}{self.bits_allocated // 8}")

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.rows, self.columns) if self.samples == 1 else (self.rows, self.columns, self.samples)

    @property
    def native_length(self) -> int:
        """Bytes of one frame stored natively (PS3.5 §8.1.1); YBR_FULL_422 stores two samples per pixel."""
        samples = 2 if self.photometric == "YBR_FULL_422" else self.samples
        return self.rows * self.columns * samples * self.dtype.itemsize

    def decoded(self) -> "PixelFormat":
        """The format of decoded (and natively re-encoded) frames: interleaved, RGB for colour."""
        photometric = "RGB" if self.samples == 3 else self.photometric
        return PixelFormat(self.rows, self.columns, self.samples, self.bits_allocated, self.bits_stored,
                           self.signed, photometric, 0)


def _ybr_to_rgb(image: np.ndarray) -> np.ndarray:
    """YBR_FULL (PS3.3 §C.7.6.3.1.2) to RGB, for native frames stored in YCbCr."""
    ycc = image.astype(np.float32)
    y, cb, cr = ycc[..., 0], ycc[..., 1] - 128, ycc[..., 2] - 128
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _native(data: bytes, fmt: PixelFormat) -> np.ndarray:
    flat = np.frombuffer(data, fmt.dtype, fmt.rows * fmt.columns * fmt.samples)
    if fmt.samples == 1:
        return flat.reshape(fmt.rows, fmt.columns)
    if fmt.planar:
        image = flat.reshape(fmt.samples, fmt.rows, fmt.columns).transpose(1, 2, 0)
    else:
        image = flat.reshape(fmt.rows, fmt.columns, fmt.samples)
    if fmt.photometric == "YBR_FULL":
        return _ybr_to_rgb(image)
    if fmt.photometric not in ("RGB", "YBR_RCT", "YBR_ICT"):
        raise CodecError(f"native {fmt.photometric} frames are not decoded")
    return image


def _jpeg(data: bytes, fmt: PixelFormat) -> np.ndarray:
    if fmt.samples == 3 and fmt.photometric == "RGB":
        # Stored without a colour transform (PS3.5 §8.2.1): decoding must not assume YCbCr.
        return imagecodecs.jpeg8_decode(data, colorspace="RGB", outcolorspace="RGB")
    try:
        return imagecodecs.jpeg8_decode(data)
    except imagecodecs.Jpeg8Error:
        return imagecodecs.ljpeg_decode(data)  # lossless (process 14) beyond what libjpeg-turbo takes


def _rle(data: bytes, fmt: PixelFormat) -> np.ndarray:
    dtype = np.dtype(f">{'i' if fmt.signed else 'u'}{fmt.bits_allocated // 8}")
    # Decoded into a buffer of the size the instance declares: PackBits repeats a byte up to 128 times
    # (PS3.5 §G.3.1), so runs could expand far beyond it; there they fail instead of allocating more.
    out = np.zeros(fmt.rows * fmt.columns * fmt.samples * dtype.itemsize, np.uint8)
    imagecodecs.dicomrle_decode(data, dtype.str, out=out)
    planes = out.view(dtype).reshape(fmt.samples, fmt.rows, fmt.columns)
    image = planes.transpose(1, 2, 0) if fmt.samples > 1 else planes[0]
    image = image.astype(fmt.dtype)
    return _ybr_to_rgb(image) if fmt.photometric == "YBR_FULL" else image


_DECODERS: dict[str, Callable[[bytes, PixelFormat], np.ndarray]] = {
    EXPLICIT_VR_LITTLE_ENDIAN: _native,
    IMPLICIT_VR_LITTLE_ENDIAN: _native,
    JPEG_BASELINE: _jpeg,
    JPEG_EXTENDED: _jpeg,
    JPEG_LOSSLESS: _jpeg,
    JPEG_LOSSLESS_SV1: _jpeg,
    JPEG_LS_LOSSLESS: lambda data, fmt: imagecodecs.jpegls_decode(data),
    JPEG_LS_NEAR_LOSSLESS: lambda data, fmt: imagecodecs.jpegls_decode(data),
    JPEG_2000_LOSSLESS: lambda data, fmt: imagecodecs.jpeg2k_decode(data),
    JPEG_2000: lambda data, fmt: imagecodecs.jpeg2k_decode(data),
    "1.2.840.10008.1.2.4.92": lambda data, fmt: imagecodecs.jpeg2k_decode(data),
    "1.2.840.10008.1.2.4.93": lambda data, fmt: imagecodecs.jpeg2k_decode(data),
    # OpenJPEG 2.5 decodes High-Throughput JPEG 2000 codestreams too.
    HTJ2K_LOSSLESS: lambda data, fmt: imagecodecs.jpeg2k_decode(data),
    HTJ2K_LOSSLESS_RPCL: lambda data, fmt: imagecodecs.jpeg2k_decode(data),
    HTJ2K: lambda data, fmt: imagecodecs.jpeg2k_decode(data),
    RLE_LOSSLESS: _rle,
}

DECODABLE = frozenset(_DECODERS)


def decode(data: bytes, transfer_syntax: str, fmt: PixelFormat) -> np.ndarray:
    """One frame as an array of ``fmt.decoded().shape`` (RGB for colour).

    Its codestream header is checked against ``fmt`` first (:class:`FrameRefused`): decoders allocate what
    the header declares, so a frame claiming more pixels than the instance never reaches one.
    """
    decoder = _DECODERS.get(transfer_syntax)
    if decoder is None:
        raise CodecError(f"frames of transfer syntax {transfer_syntax} are not decoded here")
    try:
        codestream.check(data, transfer_syntax, fmt)
    except codestream.HeaderError as exc:
        raise FrameRefused(str(exc)) from None
    try:
        image = decoder(data, fmt)
    except CodecError:
        raise
    except Exception as exc:  # noqa: BLE001 - each codec has its own error types
        raise CodecError(f"frame does not decode as {transfer_syntax}: {exc}") from exc
    if image.shape[:2] != (fmt.rows, fmt.columns):
        raise CodecError(f"frame decodes to {image.shape[1]}×{image.shape[0]}, not the instance's "
                         f"{fmt.columns}×{fmt.rows}")
    if fmt.samples == 1 and image.ndim == 3:
        image = image[..., 0]
    return np.ascontiguousarray(image.astype(fmt.dtype, copy=False))


def _rle_encode(image: np.ndarray, fmt: PixelFormat) -> bytes:
    return get_encoder(RLE_LOSSLESS).encode(
        image.tobytes(), rows=fmt.rows, columns=fmt.columns, samples_per_pixel=fmt.samples,
        bits_allocated=fmt.bits_allocated, bits_stored=fmt.bits_stored, pixel_representation=int(fmt.signed),
        photometric_interpretation=fmt.decoded().photometric, planar_configuration=0, number_of_frames=1,
        byteorder="<", encoding_plugin="pydicom")


def _jpegls(image: np.ndarray, fmt: PixelFormat, near: int) -> bytes:
    # CharLS writes into a buffer sized up front: noise can come out larger than its input.
    return imagecodecs.jpegls_encode(image, level=near, out=image.nbytes * 2 + 4096)


def _eight_bit(encoder: Callable[[np.ndarray, PixelFormat], bytes]) -> Callable[[np.ndarray, PixelFormat], bytes]:
    def encode(image: np.ndarray, fmt: PixelFormat) -> bytes:
        if fmt.bits_allocated != 8 or fmt.signed:
            raise CodecError("this syntax is encoded here for unsigned 8-bit pixels only")
        return encoder(image, fmt)
    return encode


_ENCODERS: dict[str, Callable[[np.ndarray, PixelFormat], bytes]] = {
    EXPLICIT_VR_LITTLE_ENDIAN: lambda image, fmt: image.astype(fmt.dtype, copy=False).tobytes(),
    JPEG_BASELINE: _eight_bit(lambda image, fmt: imagecodecs.jpeg8_encode(image, level=JPEG_QUALITY,
                                                                           subsampling="422")),
    JPEG_LOSSLESS_SV1: _eight_bit(lambda image, fmt: imagecodecs.jpeg8_encode(image, lossless=True, predictor=1)),
    JPEG_LS_LOSSLESS: lambda image, fmt: _jpegls(image, fmt, 0),
    JPEG_LS_NEAR_LOSSLESS: lambda image, fmt: _jpegls(image, fmt, JPEG_LS_NEAR),
    JPEG_2000_LOSSLESS: lambda image, fmt: imagecodecs.jpeg2k_encode(
        image, level=0, codecformat="j2k", reversible=True, mct=False),
    JPEG_2000: lambda image, fmt: imagecodecs.jpeg2k_encode(
        image, level=JPEG_2000_PSNR, codecformat="j2k", reversible=False, mct=False),
    HTJ2K_LOSSLESS: lambda image, fmt: imagecodecs.htj2k_encode(image, reversible=True),
    HTJ2K: lambda image, fmt: imagecodecs.htj2k_encode(image, level=HTJ2K_STEP, reversible=False),
    RLE_LOSSLESS: _rle_encode,
}

ENCODABLE = frozenset(_ENCODERS)


def encodable(transfer_syntax: str, fmt: PixelFormat) -> bool:
    """Whether frames of ``fmt`` can be encoded in ``transfer_syntax`` here."""
    if transfer_syntax not in _ENCODERS:
        return False
    if transfer_syntax in (JPEG_BASELINE, JPEG_LOSSLESS_SV1):
        return fmt.bits_allocated == 8 and not fmt.signed
    return fmt.bits_allocated in (8, 16)


def encode(image: np.ndarray, transfer_syntax: str, fmt: PixelFormat) -> bytes:
    """One decoded frame (as :func:`decode` returns it) in ``transfer_syntax``."""
    encoder = _ENCODERS.get(transfer_syntax)
    if encoder is None:
        raise CodecError(f"frames are not encoded as {transfer_syntax} here")
    try:
        return bytes(encoder(image, fmt))
    except CodecError:
        raise
    except Exception as exc:  # noqa: BLE001 - each codec has its own error types
        raise CodecError(f"pixels do not encode as {transfer_syntax}: {exc}") from exc


def transcode(data: bytes, source: str, target: str, fmt: PixelFormat) -> bytes:
    """One stored frame of syntax ``source`` as ``target``."""
    return encode(decode(data, source, fmt), target, fmt)


def encoded_photometric(transfer_syntax: str, fmt: PixelFormat) -> str:
    """The photometric interpretation of frames :func:`encode` wrote (PS3.5 §8.2)."""
    if fmt.samples == 3 and transfer_syntax == JPEG_BASELINE:
        return "YBR_FULL_422"
    return fmt.decoded().photometric
