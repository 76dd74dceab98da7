"""Rendered frames and instances (PS3.18 §10.4.1.1.3), composed from the frames they need.

A rendering is planned before any pixel is read (region, output size, tiles; 400 beyond
DICOMWEB_MAX_RENDERED_PIXELS or DICOMWEB_MAX_RENDERED_FRAMES), so every failure is a
status. A whole-slide VOLUME level asked for at a small viewport is rendered from the
smallest level of its pyramid that still has the detail asked for: the overview of a
4 GB base level reads a few tiles of a small level, never the base. Memory stays bounded
by the output canvas whatever the size of the level.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from dicomweb import cpu, retrieve, transcode
from dicomweb.dicom import codecs, render
from dicomweb.dicom.availability import ONLINE
from dicomweb.dicom.codecs import CodecError, FrameRefused, PixelFormat
from dicomweb.dicom.render import Geometry, Plan, RenderParams
from dicomweb.errors import NotAcceptable, UndecodableFrame
from dicomweb.service import CachedIndex, Service
from dicomweb.storage.cosmos import Document

#: Attributes :func:`dicomweb.dicom.render.display` reads (modality LUT and VOI window, PS3.3 §C.11).
_DISPLAY_TAGS = ("00281050", "00281051", "00281052", "00281053", "00281056")
_ICC = "00282000"
_OPTICAL_PATHS = "00480105"


@dataclass(frozen=True)
class Source:
    """What rendering needs of one generation, read from its metadata sidecar once per process."""

    fmt: PixelFormat
    geometry: Geometry
    display: dict[str, Any]
    #: The ICC profile's bytes, or where to read them (offset, length) when the metadata names a BulkDataURI.
    icc: bytes | tuple[int, int] | None


def _icc(sidecar: dict[str, Any]) -> bytes | tuple[int, int] | None:
    """The instance's ICC profile (PS3.3 §C.11.15): in its first optical path (WSI) or at the top level."""
    dataset = sidecar["dataset"]
    candidates = [(_ICC, dataset.get(_ICC))]
    paths = dataset.get(_OPTICAL_PATHS, {}).get("Value") or []
    if paths:
        candidates.insert(0, (f"{_OPTICAL_PATHS}.0.{_ICC}", paths[0].get(_ICC)))
    for path, element in candidates:
        if not element:
            continue
        if "InlineBinary" in element:
            return base64.b64decode(element["InlineBinary"])
        span = sidecar["bulk"].get(path)
        if span:
            return span[0], span[1]
    return None


def _source(raw: bytes, frames: int) -> Source:
    sidecar = json.loads(raw)
    dataset = sidecar["dataset"]
    try:
        fmt = PixelFormat.from_json(dataset)
    except CodecError as exc:
        raise NotAcceptable(f"the instance cannot be rendered: {exc}") from None
    return Source(fmt, render.geometry(dataset, frames), {t: dataset[t] for t in _DISPLAY_TAGS if t in dataset},
                  _icc(sidecar))


async def source(service: Service, cached: CachedIndex) -> Source:
    """The rendering facts of a generation (cached with its frame offset record)."""
    if cached.render is None:
        raw = await service.blobs.sidecars.get(cached.location.sidecar("json"))
        cached.render = await cpu.run(_source, raw, len(cached.frames))
        cached.pixels = cached.pixels or cached.render.fmt  # transcodes need no second parse of the sidecar
    return cached.render


async def _profile(service: Service, cached: CachedIndex, src: Source, params: RenderParams) -> bytes | None:
    """The instance's ICC profile when the rendering uses it (read from the file when it is no inline value)."""
    if params.icc == "no":
        return None
    if isinstance(src.icc, tuple):
        return await service.blobs.instances.read_range(cached.location, *src.icc)
    return src.icc


def _shown(data: bytes, syntax: str, src: Source, window: render.Window | None) -> np.ndarray:
    try:
        image = codecs.decode(data, syntax, src.fmt)
    except FrameRefused as exc:
        raise UndecodableFrame(f"a frame is not rendered: {exc}") from None
    except CodecError as exc:
        raise NotAcceptable(f"a frame cannot be rendered: {exc}") from None
    return render.display(image, src.fmt, src.display, window)


def _tile(canvas: np.ndarray, data: bytes, syntax: str, src: Source, window: render.Window | None,
          column: int, row: int, plan: Plan) -> None:
    render.paste(canvas, _shown(data, syntax, src, window), column, row, src.geometry, plan)


def _frame(data: bytes, syntax: str, src: Source, params: RenderParams, plan: Plan, profile: bytes | None) -> bytes:
    """One frame rendered in one job: decoded, shown, cut and scaled when the viewport asks, encoded."""
    shown = _shown(data, syntax, src, params.window)
    if plan.region != (0, 0, src.fmt.columns, src.fmt.rows) or plan.size != (src.fmt.columns, src.fmt.rows):
        canvas = _canvas(src, plan)
        render.paste(canvas, shown, 0, 0, src.geometry, plan)
        shown = canvas
    return render.encode(render.flipped(shown, plan.flip), params, profile)


async def _compose(service: Service, cached: CachedIndex, src: Source, plan: Plan, params: RenderParams,
                   profile: bytes | None) -> bytes:
    """Read the plan's tiles, paste each into an output-sized canvas as it arrives, encode the canvas."""
    loc = cached.location
    canvas = _canvas(src, plan)
    numbers = [frame for frame, _, _ in plan.tiles]
    places = {frame: (column, row) for frame, column, row in plan.tiles}
    syntax = cached.frames.transfer_syntax

    async def paste(batch: list[tuple[int, bytes]]) -> None:
        await cpu.run_all((_tile, (canvas, data, syntax, src, params.window, *places[number], plan))
                          for number, data in batch)

    batch: list[tuple[int, bytes]] = []
    read = 0
    async for data in retrieve.read_frames(service, loc.study, loc.series, loc.sop, numbers):
        batch.append((numbers[read], data))
        read += 1
        if len(batch) >= cpu.WORKERS:
            await paste(batch)
            batch = []
    await paste(batch)
    return await cpu.run(render.encode, render.flipped(canvas, plan.flip), params, profile)


async def _level(service: Service, doc: Document, cached: CachedIndex, src: Source,
                 plan: Plan) -> tuple[CachedIndex, Source, Plan]:
    """The smallest level of the instance's pyramid with at least the detail ``plan`` needs, and the plan there."""
    size = doc.get("totalPixelMatrix")
    need = plan.size[0] / plan.region[2]
    if doc.get("imageType") != "VOLUME" or not size or need >= 1:
        return cached, src, plan
    best: tuple[float, Document] | None = None
    for other in await service.index.instances(doc["studyInstanceUID"], doc["seriesInstanceUID"]):
        other_size = other.get("totalPixelMatrix")
        if (other.get("imageType") != "VOLUME" or not other_size or other["sopInstanceUID"] == doc["sopInstanceUID"]
                or other.get("frameOfReferenceUID") != doc.get("frameOfReferenceUID")
                or other.get("availability", ONLINE) != ONLINE):  # an archived level: a hot one serves instead
            continue
        factor = other_size[0] / size[0]
        if abs(other_size[1] / size[1] - factor) > 0.02 * factor or factor >= 1 or factor < need:
            continue
        if best is None or factor < best[0]:
            best = (factor, other)
    if best is None:
        return cached, src, plan
    factor, other = best
    level = await retrieve.frame_index(service, other["studyInstanceUID"], other["seriesInstanceUID"],
                                       other["sopInstanceUID"])
    level_src = await source(service, level)
    return level, level_src, render.scaled(plan, factor, level_src.geometry)


@dataclass(frozen=True)
class Prepared:
    """A rendering of one instance, planned and checked: what :func:`draw` reads and composes."""

    cached: CachedIndex
    source: Source
    plan: Plan
    #: The instance's own profile (a smaller pyramid level may be read, but the asked instance's profile applies).
    profile: bytes | None


async def prepare(service: Service, doc: Document, params: RenderParams) -> Prepared:
    """Plan the rendered instance (the whole image or the viewport's region, at the viewport's size) on the
    smallest pyramid level that has the detail; 400 beyond the limits, before any frame is read."""
    settings = service.settings
    cached = await retrieve.frame_index(service, doc["studyInstanceUID"], doc["seriesInstanceUID"],
                                        doc["sopInstanceUID"])
    src = await source(service, cached)
    full = render.plan(src.geometry, params.viewport, settings.max_rendered_pixels)
    profile = await _profile(service, cached, src, params)
    level, level_src, plan = await _level(service, doc, cached, src, full)
    render.check_budget(len(plan.tiles), settings.max_rendered_frames)
    _check_frame_size(service, level_src)
    return Prepared(level, level_src, plan, profile)


async def draw(service: Service, prepared: Prepared, params: RenderParams) -> bytes:
    """The prepared rendering's image."""
    return await _compose(service, prepared.cached, prepared.source, prepared.plan, params, prepared.profile)


async def instance(service: Service, doc: Document, params: RenderParams) -> bytes:
    """The rendered instance, planned and drawn."""
    return await draw(service, await prepare(service, doc, params), params)


def _check_frame_size(service: Service, src: Source) -> None:
    """A frame is decoded whole whatever the viewport: one larger than the service decodes is not rendered."""
    if not transcode.decodable(service, src.fmt):
        raise NotAcceptable(f"frames of {src.fmt.columns}×{src.fmt.rows} pixels are larger than the service decodes "
                            f"({service.settings.max_rendered_pixels} pixels, DICOMWEB_MAX_RENDERED_PIXELS): "
                            "retrieve them as stored")


def _canvas(src: Source, plan: Plan) -> np.ndarray:
    """The output image before any tile: white for colour (the glass of a slide), black for monochrome."""
    if src.fmt.samples == 3:
        return np.full((plan.size[1], plan.size[0], 3), 255, np.uint8)
    return np.zeros((plan.size[1], plan.size[0]), np.uint8)


async def frames(service: Service, cached: CachedIndex, numbers: list[int], params: RenderParams) -> list[bytes]:
    """Each requested frame rendered on its own (the viewport applies to the frame), in order."""
    src = await source(service, cached)
    _check_frame_size(service, src)
    one = Geometry.single(src.fmt.columns, src.fmt.rows)
    frame_src = Source(src.fmt, one, src.display, src.icc)
    plan = render.plan(one, params.viewport, service.settings.max_rendered_pixels, 1)
    profile = await _profile(service, cached, src, params)
    loc = cached.location
    out = []
    async for data in retrieve.read_frames(service, loc.study, loc.series, loc.sop, numbers):
        out.append(await cpu.run(_frame, data, cached.frames.transfer_syntax, frame_src, params, plan, profile))
    return out
