"""Blob is the system of record: ``serve`` and ``dicomweb reindex`` rebuild the Cosmos index from it."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx

from tests.conftest import blob_names, blob_service, fresh_settings, instance_blob, source_frames, start_server
from tests.wsi_factory import make_slide


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
