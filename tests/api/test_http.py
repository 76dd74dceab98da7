"""What every function shares: CORS with configured origins, and errors as DICOM JSON."""

from __future__ import annotations

from pathlib import Path

import httpx

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
