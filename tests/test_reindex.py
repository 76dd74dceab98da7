"""Blob is the system of record: ``serve`` and ``dicomweb reindex`` rebuild the Cosmos index from it."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from dicomweb.local.provision import provision
from dicomweb.storage.naming import new_generation
from tests.conftest import (
    ROOT,
    blob_names,
    blob_service,
    fresh_settings,
    instance_blob,
    source_frames,
    start_server,
)
from tests.wsi_factory import copy_instance, make_slide


def test_serve_reindexes_an_empty_index_and_reindex_repairs_sidecars(emulators: dict[str, str],
                                                                      tmp_path: Path) -> None:
    settings = fresh_settings(emulators)
    files = make_slide(tmp_path / "slide", levels=2, base_size=(600, 400))
    first = start_server(settings, tmp_path)
    try:
        for file in files:
            response = httpx.post(f"{first.base_url}/studies", content=file.path.read_bytes(),
                                  headers={"content-type": "application/dicom"})
            assert response.status_code == 200
    finally:
        first.stop()
    study, series, volume = files[0].study_uid, files[0].series_uid, files[0].sop_uid
    sidecars = blob_service(settings).get_container_client(settings["DICOMWEB_SIDECAR_CONTAINER"])
    stem = instance_blob(settings, study, series, volume).removesuffix(".dcm")
    sidecars.delete_blob(f"{stem}.json")
    sidecars.delete_blob(f"{stem}.frames")
    orphan = f"{study}/{series}/1.2.3/0123456789abcd000000000000.json"
    sidecars.upload_blob(orphan, b"{}")

    # A new Cosmos database is an empty index over existing blobs, as after a restart of the local server.
    settings["DICOMWEB_COSMOS_DATABASE"] = f"db-{uuid.uuid4().hex[:8]}"
    provision(settings, index_only=True)  # as the local stack does after that restart
    second = start_server(settings, tmp_path)
    try:
        log = next(tmp_path.glob(f"serve-{second.base_url.split(':')[2].split('/')[0]}.log")).read_text()
        assert f"reindexed {len(files)} instances from Blob (1 sidecars rebuilt)" in log
        metadata = httpx.get(f"{second.base_url}/studies/{study}/metadata")
        assert metadata.status_code == 200
        assert {d["00080018"]["Value"][0] for d in metadata.json()} == {f.sop_uid for f in files}
        frame = httpx.get(f"{second.base_url}/studies/{study}/series/{series}/instances/{volume}/frames/3",
                          headers={"accept": "image/jpeg"})
        assert frame.content == source_frames(files[0].path)[2]
    finally:
        second.stop()
    assert orphan not in blob_names(settings, settings["DICOMWEB_SIDECAR_CONTAINER"], study)


def test_reindex_leaves_an_unnamed_generation_to_its_writer_then_removes_it(emulators: dict[str, str],
                                                                            tmp_path: Path) -> None:
    """A replacement that died after committing its file, before claiming it (its client was told it failed): an
    online reindex leaves it to its writer, which may still claim it; once nothing is in flight it goes, and the
    generation the claim names stays what is served."""
    settings = fresh_settings(emulators)
    stored = make_slide(tmp_path / "slide", levels=1, base_size=(512, 512), associated=False)[0]
    newer = copy_instance(stored, tmp_path / "newer.dcm", sop_uid=stored.sop_uid, variant=3)
    server = start_server(settings, tmp_path)
    try:
        assert httpx.post(f"{server.base_url}/studies", content=stored.path.read_bytes(),
                          headers={"content-type": "application/dicom"}).status_code == 200
        url = f"{server.base_url}/studies/{stored.study_uid}/series/{stored.series_uid}/instances/{stored.sop_uid}"
        kept = instance_blob(settings, stored.study_uid, stored.series_uid, stored.sop_uid)
        orphan = f"{kept.rsplit('/', 1)[0]}/{new_generation()}.dcm"
        blob_service(settings).get_blob_client(settings["DICOMWEB_INSTANCE_CONTAINER"], orphan).upload_blob(
            newer.path.read_bytes())
        online = subprocess.run([sys.executable, "-m", "dicomweb", "reindex"], cwd=ROOT, env=server.env,
                                capture_output=True, text=True, timeout=120)
        assert online.returncode == 0, online.stderr
        assert "left 1 generations to writers still at work" in online.stdout, online.stdout
        assert orphan in blob_names(settings, settings["DICOMWEB_INSTANCE_CONTAINER"], stored.study_uid)
        offline = subprocess.run([sys.executable, "-m", "dicomweb", "reindex", "--offline"], cwd=ROOT,
                                 env=server.env, capture_output=True, text=True, timeout=120)
        assert offline.returncode == 0, offline.stderr
        assert "removed 1 unnamed generations" in offline.stdout, offline.stdout
        assert instance_blob(settings, stored.study_uid, stored.series_uid, stored.sop_uid) == kept
        frame = httpx.get(f"{url}/frames/2", headers={"accept": "image/jpeg"})
        assert frame.content == source_frames(stored.path)[1]
        feed = httpx.get(f"{server.base_url}/changefeed").json()
        assert [(e["Action"], e["State"]) for e in feed if e["SopInstanceUid"] == stored.sop_uid] == [
            ("create", "current")]
        (study,) = httpx.get(f"{server.base_url}/studies?StudyInstanceUID={stored.study_uid}").json()
        assert study["00201208"]["Value"] == [1]
    finally:
        server.stop()


def test_reindex_fans_out_one_job_per_study_and_shows_progress(emulators: dict[str, str], tmp_path: Path) -> None:
    """Every sidecar is lost: ``dicomweb reindex`` sends a job per study, the running service's queue trigger
    rebuilds them, and the command follows them to the end with a progress bar."""
    settings = fresh_settings(emulators)
    slides = [make_slide(tmp_path / f"s{n}", levels=1, base_size=(256, 256), associated=False)[0] for n in range(6)]
    server = start_server(settings, tmp_path)
    try:
        for slide in slides:
            assert httpx.post(f"{server.base_url}/studies", content=slide.path.read_bytes(),
                              headers={"content-type": "application/dicom"}).status_code == 200
        sidecars = blob_service(settings).get_container_client(settings["DICOMWEB_SIDECAR_CONTAINER"])
        for blob in list(sidecars.list_blobs()):
            sidecars.delete_blob(blob.name)
        done = subprocess.run([sys.executable, "-m", "dicomweb", "reindex"], cwd=ROOT, env=server.env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert f"{len(slides)} studies sent to the job queue {settings['DICOMWEB_JOBS_QUEUE']}" in done.stdout
        assert f"{len(slides)}/{len(slides)}" in done.stderr
        assert f"indexed {len(slides)} instances, rebuilt {len(slides)} sidecars" in done.stdout
        assert len(list(sidecars.list_blobs())) == 2 * len(slides)
        for slide in slides:
            url = f"{server.base_url}/studies/{slide.study_uid}/series/{slide.series_uid}/instances/{slide.sop_uid}"
            assert httpx.get(f"{url}/metadata").status_code == 200
        assert "queue function jobs failed" not in server.log.read_text()
    finally:
        server.stop()


def test_the_reindex_operation_leaves_a_move_in_flight_and_keeps_what_the_claim_names(
        emulators: dict[str, str], tmp_path: Path) -> None:
    """A copy of an instance in another study that no claim names (a PUT moving it, not published yet): the
    operation's partitions run as separate jobs, leave it to its writer, and the index keeps the claimed one."""
    settings = fresh_settings(emulators)
    first = make_slide(tmp_path / "a", levels=1, base_size=(256, 256), associated=False)[0]
    moved = copy_instance(first, tmp_path / "moved.dcm", sop_uid=first.sop_uid, study_uid="1.2.3.4.5.6.7")
    server = start_server(settings, tmp_path)
    try:
        assert httpx.post(f"{server.base_url}/studies", content=first.path.read_bytes(),
                          headers={"content-type": "application/dicom"}).status_code == 200
        container = blob_service(settings).get_container_client(settings["DICOMWEB_INSTANCE_CONTAINER"])
        name = f"{moved.study_uid}/{moved.series_uid}/{moved.sop_uid}/{new_generation()}.dcm"
        container.get_blob_client(name).upload_blob(moved.path.read_bytes())
        started = httpx.post(f"{server.base_url}/operations/reindex")
        assert started.status_code == 202 and started.headers["location"] == started.json()["statusUrl"]
        assert started.json()["partitions"] >= 2
        deadline = time.monotonic() + 120
        while (status := httpx.get(started.headers["location"]).json())["status"] != "finished":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert (status["report"]["indexed"], status["report"]["in_flight"]) == (1, 1), status
        (found,) = httpx.get(f"{server.base_url}/studies/{first.study_uid}/instances").json()
        assert found["00080018"]["Value"] == [first.sop_uid]
        assert httpx.get(f"{server.base_url}/studies/{moved.study_uid}/instances").json() == []
        assert name in [b.name for b in container.list_blobs(name_starts_with=moved.study_uid)]
        assert httpx.get(f"{server.base_url}/operations/reindex/nosuchrun").status_code == 404
    finally:
        server.stop()


def test_reindex_leaves_a_file_the_index_cannot_take_and_indexes_the_rest(emulators: dict[str, str],
                                                                          tmp_path: Path) -> None:
    """A file stored before a limit it breaks (attributes beyond what a Cosmos item holds) stops nothing: the
    others of its study are indexed, it is named in the log, and the command exits 1."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    from dicomweb import records

    settings = fresh_settings(emulators)
    files = make_slide(tmp_path / "slide", levels=2, base_size=(512, 512), associated=False,
                       transfer_syntax=ExplicitVRLittleEndian)
    ds = pydicom.dcmread(files[1].path)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian  # each value has a 32-bit length
    ds.StudyDescription = "x" * records.MAX_INDEX_BYTES
    big = tmp_path / "big.dcm"
    ds.save_as(big, implicit_vr=True, little_endian=True)
    instances = blob_service(settings).get_container_client(settings["DICOMWEB_INSTANCE_CONTAINER"])
    for file, path in ((files[0], files[0].path), (files[1], big)):
        instances.upload_blob(f"{file.study_uid}/{file.series_uid}/{file.sop_uid}/{new_generation()}.dcm",
                              path.read_bytes())
    server = start_server(settings, tmp_path)
    try:
        done = subprocess.run([sys.executable, "-m", "dicomweb", "reindex", "--here", "--offline"], cwd=ROOT,
                              env=server.env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and "1 files cannot be indexed" in done.stderr, done.stdout + done.stderr
        assert "indexed 1 instances" in done.stdout
        assert f"{files[1].sop_uid} (generation" in server.log.read_text(), "serve's reindex at start named it"
        found = httpx.get(f"{server.base_url}/studies/{files[0].study_uid}/instances").json()
        assert [d["00080018"]["Value"][0] for d in found] == [files[0].sop_uid]
    finally:
        server.stop()
