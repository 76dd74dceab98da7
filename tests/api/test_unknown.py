"""What the service does not have answers DICOM JSON: 404 for an unknown path, 405 with ``Allow`` for a method a path
lacks, 401 before either for a caller without a token (``dicomweb/api/unknown.py``)."""

from __future__ import annotations

import httpx
import pytest

import function_app
from dicomweb.api import unknown
from dicomweb.api.http import ROUTES
from dicomweb.api.local_host import registered
from tests.conftest import Server

STUDY, SERIES, INSTANCE = "1.2.826.0.1.3680043.10.1", "1.2.826.0.1.3680043.10.2", "1.2.826.0.1.3680043.10.3"
VALUES = {"study": STUDY, "series": SERIES, "instance": INSTANCE, "frames": "1", "path": "00282000", "id": "0" * 32}
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
UNKNOWN_PATHS = ["/nope", "/v2/studies", "/studies/x/y/z", f"/studies/{STUDY}/nope", f"/studies/{STUDY}/series/{SERIES}/x",
                 f"/studies/{STUDY}/series/{SERIES}/instances/{INSTANCE}/frames/1/nope/deeper", "/uploads/abc/nope",
                 "/operations", "/studies/" + "a/" * 200, "/%2e%2e/%2e%2e/etc/passwd", "/wado", "/ups"]


def _allowed() -> dict[str, set[str]]:
    """Each known path (its parameters filled in) and the methods it takes."""
    paths: dict[str, set[str]] = {}
    for name, (route, methods) in ROUTES.items():
        if name != unknown.NAME:
            paths.setdefault("/" + route.format(**VALUES), set()).update(methods)
    return paths


def _is_dicom_json_error(response: httpx.Response, status: int) -> bool:
    body_ok = response.request.method == "HEAD" or bool(response.json().get("message"))
    return (response.status_code == status and response.headers["content-type"] == "application/dicom+json"
            and body_ok)


def test_the_catch_all_comes_after_every_other_route() -> None:
    """The Functions host tries routes in the order of their functions' names: the catch-all's sorts last."""
    names = [f.get_function_name() for f in registered(function_app.app) if f.get_trigger().type == "httpTrigger"]
    assert sorted(names)[-1] == unknown.NAME and len(names) > 40


@pytest.mark.parametrize("method", METHODS)
def test_unknown_paths_answer_404_in_dicom_json(server: Server, method: str) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for path in UNKNOWN_PATHS:
            response = client.request(method, path)
            assert _is_dicom_json_error(response, 404), (method, path, response.status_code, response.text[:200])


def test_every_method_a_path_lacks_answers_405_naming_those_it_takes(server: Server) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for path, methods in _allowed().items():
            for method in sorted(set(METHODS) - methods):
                response = client.request(method, path)
                assert _is_dicom_json_error(response, 405), (method, path, response.status_code, response.text[:200])
                assert response.headers["allow"] == ", ".join(sorted(methods) + ["OPTIONS"]), (method, path)


def test_a_caller_without_a_token_learns_nothing_of_the_routes(secured: Server) -> None:
    for method, path in [("GET", "/nope"), ("PATCH", "/studies"), ("DELETE", "/changefeed")]:
        response = httpx.request(method, f"{secured.base_url}{path}", timeout=30)
        assert _is_dicom_json_error(response, 401), (method, path, response.status_code)
