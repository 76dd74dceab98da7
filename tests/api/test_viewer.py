"""The web viewer Slim is built on (dicom-microscopy-viewer + dicomweb-client) in headless Chromium.

The page is served from another origin than the service, as Slim is, so every frame
request with its quoted Accept header goes through a CORS preflight. The viewer reads the
series metadata (with the ICC profiles inline), then requests tiles one frame per request
with its own Accept list, decodes them in its workers, colour-manages and draws them.
The test watches the wire and the screen.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
import shutil
import time
from pathlib import Path
from typing import Iterator, NamedTuple

import httpx
import numpy as np
import pydicom
import pytest
from aiohttp import web
from PIL import Image
from playwright.sync_api import Browser, Page, Response, sync_playwright
from pydicom.uid import HTJ2KLossless, JPEG2000Lossless, JPEGBaseline8Bit

from dicomweb.convert import convert
from dicomweb.local.emulators import Emulators
from tests.conftest import ROOT, Server, ThreadedHttpServer, blob_service, instance_blob, start_server
from tests.scanner_files import make_svs
from tests.wsi_factory import make_annotations, make_slide, srgb_profile

VIEWER = ROOT / "node_modules" / "dicom-microscopy-viewer" / "dist" / "dynamic-import"
CLIENT = ROOT / "node_modules" / "dicomweb-client" / "build"
DCMJS = ROOT / "node_modules" / "dcmjs" / "build"
SLIM = Path(__file__).with_name("slim.js")
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>slide</title>
<style>html, body { margin: 0 } #viewport { width: 1024px; height: 768px }</style>
<script src="/dicomweb-client/dicomweb-client.js"></script>
<script src="/dcmjs/dcmjs.js"></script>
<script src="/static/js/dicomMicroscopyViewer.min.js"></script>
</head><body><div id="viewport"></div>
<script type="module">
import * as slim from "/slim.js";
const params = new URLSearchParams(location.search);
window.viewerState = { status: "loading" };
try {
  const DMV = window.dicomMicroscopyViewer;
  const client = new DICOMwebClient.api.DICOMwebClient({ url: params.get("url") });
  const study = params.get("study");
  const metadata = await client.retrieveSeriesMetadata({ studyInstanceUID: study,
                                                         seriesInstanceUID: params.get("series") });
  const images = metadata.map((m) => new DMV.metadata.VLWholeSlideMicroscopyImage({ metadata: m }))
    .filter((image) => ["VOLUME", "THUMBNAIL"].includes(image.ImageType[2]));
  window.viewer = new DMV.viewer.VolumeImageViewer({ client, metadata: images });
  window.viewer.render({ container: "viewport" });
  window.viewerState = { status: "rendered", images: images.length };
  if (params.has("annotations")) {  // what Slim loads next: the study's reports and bulk annotations
    window.slim = { ...slim, client };
    document.body.addEventListener("dicommicroscopyviewer_roi_drawn",
                                   (event) => slim.addFinding(window.viewer, event.detail.payload));
    const rois = await slim.loadReports(client, window.viewer, study, images[0].FrameOfReferenceUID);
    const groups = await slim.loadAnnotationGroups(client, window.viewer, study);
    window.viewerState = { ...window.viewerState, rois, groups };
  }
} catch (error) {
  window.viewerState = { status: "error", message: String((error && error.stack) || error) };
}
</script></body></html>"""
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "Chromium is needed for the viewer tests: `bash .ci/run` installs Debian's chromium"
    return found


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """The viewer page and its scripts, laid out as Slim serves them (the viewer's workers load from /static/js)."""
    assert (VIEWER / "dicomMicroscopyViewer.min.js").exists(), "run `npm ci` for dicom-microscopy-viewer"

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_static("/static/js", VIEWER)
    app.router.add_static("/dicomweb-client", CLIENT)
    app.router.add_static("/dcmjs", DCMJS)
    app.router.add_get("/slim.js", lambda _: web.FileResponse(SLIM, headers={"content-type": "text/javascript"}))
    server = ThreadedHttpServer(app).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        running = playwright.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        yield running
        running.close()


class Exchange(NamedTuple):
    """One answer the page got from the service."""

    method: str
    status: int
    path: str  # after the service's base URL
    accept: str
    size: int  # body bytes of a successful GET, else 0


def _visit(browser: Browser, site: str, server: Server, study: str, series: str, *, frames: int,
           annotations: bool = False) -> tuple[Page, list[Exchange], list[str]]:
    """The slide open in a new page once ``frames`` frames came (and, with ``annotations``, once the study's
    annotations are loaded as Slim loads them); the page, the answers from the service and any failure, as they
    come. The caller closes the page."""
    origin = server.base_url.removesuffix("/v1")
    page = browser.new_page(viewport={"width": 1024, "height": 768})
    wire: list[Exchange] = []
    problems: list[str] = []

    def seen(response: Response) -> None:
        if response.url.startswith(origin):
            method = response.request.method
            wire.append(Exchange(method, response.status, response.url.removeprefix(server.base_url),
                                 response.request.headers.get("accept", ""),
                                 len(response.body()) if method == "GET" and response.ok else 0))

    page.on("response", seen)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("requestfailed", lambda r: problems.append(f"{r.url}: {r.failure}"))
    deadline = time.monotonic() + 60
    try:
        page.goto(f"{site}/?url={server.base_url}&study={study}&series={series}" + ("&annotations" * annotations))
        while True:
            state = page.evaluate("window.viewerState")
            assert state["status"] != "error", state
            drawn = sum("/frames/" in e.path and e.status == 200 for e in wire)
            if drawn >= frames and (not annotations or "rois" in state):
                break
            assert time.monotonic() < deadline, f"the slide did not open: {state} {wire} {problems}"
            page.wait_for_timeout(250)
    except BaseException:
        page.close()
        raise
    return page, wire, problems


def _screen(page: Page) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(page.screenshot(clip={"x": 0, "y": 0, "width": 1024,
                                                                  "height": 768}))).convert("RGB"))


@pytest.mark.parametrize(("syntax", "levels"), [(JPEGBaseline8Bit, 4), (JPEG2000Lossless, 3), (HTJ2KLossless, 3)],
                         ids=["jpeg-4-levels", "jpeg2000", "htj2k"])
def test_the_viewer_draws_the_slide_from_another_origin(server: Server, site: str, browser: Browser,
                                                        tmp_path: Path, syntax: str, levels: int) -> None:
    # HTJ2K: the viewer takes a codestream ending in FFD9 for JPEG 2000 and its OpenJPEG decoder reads it.
    files = make_slide(tmp_path, transfer_syntax=syntax, levels=levels, base_size=(2000, 1500))
    for file in files:
        response = httpx.post(f"{server.base_url}/studies", content=file.path.read_bytes(),
                              headers={"content-type": "application/dicom"}, timeout=60)
        assert response.status_code == 200, response.text
    origin = server.base_url.removesuffix("/v1")
    page, wire, problems = _visit(browser, site, server, files[0].study_uid, files[0].series_uid, frames=8)
    try:
        page.wait_for_timeout(3000)
        state = page.evaluate("window.viewerState")
        profiles = page.evaluate("window.viewer.getICCProfiles().map((p) => p.byteLength || p.length)")
        shot = _screen(page)
    finally:
        page.close()
    assert state == {"status": "rendered", "images": levels + 1}, state
    assert not problems, problems
    gets = [(e.status, e.path, e.accept) for e in wire if e.method == "GET"]
    assert all(status == 200 for status, _, _ in gets), gets
    assert len(profiles) >= levels and set(profiles) == {len(srgb_profile())}, "colour-managed with the inline profiles"
    assert not any("/bulkdata/" in url for _, url, _ in gets), "the profiles came inline with the metadata"
    frames = [i for i, (_, url, _) in enumerate(gets) if "/frames/" in url]
    # A quote makes Accept a non-safelisted header (Fetch §2.2.2): the browser sent each of these
    # cross-origin requests only after the service answered its preflight.
    assert site.split(":")[-1] != origin.split(":")[-1]
    assert frames and all('multipart/related; type="' in gets[i][2] for i in frames)
    # A drawn slide: the synthetic tissue texture fills the viewport in many colours.
    assert shot.std() > 30 and len(np.unique(shot.reshape(-1, 3)[::97], axis=0)) > 500


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The service on emulators of its own, whose rehydrations take a few seconds."""
    stack = Emulators(tmp_path_factory.mktemp("viewer-stack"), rehydrate_seconds=4)
    with ThreadPoolExecutor(1) as pool:  # Playwright's loop may run in this thread: provisioning runs its own
        settings = pool.submit(stack.start).result()
    server = start_server(settings, tmp_path_factory.mktemp("viewer-serve"))
    yield server
    server.stop()
    stack.stop()


def _open(browser: Browser, site: str, server: Server, study: str, series: str) -> tuple[dict, list, list]:
    """Open the slide; its state, the GETs the page sent to the service, and any failure."""
    page, wire, problems = _visit(browser, site, server, study, series, frames=4)
    try:
        page.wait_for_timeout(2000)
        state = page.evaluate("window.viewerState")
    finally:
        page.close()
    return state, [(e.status, e.path) for e in wire if e.method == "GET"], problems


def test_an_archived_slide_opens_from_its_online_levels_and_whole_once_rehydrated(
        archive: Server, site: str, browser: Browser, tmp_path: Path) -> None:
    """Series metadata lists the online levels only (labels, overviews, thumbnails and small levels stay hot), so
    the viewer builds its pyramid from them and never asks for an archived tile."""
    files = make_slide(tmp_path, levels=4, base_size=(2000, 1500))
    for file in files:
        assert httpx.post(f"{archive.base_url}/studies", content=file.path.read_bytes(),
                          headers={"content-type": "application/dicom"}, timeout=60).status_code == 200
    study, series = files[0].study_uid, files[0].series_uid
    blobs = blob_service(archive.env)
    for file in files[:2]:  # the two largest levels
        blobs.get_blob_client("dicom-instances", instance_blob(archive.env, study, series, file.sop_uid)
                              ).set_standard_blob_tier("Archive")
    query = f"{archive.base_url}/studies/{study}/series/{series}/instances"
    deadline = time.monotonic() + 30
    while sorted(i["00080056"]["Value"][0] for i in httpx.get(query).json()) != ["OFFLINE"] * 2 + ["ONLINE"] * 5:
        assert time.monotonic() < deadline, "the index did not learn the tiers"
        time.sleep(0.2)

    state, gets, problems = _open(browser, site, archive, study, series)
    assert state == {"status": "rendered", "images": 2 + 1}, state  # two levels and the thumbnail
    assert not problems, problems
    assert all(status == 200 for status, _ in gets), gets
    archived = {file.sop_uid for file in files[:2]}
    assert not any(uid in url for _, url in gets for uid in archived), "no request for an archived level"

    asked = httpx.post(f"{archive.base_url}/studies/{study}/series/{series}/rehydrate", json={"priority": "High"})
    assert asked.status_code == 202
    deadline = time.monotonic() + 60
    while httpx.get(asked.headers["location"]).json()["status"] != "done" or any(
            i["00080056"]["Value"][0] != "ONLINE" for i in httpx.get(query).json()):
        assert time.monotonic() < deadline, "the rehydration did not end"
        time.sleep(0.5)
    state, gets, problems = _open(browser, site, archive, study, series)
    assert state == {"status": "rendered", "images": 4 + 1}, state
    assert not problems and all(status == 200 for status, _ in gets), (problems, gets)


def test_the_viewer_draws_a_slide_converted_from_a_scanner_file(server: Server, site: str, browser: Browser,
                                                                 tmp_path: Path) -> None:
    """An Aperio SVS made DICOM by ``dicomweb convert`` (tiles copied as the scanner wrote them) opens and draws."""
    source = tmp_path / "slide.svs"
    make_svs(source, size=(2048, 1536), count=4)
    files = convert(source, tmp_path / "dicom")
    for path in files:
        assert httpx.post(f"{server.base_url}/studies", content=path.read_bytes(),
                          headers={"content-type": "application/dicom"}, timeout=60).status_code == 200
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    state, gets, problems = _open(browser, site, server, ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert state == {"status": "rendered", "images": 4 + 1}, state  # the levels and the thumbnail
    assert not problems and all(status == 200 for status, _ in gets), (problems, gets)


GREEN = np.array([0, 255, 0])  # slim.js STYLE: a drawn ROI's stroke
CYAN = np.array([0, 255, 255])  # slim.js GROUP_COLOURS: points


def _near(shot: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Where a screenshot's pixels are near ``colour`` (a pure colour the synthetic tissue never shows)."""
    return np.abs(shot.astype(int) - colour).max(axis=2) < 60


def _share(shot: np.ndarray, colour: np.ndarray) -> float:
    return float(_near(shot, colour).mean())


def test_slim_saves_a_drawn_annotation_and_shows_it_again_after_a_reload(server: Server, site: str, browser: Browser,
                                                                         tmp_path: Path) -> None:
    """A pathologist draws a polygon and saves: Slim stores a Comprehensive 3D SR (TID 1500) by STOW-RS. On the next
    visit Slim finds it by QIDO, retrieves the whole instance, and the same polygon is drawn over the slide."""
    files = make_slide(tmp_path, levels=3, base_size=(2000, 1500))
    for file in files:
        assert httpx.post(f"{server.base_url}/studies", content=file.path.read_bytes(),
                          headers={"content-type": "application/dicom"}, timeout=60).status_code == 200
    study, series = files[0].study_uid, files[0].series_uid
    page, wire, problems = _visit(browser, site, server, study, series, frames=4, annotations=True)
    try:
        assert page.evaluate("window.viewerState.rois") == 0
        page.wait_for_timeout(1500)
        before = _share(_screen(page), GREEN)
        page.evaluate("window.viewer.activateDrawInteraction({ geometryType: 'polygon' })")
        corners = [(380, 260), (640, 250), (660, 520), (400, 540)]
        for x, y in corners:
            page.mouse.click(x, y)
            page.wait_for_timeout(150)
        page.mouse.click(*corners[0])  # closes the ring
        page.wait_for_function("window.viewer.getAllROIs().length === 1", timeout=10_000)
        drawn = page.evaluate("window.viewer.getAllROIs()[0].scoord3d.graphicData")
        saved = page.evaluate("window.slim.saveReport(window.slim.client, window.viewer)")
    finally:
        page.close()
    assert before < 0.0005, before
    assert saved["rois"] == 1
    assert not problems, problems
    assert all(200 <= e.status < 300 for e in wire), wire
    assert [(e.method, e.status) for e in wire if e.method == "POST"] == [("POST", 200)], wire

    report = pydicom.dcmread(io.BytesIO(httpx.get(
        f"{server.base_url}/studies/{study}/series/{saved['seriesInstanceUID']}/instances/{saved['sopInstanceUID']}",
        headers={"accept": "application/dicom; transfer-syntax=*"}).content))
    assert report.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34" and report.Modality == "SR"
    assert report.PertinentOtherEvidenceSequence[0].ReferencedSeriesSequence[0].SeriesInstanceUID == series
    (measurements,) = [item for item in report.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "126010"]
    (group,) = measurements.ContentSequence
    (region,) = [item for item in group.ContentSequence if item.ValueType == "SCOORD3D"]
    assert region.GraphicType == "POLYGON" and np.allclose(np.reshape(region.GraphicData, (-1, 3)), drawn, atol=1e-6)
    (finding,) = [item for item in group.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "121071"]
    assert finding.ConceptCodeSequence[0].CodeValue == "85756007", "the finding chosen before drawing"

    page, wire, problems = _visit(browser, site, server, study, series, frames=4, annotations=True)
    try:
        assert page.evaluate("window.viewerState.rois") == 1
        page.wait_for_timeout(1500)
        shown = page.evaluate("window.viewer.getAllROIs().map((roi) => roi.scoord3d.graphicData)")
        shot = _screen(page)
    finally:
        page.close()
    assert not problems, problems
    assert all(200 <= e.status < 300 for e in wire), wire
    assert len(shown) == 1 and np.allclose(shown[0], drawn, atol=1e-6), (shown, drawn)
    after = _share(shot, GREEN)
    assert after > 0.002, f"the polygon is drawn again ({after:.4f} of the screen)"
    rows, columns = np.nonzero(_near(shot, GREEN))
    xs, ys = [x for x, _ in corners], [y for _, y in corners]
    assert abs(columns.min() - min(xs)) < 8 and abs(columns.max() - max(xs)) < 8, "where it was drawn"
    assert abs(rows.min() - min(ys)) < 8 and abs(rows.max() - max(ys)) < 8, "where it was drawn"
    sr_gets = [e.path for e in wire if e.method == "GET" and saved["sopInstanceUID"] in e.path]
    assert sr_gets == [f"/studies/{study}/series/{saved['seriesInstanceUID']}/instances/{saved['sopInstanceUID']}"]


def test_a_bulk_annotation_series_is_listed_and_drawn_from_its_bulk_data(server: Server, site: str, browser: Browser,
                                                                         tmp_path: Path) -> None:
    """AI results as Microscopy Bulk Simple Annotations (highdicom: 100,000 nuclei and 2,000 tumour polygons):
    Slim finds the ANN series by QIDO and reads its series metadata, in which the coordinates and polygon indices
    are BulkDataURIs; the viewer fetches them, whole, and draws every group over the slide."""
    files = make_slide(tmp_path, levels=3, base_size=(2000, 1500))
    annotations = make_annotations(files[0], tmp_path / "ann.dcm", points=100_000, polygons=2_000)
    for file in [*files, annotations]:
        assert httpx.post(f"{server.base_url}/studies", content=file.path.read_bytes(),
                          headers={"content-type": "application/dicom"}, timeout=60).status_code == 200
    items = pydicom.dcmread(annotations.path).AnnotationGroupSequence
    values = {"006A0002.0.00660016": items[0].PointCoordinatesData,
              "006A0002.1.00660016": items[1].PointCoordinatesData,
              "006A0002.1.00660040": items[1].LongPrimitivePointIndexList}
    page, wire, problems = _visit(browser, site, server, files[0].study_uid, files[0].series_uid, frames=4,
                                   annotations=True)
    try:
        groups = page.evaluate("window.viewerState.groups")
        deadline = time.monotonic() + 60
        while sum("/bulkdata/" in e.path for e in wire) < len(values):
            assert time.monotonic() < deadline, f"the viewer did not fetch the bulk data: {wire} {problems}"
            page.wait_for_timeout(250)
        page.wait_for_timeout(3000)
        shot = _screen(page)
    finally:
        page.close()
    assert not problems, problems
    assert all(200 <= e.status < 300 for e in wire), wire
    assert [(g["label"], g["graphicType"], g["count"]) for g in groups] == [("nuclei", "POINT", 100_000),
                                                                         ("tumour", "POLYGON", 2_000)]
    series = f"/studies/{annotations.study_uid}/series/{annotations.series_uid}"
    (metadata_size,) = [e.size for e in wire if e.path == f"{series}/metadata"]
    assert metadata_size < 8_000, f"{metadata_size} bytes: nothing of the 1.2 MB of bulk data is inline"
    fetched = {e.path.rsplit("/bulkdata/", 1)[1]: e.size for e in wire if "/bulkdata/" in e.path}
    assert set(fetched) == set(values), fetched
    assert all(len(values[path]) < fetched[path] < len(values[path]) + 400 for path in values), fetched  # whole
    # The slide fills the viewport, centred; the nuclei lie in one half of its central quarter, the tumour
    # regions in the other.
    middles = []
    for colour, what in ((CYAN, "nuclei"), (GREEN, "tumour regions")):
        near = _near(shot, colour)
        assert 0.02 < near.mean() < 0.2, f"the {what} are drawn ({near.mean():.4f} of the screen)"
        rows, columns = np.nonzero(near)
        assert abs(np.median(rows) - 384) < 60, f"the {what} are in the middle of the slide"
        middles.append(np.median(columns))
    assert abs(middles[0] - middles[1]) > 150 and abs(np.mean(middles) - 512) < 60, middles
