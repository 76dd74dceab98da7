"""DELETE, PUT upsert and the change feed against the running service."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pydicom
import pytest
from azure.storage.queue import QueueClient

from tests.conftest import (
    ROOT,
    Server,
    blob_names,
    blob_service,
    fresh_settings,
    instance_blob,
    interrupt_deletion,
    source_frames,
    start_server,
)
from tests.wsi_factory import SlideFile, make_slide

INSTANCES, SIDECARS = "dicom-instances", "dicom-sidecars"


@pytest.fixture(scope="module")
def own_server(emulators: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A service with an index and change feed of its own."""
    server = start_server(fresh_settings(emulators), tmp_path_factory.mktemp("manage"))
    yield server
    server.stop()


def _store(server: Server, files: list[SlideFile], method: str = "POST") -> httpx.Response:
    boundary = "manage-boundary"
    body = b"".join(b"\r\n--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + f.path.read_bytes()
                    for f in files) + b"\r\n--" + boundary.encode() + b"--\r\n"
    return httpx.request(method, f"{server.base_url}/studies", content=body, timeout=60, headers={
        "content-type": f'multipart/related; type="application/dicom"; boundary={boundary}'})


def _blobs(server: Server, study: str) -> list[str]:
    container, sidecars = (server.env.get("DICOMWEB_INSTANCE_CONTAINER", INSTANCES),
                           server.env.get("DICOMWEB_SIDECAR_CONTAINER", SIDECARS))
    return blob_names(server.env, container, study) + blob_names(server.env, sidecars, study)


def _search(server: Server, path: str) -> list[dict]:
    response = httpx.get(f"{server.base_url}/{path}")
    assert response.status_code == 200
    return response.json()


def test_delete_instance_series_and_study(own_server: Server, tmp_path: Path) -> None:
    files = make_slide(tmp_path / "a", levels=2, base_size=(600, 400))
    sibling = make_slide(tmp_path / "b", levels=1, base_size=(300, 300), associated=False)
    assert _store(own_server, files).status_code == 200
    assert _store(own_server, sibling).status_code == 200
    study, series = files[0].study_uid, files[0].series_uid
    base = f"{own_server.base_url}/studies/{study}"
    label = files[2]
    assert httpx.delete(f"{base}/series/{series}/instances/{label.sop_uid}").status_code == 204
    assert httpx.get(f"{base}/series/{series}/instances/{label.sop_uid}/metadata").status_code == 404
    assert httpx.delete(f"{base}/series/{series}/instances/{label.sop_uid}").status_code == 404
    (summary,) = _search(own_server, f"studies?StudyInstanceUID={study}")
    assert summary["00201208"]["Value"] == [len(files) - 1]
    assert len(_blobs(own_server, study)) == 3 * (len(files) - 1)  # .dcm, .json and .frames each
    assert httpx.delete(f"{base}/series/{series}").status_code == 204
    assert _search(own_server, f"studies?StudyInstanceUID={study}") == []
    assert _blobs(own_server, study) == []
    assert httpx.get(f"{base}/series/{series}/instances/{files[0].sop_uid}/frames/1").status_code == 404
    assert httpx.delete(base).status_code == 404
    kept = sibling[0]
    frame = httpx.get(f"{own_server.base_url}/studies/{kept.study_uid}/series/{kept.series_uid}/instances/"
                      f"{kept.sop_uid}/frames/1", headers={"accept": "image/jpeg"})
    assert frame.content == source_frames(kept.path)[0], "siblings are untouched"


def test_a_deleted_study_can_be_stored_again(own_server: Server, tmp_path: Path) -> None:
    files = make_slide(tmp_path, levels=1, base_size=(300, 300))
    assert _store(own_server, files).status_code == 200
    volume = files[0]
    url = f"{own_server.base_url}/studies/{volume.study_uid}/series/{volume.series_uid}/instances/{volume.sop_uid}"
    assert httpx.get(f"{url}/frames/1", headers={"accept": "image/jpeg"}).status_code == 200
    assert httpx.delete(f"{own_server.base_url}/studies/{volume.study_uid}").status_code == 204
    assert httpx.get(f"{url}/frames/1", headers={"accept": "image/jpeg"}).status_code == 404, "no frame from a cache"
    assert _store(own_server, files).status_code == 200
    assert httpx.get(f"{url}/frames/1", headers={"accept": "image/jpeg"}).content == source_frames(volume.path)[0]


def test_put_replaces_while_post_refuses(own_server: Server, tmp_path: Path) -> None:
    files = make_slide(tmp_path / "old", levels=1, base_size=(512, 512), associated=False)
    volume = files[0]
    assert _store(own_server, files).status_code == 200
    url = f"{own_server.base_url}/studies/{volume.study_uid}/series/{volume.series_uid}/instances/{volume.sop_uid}"
    old_frame = httpx.get(f"{url}/frames/1", headers={"accept": "image/jpeg"}).content
    changed = pydicom.dcmread(volume.path)
    changed.ContainerIdentifier = "SLIDE-REPLACED"
    other = make_slide(tmp_path / "other", levels=1, base_size=(512, 512), associated=False)[0]
    changed.PixelData = pydicom.encaps.encapsulate(source_frames(other.path))
    replacement = tmp_path / "new.dcm"
    changed.save_as(replacement, enforce_file_format=True)
    new = SlideFile(replacement, volume.study_uid, volume.series_uid, volume.sop_uid, volume.image_type,
                    volume.transfer_syntax, volume.number_of_frames, "bot", 1)
    refused = _store(own_server, [new])
    assert refused.status_code == 409
    assert refused.json()["00081198"]["Value"][0]["00081197"]["Value"] == [45070]
    assert httpx.get(f"{url}/frames/1", headers={"accept": "image/jpeg"}).content == old_frame
    assert _store(own_server, [new], method="PUT").status_code == 200
    assert httpx.get(f"{url}/frames/1", headers={"accept": "image/jpeg"}).content == source_frames(replacement)[0]
    (metadata,) = httpx.get(f"{url}/metadata").json()
    assert metadata["00400512"]["Value"] == ["SLIDE-REPLACED"]
    (found,) = _search(own_server, "instances?ContainerIdentifier=SLIDE-REPLACED")
    assert found["00080018"]["Value"] == [volume.sop_uid]
    stored = blob_service(own_server.env).get_blob_client(
        own_server.env["DICOMWEB_INSTANCE_CONTAINER"],
        instance_blob(own_server.env, volume.study_uid, volume.series_uid, volume.sop_uid))
    assert pydicom.dcmread(io.BytesIO(stored.download_blob().readall())).ContainerIdentifier == "SLIDE-REPLACED"


def test_change_feed_records_create_update_delete_in_order(own_server: Server, tmp_path: Path) -> None:
    before = httpx.get(f"{own_server.base_url}/changefeed/latest").json()
    start = before.get("Sequence", 0)
    files = make_slide(tmp_path, levels=1, base_size=(300, 300), associated=False)
    volume = files[0]
    assert _store(own_server, files).status_code == 200
    assert _store(own_server, files, method="PUT").status_code == 200

    def mine() -> list[tuple[str, str]]:
        feed = httpx.get(f"{own_server.base_url}/changefeed?offset={start}&limit=200").json()
        assert isinstance(feed, list), feed
        return [(e["Action"], e["State"]) for e in feed if e["SopInstanceUid"] == volume.sop_uid]

    assert mine() == [("create", "replaced"), ("update", "current")]
    assert httpx.delete(f"{own_server.base_url}/studies/{volume.study_uid}").status_code == 204
    assert mine() == [("create", "deleted"), ("update", "deleted"), ("delete", "deleted")]
    feed = httpx.get(f"{own_server.base_url}/changefeed?offset={start}&limit=200").json()
    sequences = [e["Sequence"] for e in feed]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    assert sequences[0] == start + 1
    latest = httpx.get(f"{own_server.base_url}/changefeed/latest").json()
    assert latest["Sequence"] == sequences[-1] and latest["Action"] == "delete"


def test_change_feed_metadata_time_window_and_paging(own_server: Server, tmp_path: Path) -> None:
    files = make_slide(tmp_path, levels=1, base_size=(300, 300), associated=False)
    latest = httpx.get(f"{own_server.base_url}/changefeed/latest").json()
    assert _store(own_server, files).status_code == 200
    after = latest["Timestamp"].replace("+00:00", "Z")
    newer = httpx.get(f"{own_server.base_url}/changefeed", params={"startTime": after}).json()
    assert newer[0]["Sequence"] == latest["Sequence"]
    (entry,) = [e for e in newer if e["SopInstanceUid"] == files[0].sop_uid]
    assert entry["State"] == "current"
    assert entry["Metadata"]["00080018"]["Value"] == [files[0].sop_uid]
    bare = httpx.get(f"{own_server.base_url}/changefeed", params={"startTime": after, "includeMetadata": "false"})
    assert all("Metadata" not in e for e in bare.json())
    everything = httpx.get(f"{own_server.base_url}/changefeed?limit=200").json()
    paged: list[dict] = []
    while page := httpx.get(f"{own_server.base_url}/changefeed",
                            params={"offset": paged[-1]["Sequence"] if paged else 0, "limit": 3}).json():
        paged += page
    assert [e["Sequence"] for e in paged] == [e["Sequence"] for e in everything]
    for bad in ("startTime=yesterday", "limit=0", "limit=201", "offset=-1", "includeMetadata=maybe"):
        response = httpx.get(f"{own_server.base_url}/changefeed?{bad}")
        assert response.status_code == 400, bad
        assert bad.split("=")[0] in response.json()["message"]


def test_an_interrupted_delete_is_finished_by_reindex(emulators: dict[str, str], tmp_path: Path) -> None:
    settings = fresh_settings(emulators)
    server = start_server(settings, tmp_path)
    files = make_slide(tmp_path / "slide", levels=1, base_size=(300, 300), associated=False)
    volume = files[0]
    try:
        assert _store(server, files).status_code == 200
    finally:
        server.stop()
    interrupt_deletion(settings, volume.study_uid, volume.series_uid, volume.sop_uid, at="file")
    done = subprocess.run([sys.executable, "-m", "dicomweb", "reindex", "--here"], cwd=ROOT, env=server.env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "finished 1 interrupted stores and deletions" in done.stdout, "a deleting claim is never in flight"
    assert _blobs(server, volume.study_uid) == []
    server = start_server(settings, tmp_path)
    try:
        assert httpx.get(f"{server.base_url}/studies/{volume.study_uid}/metadata").status_code == 404
        assert _search(server, f"studies?StudyInstanceUID={volume.study_uid}") == []
        feed = httpx.get(f"{server.base_url}/changefeed").json()
        assert [(e["Action"], e["State"]) for e in feed if e["SopInstanceUid"] == volume.sop_uid] == [
            ("create", "deleted"), ("delete", "deleted")], "the deletion is recorded once"
    finally:
        server.stop()


def test_a_study_whose_instance_is_archived_is_deleted(own_server: Server, tmp_path: Path) -> None:
    """Azure refuses Set Blob Metadata, Properties and Tags… on an Archive blob (409 BlobArchived, as the local
    stack does): a deletion writes nothing to its blobs, only to the claim, so every tier can be deleted."""
    volume, label = make_slide(tmp_path, levels=1, base_size=(300, 300), associated=True)[:2]
    assert _store(own_server, [volume, label]).status_code == 200
    env = own_server.env
    blob = blob_service(env).get_blob_client(env["DICOMWEB_INSTANCE_CONTAINER"],
                                             instance_blob(env, volume.study_uid, volume.series_uid, volume.sop_uid))
    blob.set_standard_blob_tier("Archive")
    study = f"{own_server.base_url}/studies/{volume.study_uid}"
    assert httpx.delete(study).status_code == 204
    assert httpx.get(f"{study}/metadata").status_code == 404
    assert _blobs(own_server, volume.study_uid) == []
    assert _search(own_server, f"studies?StudyInstanceUID={volume.study_uid}") == []


def test_delete_with_invalid_uid(own_server: Server) -> None:
    assert httpx.delete(f"{own_server.base_url}/studies/1.2.abc").status_code == 400


def test_a_repeated_delete_finishes_one_that_died_half_way(own_server: Server, tmp_path: Path) -> None:
    """A DELETE that answered 503 after taking the instance out of the index left its file behind: the
    client's retry finds the deletion on the claim and finishes it, instead of answering 404."""
    files = make_slide(tmp_path / "slide", levels=1, base_size=(300, 300), associated=False)
    volume = files[0]
    assert _store(own_server, files).status_code == 200
    interrupt_deletion(own_server.env, volume.study_uid, volume.series_uid, volume.sop_uid, at="file")
    assert _blobs(own_server, volume.study_uid), "the file outlived the failed DELETE"
    url = f"{own_server.base_url}/studies/{volume.study_uid}/series/{volume.series_uid}/instances/{volume.sop_uid}"
    assert httpx.get(f"{url}/metadata").status_code == 404
    assert httpx.delete(url).status_code == 204
    assert _blobs(own_server, volume.study_uid) == []
    assert httpx.delete(url).status_code == 404


def test_a_settle_job_ends_a_deletion_that_failed_half_way(own_server: Server, tmp_path: Path) -> None:
    """What a DELETE that failed after its claim turned ``deleting`` sends (dicomweb.generations.defer): the
    service's queue trigger finishes the deletion and records it as the principal who asked; the same job for
    an instance nobody is deleting changes nothing."""
    files = make_slide(tmp_path / "slide", levels=2, base_size=(600, 600), associated=False)
    doomed, kept = files[0], files[1]
    assert _store(own_server, files).status_code == 200
    env = own_server.env
    names = {v.sop_uid: instance_blob(env, v.study_uid, v.series_uid, v.sop_uid) for v in (doomed, kept)}
    interrupt_deletion(env, doomed.study_uid, doomed.series_uid, doomed.sop_uid, at="index")
    url = f"{own_server.base_url}/studies/{doomed.study_uid}/series/{doomed.series_uid}/instances/"
    assert httpx.get(f"{url}{doomed.sop_uid}/metadata").status_code == 200, "the index was not reached"
    jobs = QueueClient.from_connection_string(env["DICOMWEB_QUEUES"], env["DICOMWEB_JOBS_QUEUE"])
    for volume in (doomed, kept):
        jobs.send_message(json.dumps({"kind": "settle-generation", "actor": {"id": "oid-deleter"},
                                      "study": volume.study_uid, "series": volume.series_uid,
                                      "sop": volume.sop_uid,
                                      "generation": names[volume.sop_uid].rsplit("/", 1)[1][:-4]}))
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}{doomed.sop_uid}/metadata").status_code != 404:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1)
    assert httpx.get(f"{url}{kept.sop_uid}/metadata").status_code == 200
    assert [b for b in _blobs(own_server, doomed.study_uid) if doomed.sop_uid in b] == []
    feed = httpx.get(f"{own_server.base_url}/changefeed").json()
    deleted = [e for e in feed if e["SopInstanceUid"] == doomed.sop_uid and e["Action"] == "delete"]
    assert len(deleted) == 1 and deleted[0]["Principal"]["Id"] == "oid-deleter"
