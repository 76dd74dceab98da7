"""Archived slides end to end: availability in QIDO and metadata, refusals before any body, rehydration, and
archived slides that stay browsable, on a local stack whose rehydrations take :data:`REHYDRATE_SECONDS`.

Tiers are changed with the Blob SDK, as the lifecycle policy or an operator would; the index learns them
from the blob events the Azurite stand-in writes to the events queue, as Event Grid does in Azure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import httpx
import pytest

from dicomweb.local.emulators import Emulators
from tests.conftest import (Server, blob_service, fresh_settings, instance_blob, parse_multipart, source_frames,
                            start_server)
from tests.wsi_factory import SlideFile, make_slide

REHYDRATE_SECONDS = 8
ANY = "transfer-syntax=*"
T = TypeVar("T")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The service on emulators of its own, whose rehydrations stay pending for a few seconds."""
    stack = Emulators(tmp_path_factory.mktemp("archive-stack"), rehydrate_seconds=REHYDRATE_SECONDS)
    settings = stack.start()
    server = start_server(settings, tmp_path_factory.mktemp("archive-serve"))
    yield server
    server.stop()
    stack.stop()


def _store(server: Server, files: list[SlideFile], method: str = "POST") -> None:
    for file in files:
        response = httpx.request(method, f"{server.base_url}/studies", content=file.path.read_bytes(),
                                 headers={"content-type": "application/dicom"}, timeout=60)
        assert response.status_code == 200, response.text


def _blob(server: Server, file: SlideFile):  # noqa: ANN202 - a BlobClient
    name = instance_blob(server.env, file.study_uid, file.series_uid, file.sop_uid)
    return blob_service(server.env).get_blob_client("dicom-instances", name)


def _tier(server: Server, file: SlideFile, tier: str, priority: str | None = None) -> None:
    _blob(server, file).set_standard_blob_tier(tier, rehydrate_priority=priority)


def _url(server: Server, file: SlideFile, level: str = "instance") -> str:
    url = f"{server.base_url}/studies/{file.study_uid}"
    if level != "study":
        url += f"/series/{file.series_uid}"
    if level == "instance":
        url += f"/instances/{file.sop_uid}"
    return url


def _availability(server: Server, file: SlideFile, level: str = "instance") -> str:
    path = {"study": f"studies?StudyInstanceUID={file.study_uid}",
            "series": f"studies/{file.study_uid}/series?SeriesInstanceUID={file.series_uid}",
            "instance": f"studies/{file.study_uid}/series/{file.series_uid}/instances?SOPInstanceUID={file.sop_uid}"}
    (found,) = httpx.get(f"{server.base_url}/{path[level]}", timeout=30).json()
    return found["00080056"]["Value"][0]


def _eventually(check: Callable[[], T], want: T, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while (got := check()) != want:
        assert time.monotonic() < deadline, f"still {got!r}, not {want!r}"
        time.sleep(0.2)


def _refused(response: httpx.Response, status: int, rehydrate: str) -> None:
    """A refusal decided before any body: the status, DICOM JSON with a reason, the rehydration URL."""
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"] == "application/dicom+json"
    body = response.json()
    assert ("OFFLINE" if status == 409 else "NEARLINE") in body["00000902"]["Value"][0]
    assert body["rehydrate"] == rehydrate
    assert response.headers["link"] == f'<{rehydrate}>; rel="rehydrate"'
    assert rehydrate in response.headers["warning"]
    assert ("retry-after" in response.headers) == (status == 503)


def test_qido_and_metadata_tell_each_instance_s_availability(archive: Server, tmp_path: Path) -> None:
    files = make_slide(tmp_path, levels=4, base_size=(1024, 768))
    _store(archive, files)
    archived, rehydrating, cool, hot = files[:4]
    for file in (archived, rehydrating):
        _tier(archive, file, "Archive")
    _tier(archive, cool, "Cool")
    _eventually(lambda: _availability(archive, rehydrating), "OFFLINE")
    _tier(archive, rehydrating, "Hot", "High")
    _eventually(lambda: _availability(archive, rehydrating), "NEARLINE")
    assert [_availability(archive, f) for f in files] == ["OFFLINE", "NEARLINE"] + ["ONLINE"] * 5
    assert _availability(archive, archived, "series") == _availability(archive, archived, "study") == "OFFLINE"

    (instance,) = httpx.get(f"{_url(archive, archived)}/metadata").json()
    assert instance["00080056"] == {"vr": "CS", "Value": ["OFFLINE"]}
    series = httpx.get(f"{_url(archive, archived, 'series')}/metadata")
    listed = {item["00080018"]["Value"][0]: item["00080056"]["Value"][0] for item in series.json()}
    assert listed == {f.sop_uid: "ONLINE" for f in files[2:]}, "the offline levels are left out"
    warning = series.headers["warning"]
    assert archived.sop_uid in warning and rehydrating.sop_uid in warning
    assert f"{_url(archive, archived, 'series')}/rehydrate" in warning
    tag = series.headers["etag"]

    _eventually(lambda: _availability(archive, rehydrating), "ONLINE", REHYDRATE_SECONDS + 30)
    assert _availability(archive, archived, "series") == "OFFLINE"
    again = httpx.get(f"{_url(archive, archived, 'series')}/metadata", headers={"if-none-match": tag})
    assert again.status_code == 200 and len(again.json()) == 6, "the rehydrated level is listed again"


def test_every_retrieve_of_offline_bytes_is_refused_before_the_body(archive: Server, tmp_path: Path) -> None:
    files = make_slide(tmp_path, levels=3, base_size=(1024, 768))
    _store(archive, files)
    base = files[0]
    _tier(archive, base, "Archive")
    _eventually(lambda: _availability(archive, base), "OFFLINE")
    own, series, study = (f"{_url(archive, base, level)}/rehydrate" for level in ("instance", "series", "study"))
    single = {"accept": f"application/dicom; {ANY}"}
    many = {"accept": f'multipart/related; type="application/dicom"; {ANY}'}
    octets = {"accept": f'multipart/related; type="application/octet-stream"; {ANY}'}
    for path, headers, rehydrate in (("", single, own), ("", many, own), ("/frames/1", octets, own),
                                     ("/frames/1,2,3", octets, own), ("/bulkdata/7FE00010", octets, own),
                                     ("/rendered", {"accept": "image/jpeg"}, own),
                                     ("/frames/1/rendered", {"accept": "image/png"}, own)):
        _refused(httpx.get(_url(archive, base) + path, headers=headers, timeout=30), 409, rehydrate)
    for level, rehydrate in (("series", series), ("study", study)):
        refused = httpx.get(_url(archive, base, level), headers=many, timeout=30)
        _refused(refused, 409, rehydrate)
        assert refused.json()["message"].startswith(f"1 of {len(files)} instances are OFFLINE")

    # What online levels can serve still is: a small rendering, and the thumbnails.
    small = httpx.get(f"{_url(archive, base)}/rendered", params={"viewport": "128,96"}, headers={"accept": "image/png"})
    assert small.status_code == 200 and small.headers["content-type"] == "image/png"
    for level in ("instance", "series", "study"):
        assert httpx.get(f"{_url(archive, base, level)}/thumbnail", timeout=30).status_code == 200, level

    _tier(archive, base, "Hot", "Standard")
    _eventually(lambda: _availability(archive, base), "NEARLINE")
    _refused(httpx.get(f"{_url(archive, base)}/frames/1", headers=octets), 503, own)
    pending = httpx.get(_url(archive, base, "series"), headers=many, timeout=30)
    _refused(pending, 503, series)
    assert int(pending.headers["retry-after"]) > 0


def test_a_rehydrated_series_serves_its_frames_byte_exact_again(archive: Server, tmp_path: Path) -> None:
    files = make_slide(tmp_path, levels=2, base_size=(1024, 768), associated=False)
    _store(archive, files)
    for file in files:
        _tier(archive, file, "Archive")
    _eventually(lambda: _availability(archive, files[0], "series"), "OFFLINE")

    asked = httpx.post(f"{_url(archive, files[0], 'series')}/rehydrate", json={"priority": "High"})
    assert asked.status_code == 202, asked.text
    status_url = asked.headers["location"]
    assert asked.json()["statusUrl"] == status_url and asked.json()["counts"] == {"pending": 2, "done": 0, "failed": 0}
    assert {f.sop_uid for f in files} == {i["sopInstanceUID"] for i in asked.json()["instances"]}
    assert [_availability(archive, f) for f in files] == ["NEARLINE", "NEARLINE"], "NEARLINE as soon as asked"
    assert httpx.get(status_url).json()["status"] == "pending"
    assert all(_blob(archive, f).get_blob_tags() == {"dicomweb_tier": "rehydrated"} for f in files)

    _eventually(lambda: httpx.get(status_url).json()["status"], "done", REHYDRATE_SECONDS + 30)
    for entry in httpx.get(status_url).json()["instances"]:
        assert entry["state"] == "done" and entry["done"] >= entry["requested"]
    _eventually(lambda: _availability(archive, files[0], "series"), "ONLINE")
    octets = {"accept": f'multipart/related; type="application/octet-stream"; {ANY}'}
    for file in files:
        expected = source_frames(file.path)
        numbers = ",".join(str(n) for n in range(1, len(expected) + 1))
        answer = httpx.get(f"{_url(archive, file)}/frames/{numbers}", headers=octets, timeout=60)
        assert answer.status_code == 200
        assert [body for _, body in parse_multipart(answer)] == expected
    again = httpx.post(f"{_url(archive, files[0])}/rehydrate")
    assert again.status_code == 202 and again.json()["status"] == "done", "online already: nothing to wait for"


def test_rehydration_requests_are_checked(archive: Server, tmp_path: Path) -> None:
    (file,) = make_slide(tmp_path, levels=1, base_size=(256, 256), associated=False)
    _store(archive, [file])
    url = f"{_url(archive, file)}/rehydrate"
    for body in (b'{"priority": "Urgent"}', b"[1]", b"not json", b'{"priority": "High", "tier": "Cool"}',
                 b"{" + b" " * 4096 + b"}"):
        refused = httpx.post(url, content=body)
        assert refused.status_code == 400 and refused.headers["content-type"] == "application/dicom+json", body[:20]
    assert httpx.post(f"{archive.base_url}/studies/1.2.3/rehydrate").status_code == 404
    assert httpx.get(f"{archive.base_url}/operations/rehydrations/nosuchrequest").status_code == 404
    assert httpx.get(f"{archive.base_url}/operations/rehydrations/..%2F..%2Fx").status_code == 404


def test_a_put_over_an_archived_instance_replaces_it(archive: Server, tmp_path: Path) -> None:
    """The new generation is written hot; the archived one is deleted (Azure charges the rest of its 180 days)."""
    (file,) = make_slide(tmp_path, levels=1, base_size=(256, 256), associated=False)
    _store(archive, [file])
    old = _blob(archive, file)
    _tier(archive, file, "Archive")
    _eventually(lambda: _availability(archive, file), "OFFLINE")
    _store(archive, [file], method="PUT")
    assert not old.exists()
    _eventually(lambda: _availability(archive, file), "ONLINE")
    frame = httpx.get(f"{_url(archive, file)}/frames/1",
                      headers={"accept": f'multipart/related; type="application/octet-stream"; {ANY}'})
    assert frame.status_code == 200 and parse_multipart(frame)[0][1] == source_frames(file.path)[0]


def test_a_lifecycle_run_after_400_days_archives_the_instances_and_qido_knows_unasked(
        archive: Server, tmp_path: Path) -> None:
    """Hot pinning off: every pyramid level is tagged ``auto``. Labels, overviews, thumbnails and sidecars stay hot;
    the index learns the new tiers from the run's own blob events, before anybody reads."""
    stack_settings = {k: v for k, v in archive.env.items() if k.startswith("DICOMWEB_")}
    settings = fresh_settings(stack_settings)
    server = start_server(settings, tmp_path, DICOMWEB_HOT_PIN_MB="0")
    try:
        files = make_slide(tmp_path / "slide", levels=3, base_size=(1024, 768))
        _store(server, files)
        run = subprocess.run([sys.executable, "-m", "dicomweb", "lifecycle", "--days", "400", "--json"],
                             env={**os.environ, **settings}, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        moves = json.loads(run.stdout)["moves"]
        levels = {instance_blob(settings, f.study_uid, f.series_uid, f.sop_uid) for f in files[:3]}
        assert {(m["container"], m["name"], m["to"]) for m in moves} == {
            (settings["DICOMWEB_INSTANCE_CONTAINER"], name, "Archive") for name in levels}
        for file, want in zip(files, ["OFFLINE"] * 3 + ["ONLINE"] * 3):
            _eventually(lambda file=file: _availability(server, file), want)
        assert _availability(server, files[0], "study") == "OFFLINE"
        again = subprocess.run([sys.executable, "-m", "dicomweb", "lifecycle", "--days", "400", "--json"],
                               env={**os.environ, **settings}, capture_output=True, text=True, timeout=120)
        assert json.loads(again.stdout)["moves"] == []
    finally:
        server.stop()
