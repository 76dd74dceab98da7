"""Accept-header negotiation for WADO-RS (PS3.18 §8.7: media types and transfer syntaxes).

No transcoding happens yet, so every negotiation picks between the stored bytes
under some label and 406; it never promises a syntax that is not stored.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicomweb.dicom.multipart import parse_media_type, split_list
from dicomweb.dicom.syntax import (
    DEFAULT_SYNTAX,
    EXPLICIT_VR_LITTLE_ENDIAN,
    NATIVE_SYNTAXES,
    frame_media_type,
)
from dicomweb.errors import NotAcceptable

MULTIPART = "multipart/related"
DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"
DICOM_JSON = "application/dicom+json"


@dataclass(frozen=True)
class Acceptable:
    """One entry of an Accept header."""

    multipart: bool | None  # None: "*/*", either form
    media_type: str  # for multipart, the ``type`` parameter ("*/*" when absent or wildcard)
    transfer_syntax: str | None  # None: the media type's default; "*": any
    quality: float


@dataclass(frozen=True)
class Choice:
    """The representation to send: single or multipart, the payload media type and its syntax."""

    multipart: bool
    media_type: str
    transfer_syntax: str


def parse_accept(header: str | None) -> list[Acceptable]:
    """Entries of ``header`` by descending quality, keeping the client's order among equals."""
    entries = []
    for item in split_list(header or "*/*"):
        media, params = parse_media_type(item)
        try:
            quality = float(params.get("q", "1"))
        except ValueError:
            quality = 1.0
        syntax = params.get("transfer-syntax")
        if media == MULTIPART:
            inner = parse_media_type(params.get("type", "*/*"))[0]
            entries.append(Acceptable(True, inner, syntax, quality))
        elif media in ("*/*", "*"):
            entries.append(Acceptable(None, "*/*", syntax, quality))
        else:
            entries.append(Acceptable(False, media, syntax, quality))
    return sorted((e for e in entries if e.quality > 0), key=lambda e: -e.quality)


def _matches(pattern: str, media_type: str) -> bool:
    if pattern in ("*/*", "*"):
        return True
    if pattern.endswith("/*"):
        return media_type.startswith(pattern[:-1])
    return pattern == media_type


def negotiate_frames(header: str | None, stored_syntax: str, single: bool) -> Choice:
    """Frames go out unchanged: as their own media type, or as octet-stream of the stored syntax."""
    native = stored_syntax in NATIVE_SYNTAXES
    own = frame_media_type(stored_syntax)
    label = EXPLICIT_VR_LITTLE_ENDIAN if native else stored_syntax
    for entry in parse_accept(header):
        if entry.multipart is False and not single:
            continue
        multipart = entry.multipart is not False
        wanted = entry.transfer_syntax
        if entry.media_type == OCTET_STREAM:
            if wanted in ("*", label) or (wanted is None and native):
                return Choice(multipart, OCTET_STREAM, label)
        elif _matches(entry.media_type, own) and wanted in (None, "*", label):
            return Choice(multipart, own, label)
    raise NotAcceptable(
        f"frames are stored as {own} ({stored_syntax}) and cannot be transcoded; "
        f'ask for type="{own}" or transfer-syntax=*'
    )


def negotiate_instance(header: str | None, stored_syntaxes: set[str], single_allowed: bool) -> Choice:
    """Instances go out as stored; a default or named syntax must be the stored one of every instance."""
    for entry in parse_accept(header):
        if entry.multipart is False and not single_allowed:
            continue
        if not _matches(entry.media_type, DICOM):
            continue
        wanted = entry.transfer_syntax
        if entry.media_type != DICOM and wanted is None:
            wanted = "*"
        wanted = wanted or DEFAULT_SYNTAX[DICOM]
        if wanted == "*" or stored_syntaxes <= {wanted}:
            return Choice(entry.multipart is not False, DICOM, wanted)
    raise NotAcceptable(
        f"instances are stored as {', '.join(sorted(stored_syntaxes))} and cannot be transcoded; "
        'ask for type="application/dicom"; transfer-syntax=*'
    )


def negotiate_bulkdata(header: str | None) -> bool:
    """True for a multipart answer, False for a single-part octet-stream."""
    for entry in parse_accept(header):
        if _matches(entry.media_type, OCTET_STREAM):
            return entry.multipart is not False
    raise NotAcceptable("bulk data is served as application/octet-stream")


def accepts_json(header: str | None) -> bool:
    """True when DICOM JSON (or plain JSON) is acceptable."""
    return any(
        entry.multipart is not True and (_matches(entry.media_type, DICOM_JSON) or entry.media_type == "application/json")
        for entry in parse_accept(header)
    )
