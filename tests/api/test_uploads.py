"""Upload sessions against the running service: blocks straight to Azurite through the SAS, then commit."""

from __future__ import annotations

import hashlib
import json
import time
from array import array
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import httpx
import pytest
from azure.storage.blob import BlobClient
from azure.storage.queue import QueueClient
from pydicom.uid import JPEGBaseline8Bit

from dicomweb import uploads
from dicomweb.dicom.frames import FrameIndex, sample
from tests.conftest import (
    Server,
    blob_names,
    blob_service,
    fresh_settings,
    parse_multipart,
    source_frames,
    start_server,
)
from tests.wsi_factory import SlideFile, make_bomb, make_large_instance, make_slide

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


def _open(server: Server, size: int | None, **extra: object) -> dict:
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


def test_a_session_opened_without_a_size_takes_it_at_the_commit(uploads_server: Server, tmp_path: Path) -> None:
    """A file still being written (a level the converter writes): blocks numbered by the client, the size last."""
    volume = make_slide(tmp_path, levels=1, associated=False, base_size=(4000, 4000))[0]
    data = volume.path.read_bytes()
    session = _open(uploads_server, None)
    block = session["blockSize"]
    assert session["size"] is None and session["blockCount"] is None and "blocks" not in session
    count = -(-len(data) // block)
    assert count > 3
    plan = [{"index": i, "id": uploads.wire_block_id(i), "offset": i * block,
             "length": min(block, len(data) - i * block)} for i in range(count)]
    _put({**session, "blocks": plan}, data, list(range(1, count)))  # the first block last, as the converter does
    assert httpx.get(session["statusUrl"]).json()["received"] == list(range(1, count))
    unsized = _commit(session)
    assert unsized.status_code == 400 and "commit?size=N" in unsized.json()["message"]
    _put({**session, "blocks": plan}, data, [0])
    early = httpx.post(f"{session['commitUrl']}?size={len(data) + block}", timeout=300)
    assert early.status_code == 409 and "have not arrived" in early.json()["message"], "a size beyond the blocks"
    assert httpx.post(f"{session['commitUrl']}?size=-5").status_code == 400
    response = httpx.post(f"{session['commitUrl']}?size={len(data)}", timeout=300)
    assert response.status_code == 200, response.text
    instance = f"{uploads_server.base_url}/studies/{volume.study_uid}/series/{volume.series_uid}/instances/{volume.sop_uid}"
    stored = httpx.get(instance, headers={"accept": "application/dicom; transfer-syntax=*"}, timeout=60).content
    assert stored == data
    assert httpx.get(session["statusUrl"]).json()["size"] == len(data)


def test_a_commit_contradicting_the_declared_size_is_refused(uploads_server: Server, tmp_path: Path) -> None:
    volume = make_slide(tmp_path, levels=1, associated=False, base_size=(600, 600))[0]
    data = volume.path.read_bytes()
    session = _open(uploads_server, len(data))
    _put(session, data)
    wrong = httpx.post(f"{session['commitUrl']}?size={len(data) - 1}")
    assert wrong.status_code == 400 and str(len(data)) in wrong.json()["message"]
    assert httpx.get(session["statusUrl"]).json()["status"] == "open"
    assert httpx.post(f"{session['commitUrl']}?size={len(data)}", timeout=120).status_code == 200


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


def _wait_for(session: dict, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while (status := httpx.get(session["statusUrl"], timeout=30).json())["status"] in ("open", "ingesting"):
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    return status


def _frames_of(server: Server, slide: SlideFile) -> list[bytes]:
    """Every frame of ``slide`` as the service serves it, 500 per request."""
    url = f"{server.base_url}/studies/{slide.study_uid}/series/{slide.series_uid}/instances/{slide.sop_uid}/frames/"
    count = len(source_frames(slide.path))
    served = []
    for first in range(1, count + 1, 500):
        numbers = ",".join(map(str, range(first, min(first + 500, count + 1))))
        response = httpx.get(url + numbers, headers={"accept": OCTET_ANY}, timeout=60)
        assert response.status_code == 200, response.text
        served += [body for _, body in parse_multipart(response)]
    return served


def _record(path: Path) -> FrameIndex:
    from dicomweb.dicom.part10 import frame_record

    raw = frame_record(path)
    assert raw is not None
    return FrameIndex.from_bytes(raw)


def test_the_clients_sas_cannot_change_a_stored_instance(uploads_server: Server, tmp_path: Path) -> None:
    """After the commit the client writes and commits new blocks through its still-valid SAS: the service
    goes on serving the stored bytes, because the stored file is a copy the SAS cannot reach."""
    slide = make_large_instance(tmp_path / "large.dcm", frames=300, frame_bytes=20000)
    data = slide.path.read_bytes()
    session = _open(uploads_server, len(data))
    _put(session, data)
    committed = httpx.post(session["commitUrl"], content=_record(slide.path).to_bytes(), timeout=120)
    assert committed.status_code == 200, committed.text
    env = uploads_server.env
    (name,) = blob_names(env, env["DICOMWEB_INSTANCE_CONTAINER"], slide.study_uid)
    stored = blob_service(env).get_blob_client(env["DICOMWEB_INSTANCE_CONTAINER"], name)
    before = stored.get_blob_properties()
    assert before.size == len(data) and stored.download_blob().readall()[132:] == data[132:]
    # The client's SAS still works, on the staging blob it names, and nothing else.
    evil = b"\xff" * session["blockSize"]
    put = httpx.put(f"{session['uploadUrl']}&comp=block&blockid={session['blocks'][0]['id']}", content=evil)
    assert put.status_code == 201
    block_list = f'<?xml version="1.0" encoding="utf-8"?><BlockList><Latest>{session["blocks"][0]["id"]}</Latest></BlockList>'
    assert httpx.put(f"{session['uploadUrl']}&comp=blocklist", content=block_list).status_code == 201
    staged = blob_service(env).get_blob_client(env["DICOMWEB_STAGING_CONTAINER"], f"data/{session['id']}.dcm")
    assert staged.download_blob().readall() == evil
    assert stored.get_blob_properties().etag == before.etag
    assert _frames_of(uploads_server, slide) == source_frames(slide.path)
    status = httpx.get(session["statusUrl"]).json()
    assert status["status"] == "stored" and "uploadUrl" not in status
    assert httpx.post(session["commitUrl"], timeout=60).json()["00081199"]  # the result, not a new ingest


def test_a_wrong_record_is_refused_at_commit_and_stores_nothing(uploads_server: Server, tmp_path: Path) -> None:
    slide = make_large_instance(tmp_path / "large.dcm", frames=300, frame_bytes=20000)
    data = slide.path.read_bytes()
    good = _record(slide.path)
    wrong_count = FrameIndex(good.transfer_syntax, "", good.offsets[:-1], good.lengths[:-1], good.fragments[:-1])
    shifted = FrameIndex(good.transfer_syntax, "", array("Q", (o + 8 for o in good.offsets)), good.lengths,
                         good.fragments)
    for record in (wrong_count, shifted):
        session = _open(uploads_server, len(data))
        _put(session, data)
        answer = httpx.post(session["commitUrl"], content=record.to_bytes(), timeout=120)
        assert answer.status_code == 409, answer.text
        assert _reasons(answer.json()) == [43264] and "frame offset record" in answer.headers["warning"]
        assert _nothing_stored(uploads_server, slide.study_uid) and f"data/{session['id']}.dcm" not in \
            _staged_data(uploads_server)
    garbage = _open(uploads_server, len(data))
    _put(garbage, data)
    refused = httpx.post(garbage["commitUrl"], content=b"not a record", timeout=60)
    assert refused.status_code == 400 and httpx.get(garbage["statusUrl"]).json()["status"] == "open"


def test_a_record_wrong_where_no_sample_looked_is_refused_at_read_then_rebuilt(uploads_server: Server,
                                                                               tmp_path: Path) -> None:
    """Frame 150 of the record is 4 bytes short (where the Basic Offset Table puts it, so it passes the
    commit's checks, and no sampled frame): reading it answers 503, never wrong bytes, and the rescan job
    rebuilds the record."""
    slide = make_large_instance(tmp_path / "large.dcm", frames=300, frame_bytes=20000)
    data = slide.path.read_bytes()
    good = _record(slide.path)
    number = 150
    assert number not in sample(good, uploads.SAMPLED_FRAMES)
    offsets, lengths = array("Q", good.offsets), array("I", good.lengths)
    lengths[number - 1] -= 4
    session = _open(uploads_server, len(data))
    _put(session, data)
    answer = httpx.post(session["commitUrl"], content=FrameIndex(good.transfer_syntax, "", offsets, lengths,
                                                                 good.fragments).to_bytes(), timeout=120)
    assert answer.status_code == 200, answer.text
    url = (f"{uploads_server.base_url}/studies/{slide.study_uid}/series/{slide.series_uid}/instances/"
           f"{slide.sop_uid}/frames/")
    expected = source_frames(slide.path)
    assert httpx.get(url + "1", headers={"accept": "image/jpeg"}).content == expected[0]
    refused = httpx.get(url + str(number), headers={"accept": "image/jpeg"})
    assert refused.status_code == 503 and "frame offset record" in refused.json()["message"]
    assert refused.headers["retry-after"] == "30"
    deadline = time.monotonic() + 60
    while (served := httpx.get(url + str(number), headers={"accept": "image/jpeg"})).status_code != 200:
        assert served.status_code == 503 and time.monotonic() < deadline
        time.sleep(0.2)
    assert served.content == expected[number - 1]
    assert _frames_of(uploads_server, slide) == expected


def test_a_blob_the_azure_sdk_committed_without_a_record_is_scanned_byte_exact(uploads_server: Server,
                                                                                tmp_path: Path) -> None:
    """In blocks of the SDK's own ids, and (a smaller one) in one Put Blob; both with a preamble to zero."""
    for frames, single_put in ((2000, 4 * 1024 * 1024), (200, 64 * 1024 * 1024)):
        slide = make_large_instance(tmp_path / f"{frames}.dcm", frames=frames, frame_bytes=30000)
        data = b"\x01" * 128 + slide.path.read_bytes()[128:]
        session = _open(uploads_server, len(data))
        BlobClient.from_blob_url(session["uploadUrl"], max_block_size=4 * 1024 * 1024,
                                 max_single_put_size=single_put).upload_blob(data, max_concurrency=4)
        response = _commit(session)
        assert response.status_code == 200, response.text
        assert _frames_of(uploads_server, slide) == source_frames(slide.path)
        env = uploads_server.env
        (name,) = blob_names(env, env["DICOMWEB_INSTANCE_CONTAINER"], slide.study_uid)
        stored = blob_service(env).get_blob_client(env["DICOMWEB_INSTANCE_CONTAINER"], name).download_blob()
        assert stored.readall() == bytes(128) + data[128:]


def test_four_uploads_ingest_at_once(uploads_server: Server, tmp_path: Path) -> None:
    slides = [make_large_instance(tmp_path / f"{n}.dcm", frames=2500, frame_bytes=30000) for n in range(4)]
    sessions = []
    for slide in slides:
        session = _open(uploads_server, slide.path.stat().st_size)
        _put(session, slide.path.read_bytes())
        sessions.append(session)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(_commit, sessions))  # no records: four scans
    assert [a.status_code for a in answers] == [200] * 4
    log = uploads_server.log.read_text()
    moments = {}
    for line in log.splitlines():
        for session in sessions:
            if f"upload {session['id']}: ingest " in line:
                moments.setdefault(session["id"], []).append(line[:23])
    starts = [times[0] for times in moments.values()]
    ends = [times[-1] for times in moments.values()]
    assert len(moments) == 4 and max(starts) < min(ends), moments


def test_a_scan_killed_with_the_service_is_delivered_again_and_stored_once(emulators: dict[str, str],
                                                                           tmp_path: Path) -> None:
    settings = fresh_settings(emulators)
    slide = make_large_instance(tmp_path / "large.dcm", frames=10000, frame_bytes=40000)
    data = slide.path.read_bytes()
    first = start_server(settings, tmp_path, DICOMWEB_COMMIT_WAIT_SECONDS="1")
    try:
        session = _open(first, len(data))
        _put(session, data)
        assert _commit(session).status_code == 202
        deadline = time.monotonic() + 30
        while ": ingest starts" not in first.log.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        first.process.kill()
        first.process.wait()
    assert ": ingest ends" not in first.log.read_text()
    second = start_server(settings, tmp_path)
    try:
        status = _wait_for({**session, "statusUrl": session["statusUrl"].replace(first.base_url, second.base_url)})
        assert status["status"] == "stored", status
        assert "(delivery 2)" in second.log.read_text()
        env = second.env
        assert len(blob_names(env, env["DICOMWEB_INSTANCE_CONTAINER"], slide.study_uid)) == 1
        found = httpx.get(f"{second.base_url}/studies/{slide.study_uid}/instances").json()
        assert [i["00080018"]["Value"] for i in found] == [[slide.sop_uid]]
        feed = httpx.get(f"{second.base_url}/changefeed", params={"includemetadata": "false"}).json()
        assert [(e["Action"], e["SopInstanceUid"]) for e in feed] == [("create", slide.sop_uid)]
        assert _frames_of(second, slide)[::997] == source_frames(slide.path)[::997]
    finally:
        second.stop()


def test_an_ingest_failing_every_delivery_is_poisoned_and_says_why(emulators: dict[str, str],
                                                                   tmp_path: Path) -> None:
    """The instance container vanishes (a storage mishap): every delivery fails, the fifth goes to the
    poison queue, and the session says failed with the reason; the staged blob is not left behind."""
    settings = fresh_settings(emulators)
    server = start_server(settings, tmp_path, DICOMWEB_COMMIT_WAIT_SECONDS="1")
    try:
        volume = make_slide(tmp_path / "slide", levels=1, associated=False, base_size=(1024, 1024))[0]
        data = volume.path.read_bytes()
        session = _open(server, len(data))
        _put(session, data)
        blob_service(settings).delete_container(settings["DICOMWEB_INSTANCE_CONTAINER"])
        assert _commit(session).status_code == 202
        status = _wait_for(session, 90)
        assert status["status"] == "failed" and status["result"]["status"] == 503
        assert "failed 5 times" in status["result"]["warning"]
        log = server.log.read_text()
        assert all(f"(delivery {n})" in log for n in range(1, 6))
        queue = QueueClient.from_connection_string(settings["DICOMWEB_QUEUES"], settings["DICOMWEB_JOBS_QUEUE"]
                                                   + "-poison")
        deadline = time.monotonic() + 10
        while not (poisoned := queue.peek_messages(max_messages=32)):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert [json.loads(m.content)["session"] for m in poisoned] == [session["id"]]
        assert f"data/{session['id']}.dcm" not in _staged_data(server)
        assert httpx.get(f"{server.base_url}/studies/{volume.study_uid}/instances").json() == []
    finally:
        server.stop()


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


@pytest.mark.parametrize("with_record", [False, True], ids=["scanned", "client-record"])
def test_a_pixel_bomb_is_refused_at_ingest_and_stores_nothing(uploads_server: Server, tmp_path: Path,
                                                               with_record: bool) -> None:
    """A 256×256 instance whose JPEG frame header claims 30000×30000: refused whether the ingest scans the blob
    (the walk's kept bytes) or checks a sample of the client's record (the frames it reads)."""
    bomb = make_bomb(tmp_path, JPEGBaseline8Bit)
    data = bomb.path.read_bytes()
    session = _open(uploads_server, len(data))
    _put(session, data)
    answer = httpx.post(session["commitUrl"], content=_record(bomb.path).to_bytes() if with_record else b"",
                        timeout=120)
    assert answer.status_code == 409, answer.text
    assert _reasons(answer.json()) == [43264]
    assert "frame 1 is not the image the instance describes" in answer.headers["warning"]
    assert "30000\\xd730000 pixels" in answer.headers["warning"]
    assert _nothing_stored(uploads_server, bomb.study_uid) and f"data/{session['id']}.dcm" not in \
        _staged_data(uploads_server)
    assert httpx.get(session["statusUrl"]).json()["status"] == "failed"
