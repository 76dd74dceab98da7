"""Accept negotiation: every form the pathology clients send (shared/notes/what-clients-need.md)."""

from __future__ import annotations

import pytest

from dicomweb.dicom.media import (
    Choice,
    accepts_json,
    byte_range,
    frame_choices,
    instance_choices,
    negotiate_bulkdata,
)
from dicomweb.errors import NotAcceptable, RangeNotSatisfiable

JPEG = "1.2.840.10008.1.2.4.50"
J2K = "1.2.840.10008.1.2.4.90"
ELE = "1.2.840.10008.1.2.1"
HTJ2K = "1.2.840.10008.1.2.4.203"
SLIM = (
    'multipart/related; type="image/jls"; transfer-syntax=1.2.840.10008.1.2.4.80, '
    'multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.90, '
    'multipart/related; type="application/octet-stream"; transfer-syntax=*, '
    'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50'
)


@pytest.mark.parametrize(
    ("accept", "stored", "single", "expected"),
    [
        (None, JPEG, True, Choice(True, "image/jpeg", JPEG)),
        ("*/*", JPEG, False, Choice(True, "image/jpeg", JPEG)),
        ('multipart/related; type="*/*"', J2K, False, Choice(True, "image/jp2", J2K)),
        ('multipart/related; type="application/octet-stream"; transfer-syntax=*', JPEG, False,
         Choice(True, "application/octet-stream", JPEG)),
        ('multipart/related; type="application/octet-stream"', ELE, False, Choice(True, "application/octet-stream", ELE)),
        ('multipart/related; type="image/jpeg"', JPEG, False, Choice(True, "image/jpeg", JPEG)),
        (f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG}', JPEG, False, Choice(True, "image/jpeg", JPEG)),
        ('multipart/related; type="image/jp2"', J2K, False, Choice(True, "image/jp2", J2K)),
        (SLIM, JPEG, True, Choice(True, "application/octet-stream", JPEG)),
        (SLIM, J2K, True, Choice(True, "image/jp2", J2K)),
        ("application/octet-stream; transfer-syntax=*", JPEG, True, Choice(False, "application/octet-stream", JPEG)),
        ("image/jpeg", JPEG, True, Choice(False, "image/jpeg", JPEG)),
        ("image/jpeg, multipart/related; type=\"image/jpeg\"", JPEG, False, Choice(True, "image/jpeg", JPEG)),
        # Transcodes: what the client names, the media type's default syntax when it names none.
        ('multipart/related; type="application/octet-stream"', JPEG, False, Choice(True, "application/octet-stream", ELE)),
        ('multipart/related; type="image/jpeg"', J2K, False, Choice(True, "image/jpeg", JPEG)),
        ('multipart/related; type="image/jp2"', ELE, False, Choice(True, "image/jp2", J2K)),
        (f'multipart/related; type="image/jphc"; transfer-syntax={HTJ2K}', JPEG, False, Choice(True, "image/jphc", HTJ2K)),
        # Quality first; the stored syntax first among equals.
        ('multipart/related; type="application/octet-stream"; q=0.5, multipart/related; type="image/jp2"; q=0.9',
         JPEG, False, Choice(True, "image/jp2", J2K)),
        ('multipart/related; type="application/octet-stream", multipart/related; type="image/jpeg"',
         JPEG, False, Choice(True, "image/jpeg", JPEG)),
    ],
)
def test_first_frame_choice(accept: str | None, stored: str, single: bool, expected: Choice) -> None:
    assert frame_choices(accept, stored, single)[0] == expected


@pytest.mark.parametrize(
    ("accept", "stored", "single"),
    [
        (f'multipart/related; type="image/jp2"; transfer-syntax={JPEG}', J2K, False),  # a JPEG syntax is no jp2
        ("image/jpeg", JPEG, False),  # single part needs a single frame
        ("text/html", JPEG, True),
        ('multipart/related; type="image/*"', ELE, False),  # a wildcard names the stored frames only
    ],
)
def test_frames_nothing_named(accept: str, stored: str, single: bool) -> None:
    assert frame_choices(accept, stored, single) == []


def test_instances() -> None:
    def first(accept: str | None, stored: set[str], single: bool) -> Choice:
        return instance_choices(accept, stored, single)[0]

    assert first('multipart/related; type="application/dicom"', {ELE}, False) == Choice(True, "application/dicom", ELE)
    assert first('multipart/related; type="application/dicom"; transfer-syntax=*', {JPEG, ELE}, False).transfer_syntax == "*"
    assert first("application/dicom; transfer-syntax=*", {JPEG}, True) == Choice(False, "application/dicom", "*")
    assert first("*/*", {JPEG}, True).multipart
    assert first('multipart/related; type="application/dicom"', {JPEG}, False).transfer_syntax == ELE, "the default"
    assert first(f'multipart/related; type="application/dicom", multipart/related; type="application/dicom"; '
                 f'transfer-syntax={JPEG}', {JPEG}, False).transfer_syntax == JPEG, "stored first among equals"
    assert instance_choices("application/dicom; transfer-syntax=*", {JPEG}, False) == [], "several: multipart only"


def test_bulkdata_and_json() -> None:
    assert negotiate_bulkdata('multipart/related; type="application/octet-stream"') is True
    assert negotiate_bulkdata("application/octet-stream") is False
    assert negotiate_bulkdata(None) is True
    with pytest.raises(NotAcceptable):
        negotiate_bulkdata("image/png")
    assert accepts_json("application/dicom+json, application/json")
    assert accepts_json(None)
    assert not accepts_json("application/xml")


@pytest.mark.parametrize(("header", "span"), [
    (None, None), ("bytes=0-99", (0, 99)), ("bytes=10-", (10, 999)), ("bytes=-100", (900, 999)),
    ("bytes=990-5000", (990, 999)), ("bytes=-5000", (0, 999)), ("BYTES = 5 - 6", (5, 6)),
    ("bytes=0-1,5-6", None), ("items=0-1", None), ("bytes=5-3", None), ("bytes=a-b", None), ("bytes=-", None),
    ("bytes=5", None), ("bytes=+1-2", None), ("bytes=0-" + "9" * 5000, (0, 999)), ("bytes=-" + "9" * 5000, (0, 999)),
])
def test_byte_range_is_one_range_of_the_value_or_the_whole(header: str | None, span: tuple[int, int] | None) -> None:
    assert byte_range(header, 1000) == span


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0", "bytes=" + "9" * 5000 + "-"])
def test_a_range_beyond_the_value_is_416_naming_its_length(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as refused:
        byte_range(header, 1000)
    assert refused.value.status == 416 and refused.value.length == 1000
