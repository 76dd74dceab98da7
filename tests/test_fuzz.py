"""Property-based fuzzing of the running service (hypothesis) against real emulators.

Every answer to a mutated Part 10 file, a mangled multipart body, a random query string,
frame list or Accept header must be a 2xx or 4xx with a DICOM JSON body on errors, never
a 5xx or a dropped connection; and when it is all over, ``dicomweb check`` finds Blob and
the index consistent (nothing half stored). ``DICOMWEB_FUZZ_EXAMPLES`` scales the number
of cases (default: a few thousand in all, for CI).
"""

from __future__ import annotations

import os
import random
import string
from typing import Iterator
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicomweb.dicom.attributes import at_level
from tests.conftest import Server, fresh_settings, start_server
from tests.test_check import run_check
from tests.wsi_factory import SlideFile, make_slide

SCALE = int(os.environ.get("DICOMWEB_FUZZ_EXAMPLES", "0") or 0)
FUZZ = settings(max_examples=SCALE or 1000, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FUZZ_STOW = settings(FUZZ, max_examples=SCALE or 600)
ERROR_STATUSES = {400, 404, 406, 409, 413, 415}


@pytest.fixture(scope="module")
def fuzz_server(emulators: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A service of its own, so that the closing check covers exactly what the fuzzing stored."""
    running = start_server(fresh_settings(emulators), tmp_path_factory.mktemp("fuzz"), DICOMWEB_MAX_REQUEST_MB="4")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(fuzz_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_server.base_url, timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def stored(client: httpx.Client, tmp_path_factory: pytest.TempPathFactory) -> list[SlideFile]:
    files = make_slide(tmp_path_factory.mktemp("fuzz-slide"), levels=2, base_size=(512, 384), associated=False)
    for file in files:
        assert client.post("/studies", content=file.path.read_bytes(),
                           headers={"content-type": "application/dicom"}).status_code == 200
    return files


def _assert_clear(response: httpx.Response, allowed: set[int]) -> None:
    """A status from ``allowed``; an error is DICOM JSON with a reason and a Warning."""
    assert response.status_code < 500, (response.status_code, response.text[:500])
    assert response.status_code in allowed, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/dicom+json", response.headers
        response.json()


KEYS = [a.keyword for level in ("study", "series", "instance") for a in at_level(level)] + [
    "limit", "offset", "includefield", "fuzzymatching", "00100010", "0020000D", "_x", "charset", "Rows"]
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
VALUE = st.one_of(TEXT, st.text("*?^-,.0123456789AZaz ", max_size=30), st.sampled_from(
    ["", "*", "1.2.3", "20240101-", "-20240101", "²", "9" * 400, "true", "all", "%00", "\r\n"]))


@FUZZ
@given(pairs=st.lists(st.tuples(st.one_of(st.sampled_from(KEYS), TEXT), VALUE), max_size=6),
       level=st.sampled_from(["studies", "series", "instances"]))
def test_random_queries_answer_200_or_400(client: httpx.Client, stored: list[SlideFile],
                                          pairs: list[tuple[str, str]], level: str) -> None:
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)
    _assert_clear(client.get(f"/{level}?{query}"), {200, 400})


FRAME_TEXT = st.one_of(
    st.lists(st.integers(min_value=-3, max_value=40), min_size=1, max_size=30).map(lambda n: ",".join(map(str, n))),
    st.text(string.digits + ",-+ ²٣%", min_size=1, max_size=40),
    st.sampled_from(["1" * 5000, ",".join(["1"] * 2000), "0", "1,,2", "x"]),
)
ACCEPT = st.one_of(
    st.none(),
    st.sampled_from(["*/*", "image/jpeg", "application/octet-stream", "image/png", "multipart/related",
                     'multipart/related; type="image/jpeg"', 'multipart/related; type="application/octet-stream"; '
                     "transfer-syntax=*", "application/dicom+json", "text/html", 'multipart/related; type="',
                     "image/jpeg; q=0", "*/*; transfer-syntax=1.2.3"]),
    st.text(string.ascii_letters + string.digits + string.punctuation + " ", max_size=80).map(str.strip),
)


@FUZZ
@given(frames=FRAME_TEXT, accept=ACCEPT)
def test_random_frame_lists_and_accept_headers(client: httpx.Client, stored: list[SlideFile], frames: str,
                                               accept: str | None) -> None:
    file = stored[0]
    url = f"/studies/{file.study_uid}/series/{file.series_uid}/instances/{file.sop_uid}/frames/{quote(frames)}"
    _assert_clear(client.get(url, headers={"accept": accept} if accept is not None else {}), {200, 400, 404, 406})


@FUZZ
@given(accept=ACCEPT, what=st.sampled_from(["", "/metadata", "/bulkdata/7FE00010", "/bulkdata/00480105.0.00282000",
                                            "/bulkdata/x", "/frames/1"]))
def test_random_accept_headers_on_every_resource(client: httpx.Client, stored: list[SlideFile], accept: str | None,
                                                 what: str) -> None:
    file = stored[1]
    url = f"/studies/{file.study_uid}/series/{file.series_uid}/instances/{file.sop_uid}{what}"
    _assert_clear(client.get(url, headers={"accept": accept} if accept is not None else {}), {200, 400, 404, 406})


def _mutate(data: bytes, rng: random.Random, mutations: int) -> bytes:
    """Flip, overwrite with edge values, insert, delete or truncate: mostly within the header."""
    out = bytearray(data)
    for _ in range(mutations):
        where = rng.randrange(len(out)) if rng.random() < 0.3 else rng.randrange(min(len(out), 2048))
        kind = rng.randrange(5)
        if kind == 0:
            out[where] ^= 1 << rng.randrange(8)
        elif kind == 1:
            out[where : where + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\xf0\xff\xff\xff",
                                                 b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0", b"SQ\x00\x00"])
        elif kind == 2:
            out[where:where] = rng.randbytes(rng.randrange(1, 64))
        elif kind == 3:
            del out[where : where + rng.randrange(1, 256)]
        else:
            del out[where:]
        if not out:
            break
    return bytes(out)


@FUZZ_STOW
@given(seed=st.integers(min_value=0, max_value=2**32), mutations=st.integers(min_value=1, max_value=6),
       method=st.sampled_from(["POST", "PUT"]), multipart=st.booleans())
def test_mutated_part10_files(client: httpx.Client, stored: list[SlideFile], seed: int, mutations: int,
                              method: str, multipart: bool) -> None:
    rng = random.Random(seed)
    data = _mutate(stored[1].path.read_bytes(), rng, mutations)
    if multipart:
        body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--b--\r\n"
        headers = {"content-type": 'multipart/related; type="application/dicom"; boundary=b'}
    else:
        body, headers = data, {"content-type": "application/dicom"}
    _assert_clear(client.request(method, "/studies", content=body, headers=headers), {200, 202} | ERROR_STATUSES)


PART_HEADERS = st.sampled_from([b"Content-Type: application/dicom\r\n", b"", b"Content-Type: text/plain\r\n",
                                b"Content-Type: application/dicom\r\nContent-Length: 5\r\n", b"X: \xff\xfe\r\n",
                                b"Content-Type: application/dicom; transfer-syntax=1.2\r\n"])


@FUZZ_STOW
@given(boundary=st.sampled_from(["b", "x" * 70, "a b", "--", "é"]), parts=st.lists(
    st.tuples(PART_HEADERS, st.sampled_from(["valid", "empty", "junk", "cut"])), min_size=0, max_size=4),
    preamble=st.sampled_from([b"", b"preamble\r\n", b"\r\n\r\n"]), close=st.sampled_from(["close", "none", "bare"]),
    declared=st.sampled_from(['multipart/related; type="application/dicom"; boundary={b}',
                              'multipart/related; boundary="{b}"', "multipart/related; type=application/dicom",
                              'multipart/related; type="application/dicom"; boundary={b}; start=x']))
def test_mangled_multipart_framing(client: httpx.Client, stored: list[SlideFile], boundary: str,
                                   parts: list[tuple[bytes, str]], preamble: bytes, close: str, declared: str) -> None:
    valid = stored[0].path.read_bytes()
    payloads = {"valid": valid, "empty": b"", "junk": b"\x00" * 200 + b"junk", "cut": valid[: len(valid) // 2]}
    delimiter = b"--" + boundary.encode()
    body = preamble + b"".join(delimiter + b"\r\n" + headers + b"\r\n" + payloads[kind] + b"\r\n"
                               for headers, kind in parts)
    body += {"close": delimiter + b"--\r\n", "none": b"", "bare": delimiter}[close]
    content_type = declared.replace("{b}", boundary)
    response = client.post("/studies", content=body, headers={"content-type": content_type.encode("utf-8")})
    _assert_clear(response, {200, 202} | ERROR_STATUSES)


def test_nothing_was_half_stored(fuzz_server: Server, stored: list[SlideFile]) -> None:
    """Runs last in this module: every answer above left Blob and the index consistent."""
    report = run_check(fuzz_server.env)
    assert report.returncode == 0, report.stdout + report.stderr


def test_fuzz_defaults_make_thousands_of_cases() -> None:
    assert SCALE or 3 * FUZZ.max_examples + 2 * FUZZ_STOW.max_examples >= 1500
