"""UIDs, transfer syntaxes and the media types that carry their frames.

PS3.5 §9.1 (UID encoding), PS3.5 §10 (transfer syntaxes) and PS3.18 §8.7.3.5
(Table 8.7.3-5: media types and transfer syntaxes for pixel data).
"""

from __future__ import annotations

import re
from pathlib import Path

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"

NATIVE_SYNTAXES = frozenset({EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN})

#: Encapsulated transfer syntaxes and the single-frame media type of their frames (PS3.18 Table 8.7.3-5).
FRAME_MEDIA_TYPES: dict[str, str] = {
    JPEG_BASELINE: "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/x-dicom-rle",
}

#: The transfer syntax a media type means when the client names none (PS3.18 Table 8.7.3-5, "default").
DEFAULT_SYNTAX: dict[str, str] = {
    "application/dicom": EXPLICIT_VR_LITTLE_ENDIAN,
    "application/octet-stream": EXPLICIT_VR_LITTLE_ENDIAN,
    "image/jpeg": JPEG_BASELINE,
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/jphc": "1.2.840.10008.1.2.4.201",
    "image/x-dicom-rle": "1.2.840.10008.1.2.5",
}

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_DIGITS = re.compile(r"[0-9]{1,18}")


def is_valid_uid(value: str) -> bool:
    """PS3.5 §9.1: digits and dots, no empty or zero-led component, at most 64 characters (nothing after)."""
    return 0 < len(value) <= 64 and _UID.fullmatch(value) is not None


def bounded_int(text: str, low: int, high: int) -> int | None:
    """``text`` as an integer from ``low`` to ``high``: ASCII digits only (no sign, no ``²``); None otherwise."""
    if _DIGITS.fullmatch(text) is None:
        return None
    value = int(text)
    return value if low <= value <= high else None


def frame_media_type(transfer_syntax: str) -> str:
    """The media type that carries one frame of ``transfer_syntax`` unchanged."""
    return FRAME_MEDIA_TYPES.get(transfer_syntax, "application/octet-stream")


def is_encapsulated(transfer_syntax: str) -> bool:
    """True when pixel data of this syntax is stored as fragments (PS3.5 §A.4)."""
    return transfer_syntax not in NATIVE_SYNTAXES and transfer_syntax != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN


def is_part10_file(path: Path) -> bool:
    """Whether the file at ``path`` starts as a DICOM Part 10 file does: a 128-byte preamble, then ``DICM``
    (PS3.10 §7.1). OSError for a file that cannot be read."""
    with path.open("rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"
