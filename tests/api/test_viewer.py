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
from typing import Iterator

import httpx
import numpy as np
import pydicom
import pytest
from aiohttp import web
from PIL import Image
from playwright.sync_api import Browser, sync_playwright
from pydicom.uid import HTJ2KLossless, JPEG2000Lossless, JPEGBaseline8Bit

from dicomweb.convert import convert
from dicomweb.local.emulators import Emulators
from tests.conftest import ROOT, Server, ThreadedHttpServer, blob_service, instance_blob, start_server
from tests.scanner_files import make_svs
from tests.wsi_factory import make_slide, srgb_profile

VIEWER = ROOT / "node_modules" / "dicom-microscopy-viewer" / "dist" / "dynamic-import"
CLIENT = ROOT / "node_modules" / "dicomweb-client" / "build"
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>slide</title>
<style>html, body { margin: 0 } #viewport { width: 1024px; height: 768px }</style>
<script src="/dicomweb-client/dicomweb-client.js"></script>
<script src="/static/js/dicomMicroscopyViewer.min.js"></script>
</head><body><div id="viewport"></div>
<script type="module">
const params = new URLSearchParams(location.search);
window.viewerState = { status: "loading" };
try {
  const DMV = window.dicomMicroscopyViewer;
  const client = new DICOMwebClient.api.DICOMwebClient({ url: params.get("url") });
  const metadata = await client.retrieveSeriesMetadata({
    studyInstanceUID: params.get("study"), seriesInstanceUID: params.get("series") });
  const images = metadata.map((m) => new DMV.metadata.VLWholeSlideMicroscopyImage({ metadata: m }))
    .filter((image) => ["VOLUME", "THUMBNAIL"].includes(image.ImageType[2]));
  window.viewer = new DMV.viewer.VolumeImageViewer({ client, metadata: images });
  window.viewer.render({ container: "viewport" });
  window.viewerState = { status: "rendered", images: images.length };
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
    server = ThreadedHttpServer(app).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        running = playwright.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        yield running
        running.close()


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
    page = browser.new_page(viewport={"width": 1024, "height": 768})
    wire: list[tuple[str, int, str, str]] = []
    problems: list[str] = []
    page.on("response", lambda r: wire.append((r.request.method, r.status, r.url.removeprefix(server.base_url),
                                               r.request.headers.get("accept", ""))) if r.url.startswith(origin) else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("requestfailed", lambda r: problems.append(f"{r.url}: {r.failure}"))
    try:
        page.goto(f"{site}/?url={server.base_url}&study={files[0].study_uid}&series={files[0].series_uid}")
        deadline = time.monotonic() + 60
        while sum("/frames/" in url and status == 200 for _, status, url, _ in wire) < 8:
            assert time.monotonic() < deadline, f"too few frames drawn: {wire} {problems}"
            page.wait_for_timeout(250)
        page.wait_for_timeout(3000)
        state = page.evaluate("window.viewerState")
        profiles = page.evaluate("window.viewer.getICCProfiles().map((p) => p.byteLength || p.length)")
        shot = np.asarray(Image.open(io.BytesIO(page.screenshot(clip={"x": 0, "y": 0, "width": 1024,
                                                                        "height": 768}))).convert("RGB"))
    finally:
        page.close()
    assert state == {"status": "rendered", "images": levels + 1}, state
    assert not problems, problems
    gets = [(status, url, accept) for method, status, url, accept in wire if method == "GET"]
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
    origin = server.base_url.removesuffix("/v1")
    page = browser.new_page(viewport={"width": 1024, "height": 768})
    wire: list[tuple[str, int, str]] = []
    problems: list[str] = []
    page.on("response", lambda r: wire.append((r.request.method, r.status, r.url.removeprefix(server.base_url)))
            if r.url.startswith(origin) else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("requestfailed", lambda r: problems.append(f"{r.url}: {r.failure}"))
    try:
        page.goto(f"{site}/?url={server.base_url}&study={study}&series={series}")
        deadline = time.monotonic() + 60
        while sum("/frames/" in url and status == 200 for _, status, url in wire) < 4:
            assert time.monotonic() < deadline, f"too few frames drawn: {wire} {problems}"
            page.wait_for_timeout(250)
        page.wait_for_timeout(2000)
        state = page.evaluate("window.viewerState")
    finally:
        page.close()
    return state, [(status, url) for method, status, url in wire if method == "GET"], problems


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
