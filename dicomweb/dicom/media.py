"""Accept-header negotiation for WADO-RS (PS3.18 §8.7: media types and transfer syntaxes), and the byte range
a bulk data request asks for.

Negotiation lists what the client accepts, stored representation first where the client's
preferences allow it; :mod:`dicomweb.transcode` decides which of those it can produce.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dicomweb.dicom.multipart import parse_media_type, split_list
from dicomweb.dicom.syntax import (
    DEFAULT_SYNTAX,
    EXPLICIT_VR_LITTLE_ENDIAN,
    NATIVE_SYNTAXES,
    frame_media_type,
)
from dicomweb.errors import NotAcceptable, RangeNotSatisfiable

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


def _quality(params: dict[str, str]) -> float:
    """The ``q`` of a list entry (RFC 9110 §12.4.2); 1 when absent or unreadable."""
    try:
        return float(params.get("q", "1"))
    except ValueError:
        return 1.0


def parse_accept(header: str | None) -> list[Acceptable]:
    """Entries of ``header`` by descending quality, keeping the client's order among equals."""
    entries = []
    for item in split_list(header or "*/*"):
        media, params = parse_media_type(item)
        quality = _quality(params)
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


def _tiers(entries: list[Acceptable]) -> list[list[Acceptable]]:
    """Entries grouped by equal quality, best first (``parse_accept`` sorted them)."""
    tiers: list[list[Acceptable]] = []
    for entry in entries:
        if tiers and tiers[-1][0].quality == entry.quality:
            tiers[-1].append(entry)
        else:
            tiers.append([entry])
    return tiers


def _frame_choice(entry: Acceptable, stored_label: str, own: str) -> Choice | None:
    """What one Accept entry asks for frames stored as ``stored_label`` to be, if it names anything."""
    multipart = entry.multipart is not False
    wanted = entry.transfer_syntax
    if entry.media_type == OCTET_STREAM:
        syntax = EXPLICIT_VR_LITTLE_ENDIAN if wanted is None else stored_label if wanted == "*" else wanted
        return Choice(multipart, OCTET_STREAM, syntax)
    if entry.media_type in DEFAULT_SYNTAX and entry.media_type != DICOM:
        if wanted in (None, "*"):
            syntax = stored_label if own == entry.media_type else DEFAULT_SYNTAX[entry.media_type]
        elif frame_media_type(wanted) == entry.media_type:
            syntax = wanted
        else:
            return None
        return Choice(multipart, entry.media_type, syntax)
    if _matches(entry.media_type, own):  # a wildcard: the stored frames as they are
        return Choice(multipart, own, stored_label)
    return None


def frame_choices(header: str | None, stored_syntax: str, single: bool) -> list[Choice]:
    """Every representation of frames the Accept header allows, the client's preference first.

    Among entries of equal quality the stored representation comes first, so a client that
    lists several syntaxes (Slim) gets the stored bytes whenever it accepts them; the caller
    takes the first choice that is stored or that it can transcode to.
    """
    own = frame_media_type(stored_syntax)
    label = frame_label(stored_syntax)
    choices: list[Choice] = []
    for tier in _tiers(parse_accept(header)):
        found = [c for e in tier if (e.multipart is not False or single) and (c := _frame_choice(e, label, own))]
        for choice in sorted(found, key=lambda c: c.transfer_syntax != label):
            if choice not in choices:
                choices.append(choice)
    return choices


def frame_label(stored_syntax: str) -> str:
    """The transfer syntax that names stored frames as served: native frames are Explicit VR Little Endian."""
    return EXPLICIT_VR_LITTLE_ENDIAN if stored_syntax in NATIVE_SYNTAXES else stored_syntax


def instance_choices(header: str | None, stored_syntaxes: set[str], single_allowed: bool) -> list[Choice]:
    """Every transfer syntax the Accept header allows instances in, the client's preference first.

    ``application/dicom`` without a syntax means Explicit VR Little Endian (PS3.18 Table 8.7.3-2);
    ``transfer-syntax=*`` and wildcard types mean the stored files. Among entries of equal
    quality the stored files come first.
    """
    choices: list[Choice] = []
    for tier in _tiers(parse_accept(header)):
        found = []
        for entry in tier:
            if (entry.multipart is False and not single_allowed) or not _matches(entry.media_type, DICOM):
                continue
            wanted = entry.transfer_syntax
            if entry.media_type != DICOM and wanted is None:
                wanted = "*"
            found.append(Choice(entry.multipart is not False, DICOM, wanted or DEFAULT_SYNTAX[DICOM]))
        for choice in sorted(found, key=lambda c: not (c.transfer_syntax == "*" or stored_syntaxes <= {c.transfer_syntax})):
            if choice not in choices:
                choices.append(choice)
    return choices


def negotiate_bulkdata(header: str | None) -> bool:
    """True for a multipart answer, False for a single-part octet-stream."""
    for entry in parse_accept(header):
        if _matches(entry.media_type, OCTET_STREAM):
            return entry.multipart is not False
    raise NotAcceptable("bulk data is served as application/octet-stream")


#: One byte range (RFC 9110 §14.1.2): ``bytes=first-last``, ``first-`` or ``-suffix``; a list of ranges does not match.
_BYTE_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.IGNORECASE)
#: Beyond every value: a position with more digits is read as this, as Python refuses to read a number of
#: more than 4,300 digits (and a header may carry one).
_BEYOND = 10**18


def _position(digits: str) -> int:
    return int(digits) if len(digits) < 19 else _BEYOND


def byte_range(header: str | None, length: int) -> tuple[int, int] | None:
    """The first and last byte a ``Range`` header (RFC 9110 §14.2) asks of a value of ``length`` bytes, or None
    for the whole value: no header, another unit, a malformed one, or several ranges (which a server may answer
    whole, §14.2). A range that starts beyond the value is a 416; one that ends beyond it ends with it."""
    found = _BYTE_RANGE.fullmatch(header) if header is not None and length else None
    if found is None or not any(found.groups()):
        return None
    first, last = found.groups()
    if not first:  # the last N bytes
        if _position(last) == 0:
            raise RangeNotSatisfiable("an empty suffix range asks for no byte", length)
        return max(length - _position(last), 0), length - 1
    start = _position(first)
    end = min(_position(last), length - 1) if last else length - 1
    if start >= length:
        raise RangeNotSatisfiable(f"the range starts at byte {start} of a {length}-byte value", length)
    return (start, end) if end >= start else None


def accepts_json(header: str | None) -> bool:
    """True when DICOM JSON (or plain JSON) is acceptable."""
    return any(
        entry.multipart is not True and (_matches(entry.media_type, DICOM_JSON) or entry.media_type == "application/json")
        for entry in parse_accept(header)
    )


def accepts_gzip(header: str | None) -> bool:
    """Whether an Accept-Encoding header (RFC 9110 §12.5.3) takes gzip, by name or by ``*``."""
    for item in split_list(header or ""):
        coding, params = parse_media_type(item)
        if coding in ("gzip", "x-gzip", "*") and _quality(params) > 0:
            return True
    return False


def negotiate_rendered(header: str | None, types: tuple[str, ...], single: bool) -> Choice:
    """The consumer image format of a rendered answer: the client's preference among ``types``, the first of
    them for a wildcard; multipart where asked for, or where several images go out (``single`` False: a
    single-part type then names the type of the parts)."""
    for entry in parse_accept(header):
        for media_type in types:
            if _matches(entry.media_type, media_type):
                return Choice(entry.multipart is True or not single, media_type, "")
    raise NotAcceptable(f"rendered images are served as {', '.join(types)}")
