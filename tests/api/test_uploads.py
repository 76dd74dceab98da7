"""Upload sessions against the running service: blocks straight to Azurite through the SAS, then commit."""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import httpx
import pytest
from azure.storage.blob import BlobClient

from tests.conftest import (
    Server,
    blob_names,
    blob_service,
    fresh_settings,
    parse_multipart,
    source_frames,
    start_server,
)
from tests.wsi_factory import SlideFile, make_large_instance, make_slide

if TYPE_CHECKING:
    from tests.oidc import Provider

OCTET_ANY = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


@pytest.fixture(scope="module")
def uploads_server(emulators: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """1 MiB blocks (many of them per instance) and a 2 MB STOW limit, on storage of its own."""
    server = start_server(fresh_settings(emulators), tmp_path_factory.mktemp("uploads"),
                          DICOMWEB_BLOCK_SIZE_MB="1", DICOMWEB_MAX_REQUEST_MB="2")
    yield server
    server.stop()


def _open(server: Server, size: int, **extra: object) -> dict:
    response = httpx.post(f"{server.base_url}/uploads", json={"size": size, **extra})
    assert response.status_code == 201, response.text
    assert response.headers["location"] == response.json()["statusUrl"]
    return response.json()


def _put(session: dict, data: bytes, indices: list[int] | None = None) -> None:
    blocks = [b for b in session["blocks"] if indices is None or b["index"] in indices]

    def put(block: dict) -> None:
        response = httpx.put(f"{session['uploadUrl']}&comp=block&blockid={block['id']}",
                             content=data[block["offset"] : block["offset"] + block["length"]], timeout=60)
        assert response.status_code == 201, response.text

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, blocks))


def _commit(session: dict) -> httpx.Response:
    return httpx.post(session["commitUrl"], timeout=300)


def _upload(server: Server, data: bytes, **extra: object) -> httpx.Response:
    session = _open(server, len(data), **extra)
    _put(session, data)
    return _commit(session)


def _reasons(answer: dict) -> list[int]:
    return [item["00081197"]["Value"][0] for item in answer.get("00081198", {}).get("Value", [])]


def _nothing_stored(server: Server, study: str) -> bool:
    env = server.env
    return (not blob_names(env, env["DICOMWEB_INSTANCE_CONTAINER"], study)
            and not blob_names(env, env["DICOMWEB_SIDECAR_CONTAINER"], study)
            and httpx.get(f"{server.base_url}/studies/{study}/metadata").status_code == 404)


def _staged_data(server: Server) -> list[str]:
    return blob_names(server.env, server.env["DICOMWEB_STAGING_CONTAINER"], "data/")


def test_a_multi_hundred_mb_instance_round_trips_byte_exact(uploads_server: Server, tmp_path: Path) -> None:
    slide = make_large_instance(tmp_path / "large.dcm", frames=6000, frame_bytes=50000)
    data = slide.path.read_bytes()
    assert len(data) > 300_000_000
    session = _open(uploads_server, len(data))
    assert session["blockCount"] == len(session["blocks"]) > 280 and session["missing"] == list(range(session["blockCount"]))
    _put(session, data)
    response = _commit(session)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    (stored,) = response.json()["00081199"]["Value"]
    instance = f"{uploads_server.base_url}/studies/{slide.study_uid}/series/{slide.series_uid}/instances/{slide.sop_uid}"
    assert stored["00081190"]["Value"] == [instance]
    expected = source_frames(slide.path)
    for first in range(1, len(expected) + 1, 500):
        numbers = range(first, min(first + 500, len(expected) + 1))
        frames = httpx.get(f"{instance}/frames/{','.join(map(str, numbers))}", headers={"accept": OCTET_ANY}, timeout=60)
        assert [body for _, body in parse_multipart(frames)] == expected[first - 1 : numbers[-1]]
    digest = hashlib.sha256()
    with httpx.stream("GET", instance, headers={"accept": "application/dicom; transfer-syntax=*"}, timeout=120) as whole:
        for chunk in whole.iter_bytes():
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest(), "the stored file is the uploaded one"
    assert _staged_data(uploads_server) == [], "the staged blob is gone once ingested"
    assert httpx.get(session["statusUrl"]).json()["status"] == "stored"


def test_an_interrupted_session_resumes_without_resending_blocks(uploads_server: Server, tmp_path: Path) -> None:
    volume = make_slide(tmp_path, levels=1, associated=False, base_size=(2400, 2400))[0]
    data = volume.path.read_bytes()
    session = _open(uploads_server, len(data))
    first_half = list(range(session["blockCount"] // 2))
    _put(session, data, first_half)
    resumed = httpx.get(session["statusUrl"]).json()
    assert resumed["status"] == "open" and resumed["received"] == first_half
    assert resumed["missing"] == list(range(len(first_half), session["blockCount"]))
    early = _commit(session)
    assert early.status_code == 409 and "have not arrived" in early.json()["message"]
    _put(resumed, data, resumed["missing"])
    response = _commit(resumed)
    assert response.status_code == 200, response.text
    assert httpx.get(f"{uploads_server.base_url}/studies/{volume.study_uid}/series/{volume.series_uid}/instances/"
                     f"{volume.sop_uid}/metadata").status_code == 200
    again = _commit(resumed)
    assert again.status_code == 200 and again.json() == response.json(), "a repeated commit answers the same"


def test_the_sas_writes_only_its_own_blob(uploads_server: Server) -> None:
    session = _open(uploads_server, 1000)
    url, query = session["uploadUrl"].split("?", 1)
    other = url.rsplit("/", 1)[0] + "/other.dcm"
    assert httpx.put(f"{other}?{query}&comp=block&blockid={session['blocks'][0]['id']}", content=b"x").status_code == 403
    instance_container = url.replace(uploads_server.env["DICOMWEB_STAGING_CONTAINER"],
                                     uploads_server.env["DICOMWEB_INSTANCE_CONTAINER"])
    assert httpx.put(f"{instance_container}?{query}", content=b"x", headers={"x-ms-blob-type": "BlockBlob"}).status_code == 403
    _put(session, b"x" * 1000)
    assert httpx.get(session["uploadUrl"]).status_code == 403, "write-only: no reading back"
    assert httpx.delete(session["uploadUrl"]).status_code == 403
    assert "sp=w&" in session["uploadUrl"] + "&"


def test_the_sas_expires_and_a_status_request_renews_it(emulators: dict[str, str], tmp_path: Path) -> None:
    server = start_server(fresh_settings(emulators), tmp_path, DICOMWEB_UPLOAD_SAS_SECONDS="2")
    try:
        session = _open(server, 10)
        time.sleep(3)
        block = session["blocks"][0]
        assert httpx.put(f"{session['uploadUrl']}&comp=block&blockid={block['id']}", content=b"0" * 10).status_code == 403
        fresh = httpx.get(session["statusUrl"]).json()
        assert fresh["uploadUrl"] != session["uploadUrl"]
        assert httpx.put(f"{fresh['uploadUrl']}&comp=block&blockid={block['id']}", content=b"0" * 10).status_code == 201
        assert httpx.get(session["statusUrl"]).json()["received"] == [0]
    finally:
        server.stop()


@pytest.mark.parametrize("damage", ["not-dicom", "truncated"])
def test_a_corrupt_or_truncated_upload_fails_cleanly(uploads_server: Server, tmp_path: Path, damage: str) -> None:
    volume = make_slide(tmp_path, levels=1, associated=False, base_size=(1200, 1200))[0]
    data = volume.path.read_bytes()
    data = b"\x00" * 128 + b"NOPE" + data[132:] if damage == "not-dicom" else data[: len(data) * 2 // 3]
    response = _upload(uploads_server, data)
    assert response.status_code == 409, response.text
    assert _reasons(response.json()) == [43264]
    assert "warning" in response.headers
    assert _nothing_stored(uploads_server, volume.study_uid)
    assert _staged_data(uploads_server) == []


def test_a_session_bound_to_a_study_refuses_another(uploads_server: Server, tmp_path: Path) -> None:
    volume = make_slide(tmp_path, levels=1, associated=False, base_size=(600, 600))[0]
    response = _upload(uploads_server, volume.path.read_bytes(), studyInstanceUID="1.2.3.4")
    assert response.status_code == 409 and _reasons(response.json()) == [43265]
    assert _nothing_stored(uploads_server, volume.study_uid)


def test_a_duplicate_is_refused_and_the_stored_instance_untouched(uploads_server: Server, tmp_path: Path) -> None:
    volume = make_slide(tmp_path, levels=1, associated=False, base_size=(600, 600))[0]
    data = volume.path.read_bytes()
    assert _upload(uploads_server, data).status_code == 200
    metadata = f"{uploads_server.base_url}/studies/{volume.study_uid}/metadata"
    before = httpx.get(metadata).json()
    response = _upload(uploads_server, data)
    assert response.status_code == 409 and _reasons(response.json()) == [45070]
    assert httpx.get(metadata).json() == before
    assert _staged_data(uploads_server) == []


def test_the_azure_sdk_can_upload_through_the_sas(uploads_server: Server, tmp_path: Path) -> None:
    volume = make_slide(tmp_path, levels=1, associated=False, base_size=(1800, 1800))[0]
    data = volume.path.read_bytes()
    session = _open(uploads_server, len(data))
    BlobClient.from_blob_url(session["uploadUrl"], max_block_size=512 * 1024, max_single_put_size=512 * 1024) \
        .upload_blob(data, overwrite=True, max_concurrency=4)
    response = _commit(session)
    assert response.status_code == 200, response.text
    assert response.json()["00081199"]["Value"][0]["00081155"]["Value"] == [volume.sop_uid]


def test_abort_drops_the_session_and_its_blocks(uploads_server: Server) -> None:
    session = _open(uploads_server, 3 * 1024 * 1024)
    _put(session, b"\x01" * (3 * 1024 * 1024), [0, 2])
    staging = blob_service(uploads_server.env).get_container_client(uploads_server.env["DICOMWEB_STAGING_CONTAINER"])
    blob = staging.get_blob_client(f"data/{session['id']}.dcm")
    assert len(blob.get_block_list("uncommitted")[1]) == 2
    assert httpx.delete(session["statusUrl"]).status_code == 204
    assert httpx.get(session["statusUrl"]).status_code == 404
    assert _commit(session).status_code == 404
    assert not blob.exists()
    assert f"sessions/{session['id']}.json" not in blob_names(uploads_server.env,
                                                             uploads_server.env["DICOMWEB_STAGING_CONTAINER"], "sessions/")


@pytest.mark.parametrize("request_body", [{}, {"size": 0}, {"size": "12"}, {"size": 10, "studyInstanceUID": "1.a"}, []])
def test_bad_session_requests(uploads_server: Server, request_body: object) -> None:
    response = httpx.post(f"{uploads_server.base_url}/uploads", content=json.dumps(request_body))
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/dicom+json" and response.json()["message"]


def test_unknown_sessions_are_not_found(uploads_server: Server) -> None:
    for method, path in (("GET", ""), ("POST", "/commit"), ("DELETE", "")):
        response = httpx.request(method, f"{uploads_server.base_url}/uploads/0123456789abcdef{path}")
        assert response.status_code == 404, (method, path)


def test_stow_beyond_the_body_limit_answers_413_naming_upload_sessions(uploads_server: Server, tmp_path: Path) -> None:
    volume = make_slide(tmp_path, levels=1, associated=False, base_size=(3000, 3000))[0]
    data = volume.path.read_bytes()
    assert len(data) > 2 * 1024 * 1024
    declared = httpx.post(f"{uploads_server.base_url}/studies", content=data,
                          headers={"content-type": "application/dicom"})

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(data), 256 * 1024):
            yield data[start : start + 256 * 1024]

    streamed = httpx.post(f"{uploads_server.base_url}/studies", content=chunks(),
                          headers={"content-type": "application/dicom"})
    multipart = httpx.post(f"{uploads_server.base_url}/studies", content=chunks(),
                           headers={"content-type": 'multipart/related; type="application/dicom"; boundary=b'})
    for response in (declared, streamed, multipart):
        assert response.status_code == 413, response.text
        assert f"POST {uploads_server.base_url}/uploads" in response.json()["message"]
    assert _nothing_stored(uploads_server, volume.study_uid)


def test_a_long_ingest_answers_202_and_finishes_in_the_background(emulators: dict[str, str], tmp_path: Path) -> None:
    server = start_server(fresh_settings(emulators), tmp_path, DICOMWEB_COMMIT_WAIT_SECONDS="0")
    try:
        volume = make_slide(tmp_path / "slide", levels=1, associated=False, base_size=(2400, 2400))[0]
        data = volume.path.read_bytes()
        session = _open(server, len(data))
        _put(session, data)
        response = _commit(session)
        assert response.status_code == 202, response.text
        assert response.headers["location"] == session["statusUrl"]
        assert response.json()["status"] == "ingesting"
        deadline = time.monotonic() + 60
        while (status := httpx.get(session["statusUrl"]).json())["status"] == "ingesting":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert status["status"] == "stored" and status["result"]["status"] == 200
        assert status["result"]["body"]["00081199"]["Value"][0]["00081155"]["Value"] == [volume.sop_uid]
        assert _commit(session).status_code == 200
    finally:
        server.stop()


def test_an_ingest_whose_worker_died_is_resumed_by_a_status_request(uploads_server: Server, tmp_path: Path) -> None:
    volume: SlideFile = make_slide(tmp_path, levels=1, associated=False, base_size=(1500, 1500))[0]
    data = volume.path.read_bytes()
    session = _open(uploads_server, len(data))
    _put(session, data)
    # What a worker leaves behind when it dies right after committing the blocks: a silent "ingesting" session.
    staging = blob_service(uploads_server.env).get_container_client(uploads_server.env["DICOMWEB_STAGING_CONTAINER"])
    staging.get_blob_client(f"data/{session['id']}.dcm").commit_block_list(
        [f"{b['index']:06d}" for b in session["blocks"]])
    record = staging.get_blob_client(f"sessions/{session['id']}.json")
    state = json.loads(record.download_blob().readall())
    record.upload_blob(json.dumps({**state, "status": "ingesting", "heartbeat": "2020-01-01T00:00:00Z"}),
                       overwrite=True)
    deadline = time.monotonic() + 60
    while (status := httpx.get(session["statusUrl"]).json())["status"] != "stored":
        assert status["status"] == "ingesting" and time.monotonic() < deadline
        time.sleep(0.2)
    assert httpx.get(f"{uploads_server.base_url}/studies/{volume.study_uid}/series/{volume.series_uid}/instances/"
                     f"{volume.sop_uid}/frames/1", headers={"accept": "image/jpeg"}).content == source_frames(volume.path)[0]


def test_a_session_belongs_to_its_creator(secured: Server, provider: "Provider", tmp_path: Path) -> None:
    """Another principal, even an owner, gets 404 for the status, commit and abort of a session it did not open."""
    (file,) = make_slide(tmp_path, levels=1, associated=False, base_size=(256, 256))
    data = file.path.read_bytes()
    alice = provider.bearer(roles=["DICOM.Writer"], oid="oid-alice")
    others = [provider.bearer(roles=["DICOM.Writer"], oid="oid-bob"),
              provider.bearer(roles=["DICOM.Owner"], oid="oid-admin")]
    opened = httpx.post(f"{secured.base_url}/uploads", json={"size": len(data)}, headers=alice)
    assert opened.status_code == 201, opened.text
    session = opened.json()
    for other in others:
        assert httpx.get(session["statusUrl"], headers=other).status_code == 404
        assert httpx.post(session["commitUrl"], headers=other).status_code == 404
        assert httpx.delete(session["statusUrl"], headers=other).status_code == 404
        assert "uploadUrl" not in httpx.get(session["statusUrl"], headers=other).text
    assert httpx.get(session["statusUrl"], headers=alice).json()["status"] == "open"
    _put(session, data)
    committed = httpx.post(session["commitUrl"], headers=alice, timeout=300)
    assert committed.status_code == 200, committed.text
    assert httpx.get(session["statusUrl"], headers=alice).json()["status"] == "stored"
    assert httpx.get(session["statusUrl"], headers=others[0]).status_code == 404
