"""WADO-RS against the running service: frames of every pixel-data layout, metadata, bulk data, instances."""

from __future__ import annotations

import asyncio
import base64
import io
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from PIL import Image
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
)

from tests.conftest import Server, blob_service, instance_blob, parse_multipart, source_frames
from tests.wsi_factory import SlideFile, make_annotations, make_large_instance, make_slide

SLIM_ACCEPT = (
    'multipart/related; type="image/jls"; transfer-syntax=1.2.840.10008.1.2.4.80, '
    'multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.90, '
    'multipart/related; type="application/octet-stream"; transfer-syntax=*, '
    'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50'
)

#: (name, transfer syntax, offset table, fragments per frame)
VARIANTS = [
    ("jpeg-bot", JPEGBaseline8Bit, "bot", 1),
    ("jpeg-eot", JPEGBaseline8Bit, "eot", 1),
    ("jpeg-empty-bot", JPEGBaseline8Bit, "empty", 1),
    ("jpeg-3-fragments", JPEGBaseline8Bit, "bot", 3),
    ("j2k-lossless-bot", JPEG2000Lossless, "bot", 1),
    ("j2k-empty-bot", JPEG2000, "empty", 1),
    ("native", ExplicitVRLittleEndian, "native", 1),
]


@dataclass
class Stored:
    """A slide stored through the service, with the frames pydicom reads from its files."""

    files: list[SlideFile]
    frames: dict[str, list[bytes]]

    def url(self, server: Server, file: SlideFile) -> str:
        return f"{server.base_url}/studies/{file.study_uid}/series/{file.series_uid}/instances/{file.sop_uid}"


def _store(server: Server, files: list[SlideFile]) -> Stored:
    for file in files:
        response = httpx.post(f"{server.base_url}/studies", content=file.path.read_bytes(),
                              headers={"content-type": "application/dicom"}, timeout=60)
        assert response.status_code == 200, response.text
    return Stored(files, {f.sop_uid: source_frames(f.path) for f in files})


@pytest.fixture(scope="module")
def variants(server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Stored]:
    stored = {}
    for name, syntax, table, fragments in VARIANTS:
        files = make_slide(tmp_path_factory.mktemp(name), transfer_syntax=syntax, offset_table=table,
                           fragments_per_frame=fragments, levels=2, base_size=(600, 400), associated=False)
        stored[name] = _store(server, files)
    return stored


@pytest.fixture(scope="module")
def slide(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Stored:
    return _store(server, make_slide(tmp_path_factory.mktemp("retrieve-slide")))


@pytest.mark.parametrize("variant", [v[0] for v in VARIANTS])
def test_every_frame_of_every_layout_is_byte_exact(server: Server, variants: dict[str, Stored], variant: str) -> None:
    stored = variants[variant]
    for file in stored.files:
        expected = stored.frames[file.sop_uid]
        numbers = ",".join(str(n) for n in range(1, len(expected) + 1))
        response = httpx.get(f"{stored.url(server, file)}/frames/{numbers}",
                             headers={"accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'})
        assert response.status_code == 200, response.text
        parts = parse_multipart(response)
        assert [body for _, body in parts] == expected
        assert {h["content-type"] for h, _ in parts} == {
            f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian if variant == 'native' else file.transfer_syntax}"
        }


@pytest.mark.parametrize("accept", [
    None,
    "*/*",
    'multipart/related; type="*/*"',
    'multipart/related; type="application/octet-stream"; transfer-syntax=*',
    'multipart/related; type="image/jpeg"',
    'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50',
    SLIM_ACCEPT,
    'multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.90, '
    'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50',
], ids=["none", "star", "type-star", "octet-any", "jpeg", "jpeg-syntax", "slim", "jp2-then-jpeg"])
def test_jpeg_frames_in_every_accept_form(server: Server, slide: Stored, accept: str | None) -> None:
    file = slide.files[0]
    response = httpx.get(f"{slide.url(server, file)}/frames/1,3,2", headers={"accept": accept} if accept else {})
    assert response.status_code == 200, response.text
    parts = parse_multipart(response)
    frames = slide.frames[file.sop_uid]
    assert [body for _, body in parts] == [frames[0], frames[2], frames[1]]
    for _, body in parts:
        assert Image.open(io.BytesIO(body)).size == (256, 256)


@pytest.mark.parametrize("accept,media", [
    ("image/jpeg", "image/jpeg"),
    ("application/octet-stream; transfer-syntax=*", "application/octet-stream"),
])
def test_single_part_frame(server: Server, slide: Stored, accept: str, media: str) -> None:
    file = slide.files[0]
    response = httpx.get(f"{slide.url(server, file)}/frames/4", headers={"accept": accept})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].split(";")[0] == media
    assert response.content == slide.frames[file.sop_uid][3]


def test_jp2_frames_served_as_jp2(server: Server, variants: dict[str, Stored]) -> None:
    stored = variants["j2k-lossless-bot"]
    file = stored.files[0]
    response = httpx.get(f"{stored.url(server, file)}/frames/2",
                         headers={"accept": 'multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.90'})
    assert response.status_code == 200
    (headers, body), = parse_multipart(response)
    assert headers["content-type"] == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90"
    assert body == stored.frames[file.sop_uid][1]


@pytest.mark.parametrize("accept", ["image/png", 'multipart/related; type="text/html"'])
def test_frames_in_a_media_type_no_frame_has_are_not_acceptable(server: Server, slide: Stored, accept: str) -> None:
    response = httpx.get(f"{slide.url(server, slide.files[0])}/frames/1", headers={"accept": accept})
    assert response.status_code == 406
    assert response.headers["content-type"] == "application/dicom+json"


@pytest.mark.parametrize("frames", ["0", "1,,2", "a", "1-3", "-1"])
def test_malformed_frame_list(server: Server, slide: Stored, frames: str) -> None:
    response = httpx.get(f"{slide.url(server, slide.files[0])}/frames/{frames}")
    assert response.status_code == 400
    assert response.json()["00000902"]["Value"]


def test_frame_beyond_the_instance_and_unknown_uids(server: Server, slide: Stored) -> None:
    file = slide.files[0]
    count = len(slide.frames[file.sop_uid])
    assert httpx.get(f"{slide.url(server, file)}/frames/{count + 1}").status_code == 404
    assert httpx.get(f"{slide.url(server, file)}/frames/1,{count + 1}").status_code == 404
    unknown = f"{server.base_url}/studies/{file.study_uid}/series/{file.series_uid}/instances/1.2.3.4"
    assert httpx.get(unknown + "/frames/1").status_code == 404
    assert httpx.get(unknown + "/metadata").status_code == 404
    assert httpx.get(f"{server.base_url}/studies/1.2.3.4/series/{file.series_uid}/instances/{file.sop_uid}/frames/1"
                     ).status_code == 404
    assert httpx.get(f"{server.base_url}/studies/1.2.3.4/metadata").status_code == 404


def test_metadata_at_every_level(server: Server, slide: Stored) -> None:
    file = slide.files[0]
    study = httpx.get(f"{server.base_url}/studies/{file.study_uid}/metadata")
    series = httpx.get(f"{server.base_url}/studies/{file.study_uid}/series/{file.series_uid}/metadata")
    instance = httpx.get(f"{slide.url(server, file)}/metadata", headers={"accept": "application/dicom+json"})
    for response in (study, series, instance):
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/dicom+json"
    assert {d["00080018"]["Value"][0] for d in study.json()} == {f.sop_uid for f in slide.files}
    assert {d["00080018"]["Value"][0] for d in series.json()} == {f.sop_uid for f in slide.files}
    (dataset,) = instance.json()
    source = pydicom.dcmread(file.path, stop_before_pixels=True)
    assert dataset["00080008"]["Value"] == list(file.image_type)
    assert dataset["00480006"]["Value"] == [source.TotalPixelMatrixColumns]
    assert dataset["00280008"]["Value"] == [int(source.NumberOfFrames)]
    assert dataset["00209311"]["Value"] == ["TILED_FULL"]
    assert dataset["7FE00010"]["BulkDataURI"] == f"{slide.url(server, file)}/bulkdata/7FE00010"
    icc = dataset["00480105"]["Value"][0]["00282000"]
    assert icc == {"vr": "OB", "InlineBinary": base64.b64encode(source.OpticalPathSequence[0].ICCProfile).decode()}


def test_metadata_is_not_offered_as_anything_but_json(server: Server, slide: Stored) -> None:
    response = httpx.get(f"{slide.url(server, slide.files[0])}/metadata", headers={"accept": "application/dicom"})
    assert response.status_code == 406


@pytest.mark.parametrize("accept", ['multipart/related; type="application/octet-stream"', "application/octet-stream"])
def test_an_inline_icc_profile_is_bulk_data_too(server: Server, slide: Stored, accept: str) -> None:
    file = slide.files[0]
    response = httpx.get(f"{slide.url(server, file)}/bulkdata/00480105.0.00282000", headers={"accept": accept})
    assert response.status_code == 200
    body = parse_multipart(response)[0][1] if accept.startswith("multipart") else response.content
    assert body == pydicom.dcmread(file.path).OpticalPathSequence[0].ICCProfile


def test_pixel_data_bulk_data_is_every_frame(server: Server, slide: Stored) -> None:
    file = slide.files[1]
    response = httpx.get(f"{slide.url(server, file)}/bulkdata/7FE00010")
    assert response.status_code == 200
    assert [body for _, body in parse_multipart(response)] == slide.frames[file.sop_uid]


@pytest.fixture(scope="module")
def annotations(server: Server, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, bytes]]:
    """A stored bulk annotation (of a slide of its own): its instance URL and two bulk values, 8.8 MB of nuclei (an
    answer that streams) and 1.9 KB of polygon coordinates (one in one piece)."""
    work = tmp_path_factory.mktemp("ann")
    (volume,) = make_slide(work, levels=1, base_size=(512, 512), associated=False)
    ann = make_annotations(volume, work / "ann.dcm", points=1_100_000, polygons=10)
    assert httpx.post(f"{server.base_url}/studies", content=ann.path.read_bytes(),
                      headers={"content-type": "application/dicom"}, timeout=60).status_code == 200
    groups = pydicom.dcmread(ann.path).AnnotationGroupSequence
    values = {"006A0002.0.00660016": groups[0].PointCoordinatesData,
              "006A0002.1.00660016": groups[1].PointCoordinatesData}
    assert len(values["006A0002.0.00660016"]) > 8 * 1024 * 1024 > 2000 > len(values["006A0002.1.00660016"])
    return f"{server.base_url}/studies/{ann.study_uid}/series/{ann.series_uid}/instances/{ann.sop_uid}", values


@pytest.mark.parametrize("multipart", [False, True], ids=["single", "multipart"])
@pytest.mark.parametrize("path", ["006A0002.0.00660016", "006A0002.1.00660016"], ids=["streamed", "whole"])
def test_bulk_data_answers_one_byte_range_with_206(annotations: tuple[str, dict[str, bytes]], path: str,
                                                   multipart: bool) -> None:
    url, values = annotations
    value = values[path]
    accept = 'multipart/related; type="application/octet-stream"' if multipart else "application/octet-stream"
    whole = httpx.get(f"{url}/bulkdata/{path}", headers={"accept": accept}, timeout=60)
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    assert (parse_multipart(whole)[0][1] if multipart else whole.content) == value
    n = len(value)
    for asked, (first, last) in (("bytes=100-1099", (100, 1099)), (f"bytes={n - 10}-", (n - 10, n - 1)),
                                 ("bytes=-1000", (n - 1000, n - 1)), (f"bytes=1-{n + 50}", (1, n - 1))):
        response = httpx.get(f"{url}/bulkdata/{path}", headers={"accept": accept, "range": asked}, timeout=60)
        assert response.status_code == 206, asked
        assert response.headers["content-range"] == f"bytes {first}-{last}/{n}"
        assert response.headers["etag"] == whole.headers["etag"]
        body = parse_multipart(response)[0][1] if multipart else response.content
        assert body == value[first : last + 1], asked


def test_a_byte_range_beyond_the_value_is_416_and_others_get_it_whole(annotations: tuple[str, dict[str, bytes]]
                                                                     ) -> None:
    url, values = annotations
    path, value = "006A0002.1.00660016", values["006A0002.1.00660016"]
    octets = {"accept": "application/octet-stream"}
    beyond = httpx.get(f"{url}/bulkdata/{path}", headers={**octets, "range": f"bytes={len(value)}-"})
    assert beyond.status_code == 416 and beyond.headers["content-type"] == "application/dicom+json"
    assert beyond.headers["content-range"] == f"bytes */{len(value)}"
    huge = httpx.get(f"{url}/bulkdata/{path}", headers={**octets, "range": "bytes=" + "9" * 5000 + "-"})
    assert huge.status_code == 416, "a position of more digits than Python reads is beyond the value, not a 500"
    etag = httpx.get(f"{url}/bulkdata/{path}", headers=octets).headers["etag"]
    for headers in ({"range": "bytes=0-1,5-6"}, {"range": "pages=1-2"}, {"range": "bytes=0-9", "if-range": '"old"'}):
        response = httpx.get(f"{url}/bulkdata/{path}", headers={**octets, **headers})
        assert response.status_code == 200 and response.content == value, headers
    fresh = httpx.get(f"{url}/bulkdata/{path}", headers={**octets, "range": "bytes=0-9", "if-range": etag})
    assert fresh.status_code == 206 and fresh.content == value[:10]


def test_dicomweb_client_reads_a_byte_range_of_annotation_coordinates(annotations: tuple[str, dict[str, bytes]]
                                                                      ) -> None:
    url, values = annotations
    client = DICOMwebClient(url.split("/studies/")[0])
    value = values["006A0002.0.00660016"]
    (part,) = client.retrieve_bulkdata(f"{url}/bulkdata/006A0002.0.00660016", byte_range=(800, 8799))
    assert part == value[800:8800]
    assert client.retrieve_bulkdata(f"{url}/bulkdata/006A0002.0.00660016") == [value]


def test_unknown_bulk_data_path(server: Server, slide: Stored) -> None:
    assert httpx.get(f"{slide.url(server, slide.files[0])}/bulkdata/00091010").status_code == 404


@pytest.mark.parametrize("accept", ["application/dicom; transfer-syntax=*", "application/dicom"])
def test_single_part_instance_is_the_stored_file(server: Server, slide: Stored, accept: str) -> None:
    file = slide.files[0]
    response = httpx.get(slide.url(server, file), headers={"accept": accept})
    if accept.endswith("*"):
        assert response.status_code == 200
        assert response.headers["content-type"] == f"application/dicom; transfer-syntax={file.transfer_syntax}"
        assert response.content == file.path.read_bytes()
    else:
        assert response.status_code == 200
        assert response.headers["content-type"] == f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
        transcoded = pydicom.dcmread(io.BytesIO(response.content))
        assert transcoded.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert int(response.headers["content-length"]) == len(response.content)
        assert transcoded.PhotometricInterpretation == "RGB" and transcoded.SOPInstanceUID == file.sop_uid
        source = pydicom.dcmread(file.path).pixel_array
        assert np.abs(transcoded.pixel_array.astype(int) - source).max() <= 1


def test_series_and_study_retrieve_stream_every_instance(server: Server, slide: Stored) -> None:
    file = slide.files[0]
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    for url in (f"{server.base_url}/studies/{file.study_uid}",
                f"{server.base_url}/studies/{file.study_uid}/series/{file.series_uid}"):
        response = httpx.get(url, headers={"accept": accept}, timeout=60)
        assert response.status_code == 200
        bodies = {pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID: body for _, body in parse_multipart(response)}
        assert bodies == {f.sop_uid: f.path.read_bytes() for f in slide.files}


def test_a_study_in_the_default_syntax_is_transcoded(server: Server, slide: Stored) -> None:
    response = httpx.get(f"{server.base_url}/studies/{slide.files[0].study_uid}",
                         headers={"accept": 'multipart/related; type="application/dicom"'}, timeout=60)
    assert response.status_code == 200
    parts = parse_multipart(response)
    assert {h["content-type"] for h, _ in parts} == {f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"}
    datasets = {d.SOPInstanceUID: d for d in (pydicom.dcmread(io.BytesIO(body)) for _, body in parts)}
    for file in slide.files:
        assert datasets[file.sop_uid].NumberOfFrames == file.number_of_frames
        assert len(datasets[file.sop_uid].PixelData) == sum(tile.size for tile in file.tiles)


def test_native_instance_in_the_default_syntax(server: Server, variants: dict[str, Stored]) -> None:
    stored = variants["native"]
    file = stored.files[0]
    response = httpx.get(stored.url(server, file), headers={"accept": 'multipart/related; type="application/dicom"'})
    assert response.status_code == 200
    ((headers, body),) = parse_multipart(response)
    assert body == Path(file.path).read_bytes()


def test_cors_preflight_and_exposed_headers(server: Server, slide: Stored) -> None:
    url = f"{slide.url(server, slide.files[0])}/frames/1"
    preflight = httpx.options(url, headers={
        "origin": "https://slim.example", "access-control-request-method": "GET",
        "access-control-request-headers": "accept, authorization",
    })
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert "accept" in allowed and "authorization" in allowed
    assert int(preflight.headers["access-control-max-age"]) > 0
    response = httpx.get(url, headers={"origin": "https://slim.example", "accept": SLIM_ACCEPT})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    exposed = {name.strip().lower() for name in response.headers["access-control-expose-headers"].split(",")}
    assert {"etag", "warning", "retry-after", "content-range", "accept-ranges"} <= exposed, "a page reads them"


def test_concurrent_viewer_bursts_get_their_own_frames(server: Server, tmp_path: Path) -> None:
    """Read-ahead and shared in-flight reads must never hand a request another frame's bytes."""
    large = make_large_instance(tmp_path / "burst.dcm", frames=600, frame_bytes=12000)
    response = httpx.post(f"{server.base_url}/studies", content=large.path.read_bytes(),
                          headers={"content-type": "application/dicom"}, timeout=60)
    assert response.status_code == 200
    expected = source_frames(large.path)
    columns = pydicom.dcmread(large.path, stop_before_pixels=True).TotalPixelMatrixColumns // 256
    url = f"{server.base_url}/studies/{large.study_uid}/series/{large.series_uid}/instances/{large.sop_uid}/frames/"
    bursts = [[1 + (row + r) * columns + column + c for r in range(4) for c in range(6)]
              for row, column in ((0, 0), (0, 6), (5, 3), (10, 10), (4, 0))]

    async def fetch(client: httpx.AsyncClient, number: int) -> tuple[int, bytes]:
        answer = await client.get(url + str(number), headers={"accept": SLIM_ACCEPT})
        assert answer.status_code == 200
        return number, parse_multipart(answer)[0][1]

    async def run() -> list[tuple[int, bytes]]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(fetch(client, n) for burst in bursts for n in burst))

    results = asyncio.run(run())
    assert len(results) == 5 * 24
    for number, body in results:
        assert body == expected[number - 1], f"frame {number}"


def test_archived_and_vanished_instances_fail_before_the_body(server: Server, tmp_path: Path) -> None:
    """They answered a truncated 200: the failure surfaced inside the streaming body."""
    stored = _store(server, make_slide(tmp_path, levels=2, associated=False))
    archived, vanished = stored.files
    blobs = blob_service(server.env).get_container_client("dicom-instances")
    blobs.get_blob_client(instance_blob(server.env, archived.study_uid, archived.series_uid,
                                        archived.sop_uid)).set_standard_blob_tier("Archive")
    blobs.delete_blob(instance_blob(server.env, vanished.study_uid, vanished.series_uid, vanished.sop_uid))
    any_syntax = "transfer-syntax=*"
    for file, status in ((archived, 409), (vanished, 404)):
        single = httpx.get(stored.url(server, file), headers={"accept": f"application/dicom; {any_syntax}"})
        assert single.status_code == status, single.text
        assert single.headers["content-type"] == "application/dicom+json" and "warning" in single.headers
        frames = ",".join(str(n) for n in range(1, len(stored.frames[file.sop_uid]) + 1))
        many = httpx.get(f"{stored.url(server, file)}/frames/{frames}",
                         headers={"accept": f'multipart/related; type="application/octet-stream"; {any_syntax}'})
        assert many.status_code == status, many.text
    series = httpx.get(f"{server.base_url}/studies/{archived.study_uid}/series/{archived.series_uid}",
                       headers={"accept": f'multipart/related; type="application/dicom"; {any_syntax}'})
    assert series.status_code in (404, 409) and "warning" in series.headers
    assert "rehydrate" in httpx.get(stored.url(server, archived), headers={
        "accept": f"application/dicom; {any_syntax}"}).headers["warning"]


def test_metadata_is_revalidated_and_compressed(server: Server, tmp_path: Path) -> None:
    files = make_slide(tmp_path, levels=2, base_size=(600, 400), associated=False)
    _store(server, files[:1])
    url = f"{server.base_url}/studies/{files[0].study_uid}/series/{files[0].series_uid}/metadata"
    with httpx.Client(headers={"accept-encoding": "identity"}) as plain, httpx.Client() as gzip:
        first = plain.get(url)
        assert first.headers["cache-control"] == "private, no-cache"
        assert first.headers["vary"] == "Accept, Accept-Encoding"
        assert "content-encoding" not in first.headers
        tag = first.headers["etag"]
        unchanged = plain.get(url, headers={"if-none-match": tag})
        assert unchanged.status_code == 304 and unchanged.content == b""
        compressed = gzip.get(url)  # httpx asks for gzip and decodes it
        assert compressed.headers["content-encoding"] == "gzip"
        assert compressed.headers["etag"] != tag
        assert compressed.json() == first.json()
        assert gzip.get(url).content == compressed.content, "kept and served again"
        _store(server, files[1:])
        grown = plain.get(url, headers={"if-none-match": tag})
        assert grown.status_code == 200, "a new instance in the series is a new answer"
        assert len(grown.json()) == 2
