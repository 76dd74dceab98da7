"""What every function shares: CORS with configured origins, and errors as DICOM JSON."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from dicomweb.local.emulators import Emulators
from tests.conftest import Server, start_server


def test_only_configured_origins_are_allowed(emulators: dict[str, str], tmp_path: Path) -> None:
    server = start_server(emulators, tmp_path, DICOMWEB_CORS_ORIGINS="https://slim.example, https://ohif.example")
    try:
        url = f"{server.base_url}/studies/1.2.3/metadata"
        allowed = httpx.options(url, headers={"origin": "https://ohif.example", "access-control-request-method": "GET",
                                              "access-control-request-headers": "accept"})
        assert allowed.status_code == 204
        assert allowed.headers["access-control-allow-origin"] == "https://ohif.example"
        assert "origin" in allowed.headers["vary"].lower()
        answer = httpx.get(url, headers={"origin": "https://slim.example"})
        assert answer.status_code == 404
        assert answer.headers["access-control-allow-origin"] == "https://slim.example"
        other = httpx.get(url, headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    finally:
        server.stop()


def test_errors_are_dicom_json_with_a_warning(server: Server) -> None:
    response = httpx.get(f"{server.base_url}/studies/1.2.3/series/4.5/instances/6.7/frames/x")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/dicom+json"
    assert "frame list" in response.json()["00000902"]["Value"][0]
    assert response.headers["warning"].startswith('299 dicomweb "')


@pytest.mark.parametrize("path", [
    "studies?_%00=1",  # a NUL in a parameter name went raw into the Warning header and dropped the connection
    "studies?_a%0D%0AX-Injected:%201=1",  # CR LF in a parameter name
    "studies?_%C3%A9t%C3%A9=1",  # non-Latin-1 parameter names answered 500 text/plain
    "studies?PatientName=%E2%82%AC%00",
])
def test_client_text_never_breaks_the_warning_header(server: Server, path: str) -> None:
    response = httpx.get(f"{server.base_url}/{path}")
    assert response.status_code == 200
    warning = response.headers.get("warning", "")
    assert warning.isascii() and "\r" not in warning and "\n" not in warning and "\x00" not in warning
    assert "x-injected" not in response.headers


@pytest.mark.parametrize(("path", "word"), [
    ("studies?%C3%A9t%C3%A9=1", "parameter"),
    ("studies?limit=%C2%B2", "limit"),  # "²": str.isdigit accepted it, int() did not
    ("studies?offset=" + "9" * 5000, "offset"),
    ("studies/1.2.3%0A/series", "UID"),  # a trailing newline passed the UID pattern
    ("studies/1.2.3/series/4.5%0A/instances/6/metadata", "UID"),
    ("studies/1.2.3/series/4.5/instances/6%0A/frames/1", "UID"),
    ("studies/1.2.3/series/4.5/instances/6/frames/%C2%B2", "frame"),
    ("studies/1.2.3/series/4.5/instances/6/frames/" + "9" * 5000, "frame"),
    ("studies/1.2.3/series/4.5/instances/6/frames/" + ",".join(["1"] * 5000), "DICOMWEB_MAX_FRAMES_PER_REQUEST"),
    ("changefeed?startTime=9999-12-31T23:59:59-23:59", "startTime"),
    ("changefeed?offset=%C2%B2", "offset"),
    ("changefeed?limit=" + "1" * 3000, "limit"),
])
def test_malformed_values_answer_400_in_dicom_json(server: Server, path: str, word: str) -> None:
    response = httpx.get(f"{server.base_url}/{path}")
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    assert word in response.json()["message"]
    assert response.headers["warning"].isascii()


def test_storage_outages_answer_503_with_retry_after_and_the_service_recovers(tmp_path: Path) -> None:
    stack = Emulators(tmp_path / "emulators")
    settings = stack.start()
    azurite, cosmos = stack.processes["azurite"], stack.processes["cosmos"]
    server = start_server(settings, tmp_path, DICOMWEB_STORAGE_TIMEOUT_SECONDS="2",
                          DICOMWEB_CORS_ORIGINS="https://slim.example")
    try:
        os.killpg(cosmos.pid, signal.SIGKILL)
        cosmos.wait(10)
        started = time.monotonic()
        cold = httpx.get(f"{server.base_url}/studies", headers={"origin": "https://slim.example"}, timeout=60)
        assert cold.status_code == 503 and time.monotonic() - started < 30, "a failure at cold start is a 503"
        assert cold.headers["content-type"] == "application/dicom+json" and cold.headers["retry-after"]
        assert cold.headers["access-control-allow-origin"] == "https://slim.example"
        os.killpg(azurite.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            frozen = httpx.get(f"{server.base_url}/studies/1.2.3/series/4.5/instances/6/frames/1", timeout=90)
            assert frozen.status_code == 503 and time.monotonic() - started < 30, "a frozen store is a 503 in seconds"
        finally:
            os.killpg(azurite.pid, signal.SIGCONT)
        # The Cosmos server comes back empty; the local stack provisions it again (the service creates nothing).
        stack.restart("cosmos")
        deadline = time.monotonic() + 30
        while (answer := httpx.get(f"{server.base_url}/studies", timeout=60)).status_code != 200:
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.5)
        assert answer.json() == []
    finally:
        server.stop()
        stack.stop()


def _upload_location(base_url: str, headers: dict[str, str]) -> str:
    """Where the service says a new upload session lives: a URL it builds from its public base URL."""
    response = httpx.post(f"{base_url}/uploads", json={"size": 1000}, headers=headers)
    assert response.status_code == 201, response.text
    return response.headers["location"]


@pytest.mark.parametrize(("headers", "origin"), [
    ({}, None),
    ({"host": "127.0.0.1"}, None),  # dicomweb-client drops the port: the one it connected to
    ({"host": "localhost:1234"}, "http://localhost:1234/v1"),
    ({"x-forwarded-host": "pacs.example.org", "x-forwarded-proto": "https", "x-forwarded-prefix": "/dicom"},
     "https://pacs.example.org/dicom/v1"),
    ({"forwarded": 'for=192.0.2.60;proto=https;host="viewer.example:8443", for=10.0.0.1;host=inner'},
     "https://viewer.example:8443/v1"),
    ({"x-forwarded-host": "evil.example/path?x=", "x-forwarded-proto": "javascript"}, None),
])
def test_urls_name_the_origin_the_client_used(server: Server, headers: dict[str, str], origin: str | None) -> None:
    """``serve`` pins no public URL and believes a proxy on this machine (DICOMWEB_TRUSTED_PROXIES)."""
    assert _upload_location(server.base_url, headers).startswith((origin or server.base_url) + "/uploads/")


def test_a_host_header_that_names_no_host_is_refused(server: Server) -> None:
    response = httpx.post(f"{server.base_url}/uploads", json={"size": 1000}, headers={"host": 'pacs"x'})
    assert response.status_code == 400 and "Host" in response.json()["message"]


def test_forwarding_headers_of_an_untrusted_peer_are_ignored(emulators: dict[str, str], tmp_path: Path) -> None:
    server = start_server(emulators, tmp_path, DICOMWEB_TRUSTED_PROXIES="10.0.0.0/8")
    try:
        location = _upload_location(server.base_url, {"x-forwarded-host": "pacs.example.org"})
        assert location.startswith(server.base_url + "/uploads/")
    finally:
        server.stop()
