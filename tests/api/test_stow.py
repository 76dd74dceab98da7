"""STOW-RS against the running service, Azurite and the Cosmos server."""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEG2000, HTJ2KLossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless, generate_uid

from dicomweb.dicom.part10 import FRAME_HEAD
from dicomweb.storage.naming import AUTO, HOT, TIER_TAG
from tests.conftest import Server, blob_names, blob_service, fresh_settings, instance_blob, start_server
from tests.wsi_factory import SlideFile, bomb_frame, make_bomb, make_slide, make_sparse_instance

INSTANCES = "dicom-instances"
SIDECARS = "dicom-sidecars"
FAILED, REFERENCED, REASON = "00081198", "00081199", "00081197"


def _multipart(files: list[bytes], boundary: str, quoted: bool = True) -> tuple[bytes, str]:
    body = b"".join(
        b"\r\n--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + data for data in files
    ) + b"\r\n--" + boundary.encode() + b"--\r\n"
    shown = f'"{boundary}"' if quoted else boundary
    return body, f'multipart/related; type="application/dicom"; boundary={shown}'


def _chunked(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _reasons(body: dict) -> list[int]:
    return [item[REASON]["Value"][0] for item in body.get(FAILED, {}).get("Value", [])]


def _stored_anything(server: Server, study: str) -> bool:
    if blob_names(server.env, INSTANCES, study) or blob_names(server.env, SIDECARS, study):
        return True
    return httpx.get(f"{server.base_url}/studies/{study}/metadata").status_code != 404


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> list[SlideFile]:
    return make_slide(tmp_path_factory.mktemp("stow-slide"))


def test_single_part_stow_answers_dicom_json(http: httpx.Client, server: Server, slide: list[SlideFile]) -> None:
    volume = slide[0]
    response = http.post("/studies", content=volume.path.read_bytes(), headers={"content-type": "application/dicom"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    body = response.json()
    item = body[REFERENCED]["Value"][0]
    assert item["00081155"]["Value"] == [volume.sop_uid]
    assert item["00081150"]["Value"] == ["1.2.840.10008.5.1.4.1.1.77.1.6"]
    assert item["00081190"]["Value"] == [
        f"{server.base_url}/studies/{volume.study_uid}/series/{volume.series_uid}/instances/{volume.sop_uid}"
    ]
    assert body["00081190"]["Value"] == [f"{server.base_url}/studies/{volume.study_uid}"]
    stored = blob_service(server.env).get_blob_client(
        INSTANCES, instance_blob(server.env, volume.study_uid, volume.series_uid, volume.sop_uid)).download_blob().readall()
    assert stored == volume.path.read_bytes()


@pytest.mark.parametrize("quoted", [True, False], ids=["quoted", "unquoted"])
def test_multipart_chunked_stow_of_a_whole_slide(http: httpx.Client, server: Server, tmp_path: Path,
                                                   quoted: bool) -> None:
    files = make_slide(tmp_path)
    body, content_type = _multipart([f.path.read_bytes() for f in files], "b-" + uuid.uuid4().hex, quoted)
    response = http.post(f"/studies/{files[0].study_uid}", content=_chunked(body), headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    assert {i["00081155"]["Value"][0] for i in response.json()[REFERENCED]["Value"]} == {f.sop_uid for f in files}
    assert len(blob_names(server.env, INSTANCES, files[0].study_uid)) == len(files)


def test_dataset_without_preamble_is_stored_as_part10(http: httpx.Client, server: Server, tmp_path: Path) -> None:
    volume = make_slide(tmp_path, levels=1, associated=False)[0]
    raw = volume.path.read_bytes()[132:]  # file meta and dataset, as dicomweb-client sends in-memory datasets
    response = http.post("/studies", content=raw, headers={"content-type": "application/dicom"})
    assert response.status_code == 200, response.text
    stored = blob_service(server.env).get_blob_client(
        INSTANCES, instance_blob(server.env, volume.study_uid, volume.series_uid, volume.sop_uid)).download_blob().readall()
    assert stored[:132] == b"\x00" * 128 + b"DICM"
    assert pydicom.dcmread(io.BytesIO(stored)).SOPInstanceUID == volume.sop_uid


def test_study_mismatch_is_refused_and_nothing_stored(http: httpx.Client, server: Server, tmp_path: Path) -> None:
    volume = make_slide(tmp_path, levels=1, associated=False)[0]
    other = generate_uid()
    body, content_type = _multipart([volume.path.read_bytes()], "mismatch")
    response = http.post(f"/studies/{other}", content=body, headers={"content-type": content_type})
    assert response.status_code == 409
    assert _reasons(response.json()) == [43265]
    assert not _stored_anything(server, volume.study_uid)


def test_duplicate_is_refused_and_the_stored_instance_untouched(http: httpx.Client, server: Server,
                                                                 tmp_path: Path) -> None:
    volume = make_slide(tmp_path, levels=1, associated=False)[0]
    data = volume.path.read_bytes()
    assert http.post("/studies", content=data, headers={"content-type": "application/dicom"}).status_code == 200
    blob = blob_service(server.env).get_blob_client(
        INSTANCES, instance_blob(server.env, volume.study_uid, volume.series_uid, volume.sop_uid))
    etag = blob.get_blob_properties().etag
    again = http.post("/studies", content=data, headers={"content-type": "application/dicom"})
    assert again.status_code == 409
    assert _reasons(again.json()) == [45070]
    assert blob.get_blob_properties().etag == etag
    assert http.get(f"/studies/{volume.study_uid}/series/{volume.series_uid}/instances/{volume.sop_uid}/frames/1",
                    headers={"accept": "*/*"}).status_code == 200


def test_partial_success_answers_202(http: httpx.Client, server: Server, tmp_path: Path) -> None:
    volume = make_slide(tmp_path, levels=1, associated=False)[0]
    body, content_type = _multipart([volume.path.read_bytes(), b"\x00" * 300 + b"not dicom"], "mixed")
    response = http.post("/studies", content=body, headers={"content-type": content_type})
    assert response.status_code == 202
    assert _reasons(response.json()) == [43264]
    assert len(response.json()[REFERENCED]["Value"]) == 1
    assert "warning" in response.headers


@pytest.mark.parametrize(
    "mutate",
    [
        lambda ds: delattr(ds, "SOPInstanceUID"),
        lambda ds: setattr(ds, "SeriesInstanceUID", "1.2.03.4"),
        lambda ds: delattr(ds, "PatientID"),
    ],
    ids=["missing-sop-instance", "invalid-uid", "missing-patient-id"],
)
def test_invalid_dataset_is_refused(http: httpx.Client, server: Server, tmp_path: Path, mutate) -> None:  # noqa: ANN001
    volume = make_slide(tmp_path, levels=1, associated=False)[0]
    ds = pydicom.dcmread(volume.path)
    mutate(ds)
    out = io.BytesIO()
    ds.save_as(out)
    response = http.post("/studies", content=out.getvalue(), headers={"content-type": "application/dicom"})
    assert response.status_code == 409
    assert _reasons(response.json()) == [43264]
    assert not _stored_anything(server, volume.study_uid)


def test_truncated_body_is_refused(http: httpx.Client, server: Server, tmp_path: Path) -> None:
    volume = make_slide(tmp_path, levels=1, associated=False)[0]
    data = volume.path.read_bytes()
    response = http.post("/studies", content=data[: len(data) - 1000], headers={"content-type": "application/dicom"})
    assert response.status_code == 409
    assert _reasons(response.json()) == [43264]
    assert not _stored_anything(server, volume.study_uid)


@pytest.mark.parametrize(
    ("content_type", "status"),
    [("text/plain", 415), ('multipart/related; type="application/json"; boundary=x', 415),
     ("multipart/related; type=\"application/dicom\"", 400)],
)
def test_wrong_content_type(http: httpx.Client, content_type: str, status: int) -> None:
    response = http.post("/studies", content=b"--x\r\n\r\nabc\r\n--x--", headers={"content-type": content_type})
    assert response.status_code == status
    assert response.headers["content-type"] == "application/dicom+json"


def test_invalid_study_uid_in_url(http: httpx.Client) -> None:
    response = http.post("/studies/1.2.abc", content=b"", headers={"content-type": "application/dicom"})
    assert response.status_code == 400


def test_interrupted_upload_leaves_nothing(server: Server, tmp_path: Path) -> None:
    volume = make_slide(tmp_path, levels=1, associated=False, base_size=(2048, 2048))[0]
    data = volume.path.read_bytes()
    host, port = server.base_url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            f"POST /v1/studies HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/dicom\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode() + data[: len(data) // 2]
        )
        time.sleep(0.5)
    time.sleep(1.0)
    assert not _stored_anything(server, volume.study_uid)


def test_storage_failure_mid_upload_leaves_nothing(isolated_server: Server, tmp_path: Path) -> None:
    volume = make_slide(tmp_path, levels=1, associated=False, base_size=(2048, 2048))[0]
    data = volume.path.read_bytes()
    container = isolated_server.env["DICOMWEB_INSTANCE_CONTAINER"]
    blobs = blob_service(isolated_server.env)
    with httpx.Client(base_url=isolated_server.base_url, timeout=60) as client:
        assert client.options("/studies").status_code == 204  # the service is up (its containers provisioned)

        def body() -> Iterator[bytes]:
            yield data[:65536]
            blobs.delete_container(container)
            time.sleep(0.2)
            yield from _chunked(data[65536:])

        response = client.post("/studies", content=body(), headers={"content-type": "application/dicom"})
        assert response.status_code == 503, response.text  # nothing stored, only because storage failed
        assert _reasons(response.json()) == [272] and response.headers["retry-after"]
        assert blob_names(isolated_server.env, isolated_server.env["DICOMWEB_SIDECAR_CONTAINER"], "") == []
        assert client.get(f"/studies/{volume.study_uid}/metadata").status_code == 404


def test_cors_preflight_and_headers(http: httpx.Client) -> None:
    preflight = http.options("/studies/1.2.3/series/4.5/instances/6.7/frames/1", headers={
        "origin": "http://viewer.example", "access-control-request-method": "GET",
        "access-control-request-headers": "accept, authorization"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "accept" in preflight.headers["access-control-allow-headers"]
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    assert int(preflight.headers["access-control-max-age"]) > 0
    answer = http.get("/studies/1.2.3/metadata", headers={"origin": "http://viewer.example"})
    assert answer.headers["access-control-allow-origin"] == "*"


def test_instances_are_tagged_for_the_lifecycle_policy(emulators: dict[str, str], tmp_path: Path) -> None:
    """Labels, overviews, thumbnails, small levels and sidecars stay hot; large levels may cool down."""
    settings = fresh_settings(emulators)
    server = start_server(settings, tmp_path, DICOMWEB_HOT_PIN_MB="1")
    try:
        files = make_slide(tmp_path / "slide", levels=2, base_size=(3000, 3000))
        for file in files:
            response = httpx.post(f"{server.base_url}/studies", content=file.path.read_bytes(),
                                  headers={"content-type": "application/dicom"}, timeout=60)
            assert response.status_code == 200, response.text
        service = blob_service(settings)
        instances = service.get_container_client(settings["DICOMWEB_INSTANCE_CONTAINER"])
        sidecars = service.get_container_client(settings["DICOMWEB_SIDECAR_CONTAINER"])
        tiers = {}
        for file in files:
            name = instance_blob(settings, file.study_uid, file.series_uid, file.sop_uid).removesuffix(".dcm")
            tiers[file.path.name] = instances.get_blob_client(f"{name}.dcm").get_blob_tags()[TIER_TAG]
            assert sidecars.get_blob_client(f"{name}.json").get_blob_tags() == {TIER_TAG: HOT}
            assert sidecars.get_blob_client(f"{name}.frames").get_blob_tags() == {TIER_TAG: HOT}
        large = files[0].path.stat().st_size > 1024 * 1024
        assert large, "the base level must exceed the 1 MB pin limit of this test"
        assert tiers == {files[0].path.name: AUTO, **{f.path.name: HOT for f in files[1:]}}
        auto = list(instances.find_blobs_by_tags(f"{TIER_TAG} = '{AUTO}'"))
        assert [b.name for b in auto] == [instance_blob(settings, files[0].study_uid, files[0].series_uid,
                                                        files[0].sop_uid)]
    finally:
        server.stop()


def _relabelled(path: Path, tag: int, vr: str, text: str) -> bytes:
    """The file at ``path`` with a value pydicom refuses to write (written as LO, then relabelled)."""
    ds = pydicom.dcmread(path)
    ds.add_new(tag, "LO", text)
    out = io.BytesIO()
    ds.save_as(out)
    key = tag.to_bytes(4, "little")[2:] + tag.to_bytes(4, "little")[:2]
    return out.getvalue().replace(key + b"LO", key + vr.encode(), 1)


@pytest.mark.parametrize(("tag", "vr", "value"), [(0x00280008, "IS", "abc"), (0x00280008, "IS", "0"),
                                                  (0x00180050, "DS", "1.2.3")],
                         ids=["frames-abc", "frames-zero", "corrupt-ds"])
def test_malformed_values_are_invalid_not_processing_failures(http: httpx.Client, server: Server, tmp_path: Path,
                                                              tag: int, vr: str, value: str) -> None:
    volume = make_slide(tmp_path, levels=1, associated=False)[0]
    data = _relabelled(volume.path, tag, vr, value)
    response = http.post("/studies", content=data, headers={"content-type": "application/dicom"})
    assert (response.status_code, _reasons(response.json())) == (409, [43264])
    assert value in response.headers["warning"]
    assert not _stored_anything(server, volume.study_uid)


def test_a_body_without_its_close_delimiter_reports_the_stored_part(http: httpx.Client, server: Server,
                                                                   tmp_path: Path) -> None:
    """It answered 400 although the first instance was stored and indexed."""
    volume = make_slide(tmp_path, levels=1, associated=False)[0]
    body, content_type = _multipart([volume.path.read_bytes()], "cut")
    response = http.post("/studies", content=body[: -len(b"--\r\n")], headers={"content-type": content_type})
    assert response.status_code == 202, response.text
    assert len(response.json()[REFERENCED]["Value"]) == 1
    assert _reasons(response.json()) == [43264]
    assert "close delimiter" in response.headers["warning"]
    assert http.get(f"/studies/{volume.study_uid}/metadata").status_code == 200


def test_a_truncated_second_part_fails_alone(http: httpx.Client, server: Server, tmp_path: Path) -> None:
    first, second = make_slide(tmp_path, levels=2, associated=False)[:2]
    body, content_type = _multipart([first.path.read_bytes(), second.path.read_bytes()], "cut")
    response = http.post("/studies", content=body[: len(body) - 5000], headers={"content-type": content_type})
    assert response.status_code == 202, response.text
    assert [i["00081155"]["Value"][0] for i in response.json()[REFERENCED]["Value"]] == [first.sop_uid]
    assert _reasons(response.json()) == [43264]
    assert not blob_names(server.env, INSTANCES, f"{second.study_uid}/{second.series_uid}/{second.sop_uid}/")


def test_an_oversized_second_part_reports_the_stored_first(emulators: dict[str, str], tmp_path: Path) -> None:
    """It answered 413 although the first instance was stored and indexed."""
    small = make_slide(tmp_path / "small", levels=1, associated=False, base_size=(256, 256))[0]
    large = make_slide(tmp_path / "large", levels=1, associated=False, base_size=(4096, 4096))[0]
    assert small.path.stat().st_size < 1024 * 1024 < large.path.stat().st_size
    server = start_server(fresh_settings(emulators), tmp_path, DICOMWEB_MAX_REQUEST_MB="1")
    try:
        body, content_type = _multipart([small.path.read_bytes(), large.path.read_bytes()], "big")
        response = httpx.post(f"{server.base_url}/studies", content=_chunked(body),
                              headers={"content-type": content_type}, timeout=60)
        assert response.status_code == 202, response.text
        assert [i["00081155"]["Value"][0] for i in response.json()[REFERENCED]["Value"]] == [small.sop_uid]
        assert _reasons(response.json()) == [43264]
        assert "1 MB limit" in response.headers["warning"]
        assert not blob_names(server.env, INSTANCES, large.study_uid)
    finally:
        server.stop()


def test_parts_per_request_are_bounded(emulators: dict[str, str], tmp_path: Path) -> None:
    """50,000 empty parts stalled the worker for 24-29 s; the parts beyond the limit are refused at once."""
    server = start_server(fresh_settings(emulators), tmp_path, DICOMWEB_MAX_PARTS_PER_REQUEST="10")
    try:
        volume = make_slide(tmp_path, levels=1, associated=False)[0]
        body, content_type = _multipart([volume.path.read_bytes()] + [b""] * 50_000, "many")
        started = time.monotonic()
        response = httpx.post(f"{server.base_url}/studies", content=body, headers={"content-type": content_type},
                              timeout=60)
        assert time.monotonic() - started < 10
        assert response.status_code == 202, response.text
        assert _reasons(response.json()) == [43264] * 10  # 9 empty parts and the rest of the body
        assert "empty" in response.headers["warning"]
        empty, content_type = _multipart([b""] * 50_000, "many")
        refused = httpx.post(f"{server.base_url}/studies", content=empty, headers={"content-type": content_type},
                             timeout=60)
        assert refused.status_code == 400 and "DICOMWEB_MAX_PARTS_PER_REQUEST" in refused.headers["warning"]
    finally:
        server.stop()


def test_a_large_header_does_not_stall_other_requests(server: Server, tmp_path: Path) -> None:
    """A 20,000-frame TILED_SPARSE header took 6.3 s of CPU on the event loop, stalling every other request
    (10,000 here, to keep the suite quick)."""
    sparse = make_sparse_instance(tmp_path / "sparse.dcm", 10_000)
    data, study = sparse.path.read_bytes(), sparse.study_uid
    answers: list[httpx.Response] = []
    stored = threading.Thread(target=lambda: answers.append(httpx.post(
        f"{server.base_url}/studies", content=data, headers={"content-type": "application/dicom"}, timeout=120)))
    stored.start()
    slowest = 0.0
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        while stored.is_alive():
            started = time.monotonic()
            assert client.get("/studies", params={"limit": "1"}).status_code == 200
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.05)
    stored.join()
    assert answers[0].status_code == 200, answers[0].text
    assert slowest < 1.5, f"a search waited {slowest:.1f} s while the header was parsed"
    metadata = httpx.get(f"{server.base_url}/studies/{study}/metadata", timeout=60).json()
    assert len(metadata[0]["52009230"]["Value"]) == 10_000


@pytest.mark.parametrize("syntax", [JPEGBaseline8Bit, JPEG2000, HTJ2KLossless, JPEGLSLossless, RLELossless])
def test_a_pixel_bomb_is_refused_and_nothing_stored(http: httpx.Client, server: Server, tmp_path: Path,
                                                    syntax: str) -> None:
    """A 256×256 instance whose frame header claims 30000×30000 pixels (an RLE one: 15 segments of 8 MiB runs)."""
    bomb = make_bomb(tmp_path, syntax)
    response = http.post("/studies", content=bomb.path.read_bytes(), headers={"content-type": "application/dicom"})
    assert response.status_code == 409, response.text
    assert _reasons(response.json()) == [43264]
    warning = response.headers["warning"]
    assert "frame 1 is not the image the instance describes" in warning
    assert "30000\\xd730000 pixels of 3 samples, not the instance's 256\\xd7256" in warning or "15 segments" in warning
    assert not _stored_anything(server, bomb.study_uid)


@pytest.mark.parametrize("bomb", [False, True], ids=["sound", "bomb"])
def test_the_last_frame_is_checked_where_its_header_lies_beyond_the_bytes_kept(
        http: httpx.Client, server: Server, tmp_path: Path, bomb: bool) -> None:
    """A comment segment before the last frame's JPEG frame header puts it beyond the first bytes the walk kept:
    the stored frame's header is read back (and a bomb removed again, leaving nothing)."""
    (file,) = make_slide(tmp_path, levels=1, base_size=(512, 256), associated=False)
    ds = pydicom.dcmread(file.path)
    first, last = generate_frames(ds.PixelData, number_of_frames=2)
    last = last[:2] + b"\xff\xfe" + struct.pack(">H", 2 + FRAME_HEAD) + bytes(FRAME_HEAD) + last[2:]
    if bomb:
        last = bomb_frame(last, JPEGBaseline8Bit)
    ds.PixelData = encapsulate([first, last])
    ds.save_as(file.path, enforce_file_format=True)
    response = http.post("/studies", content=file.path.read_bytes(), headers={"content-type": "application/dicom"})
    if bomb:
        assert response.status_code == 409 and _reasons(response.json()) == [43264], response.text
        assert "frame 2 is not the image" in response.headers["warning"]
        assert not _stored_anything(server, file.study_uid)
        return
    assert response.status_code == 200, response.text
    url = f"/studies/{file.study_uid}/series/{file.series_uid}/instances/{file.sop_uid}/frames/2"
    served = http.get(url, headers={"accept": "image/jpeg; transfer-syntax=*"})
    assert served.status_code == 200 and served.content == last
