"""Thumbnails of studies, series and instances (PS3.18 §10.4.1.1.4), slide-aware.

For a slide the thumbnail is its THUMBNAIL image, else its OVERVIEW, else a rendering of
the smallest VOLUME level; never the LABEL for a study or series (a label carries patient
identifiers in its pixels). Other series show their middle instance. Each instance's
thumbnail is rendered once and kept as a PNG sidecar of its generation (hot tier, like
the other sidecars), so a worklist of slides loads from small blobs; other media types
are re-encoded from that PNG.
"""

from __future__ import annotations

import io

from PIL import Image

from dicomweb import cpu, rendered, retrieve
from dicomweb.dicom import render
from dicomweb.dicom.render import RenderParams, Viewport
from dicomweb.dicom.availability import ONLINE
from dicomweb.errors import NotFound
from dicomweb.service import Service
from dicomweb.storage.cosmos import Document

#: The box a default thumbnail fits in.
SIDE = 256
#: Whole-slide image flavours (Image Type value 3) in the order a study or series thumbnail takes them.
_PREFERENCE = ("THUMBNAIL", "OVERVIEW", "VOLUME")


def pick(docs: list[Document]) -> Document:
    """The instance whose thumbnail stands for ``docs`` (a series, or a study's instances)."""
    pictures = [d for d in docs if d.get("numberOfFrames") and d.get("imageType") != "LABEL"]
    for flavour in _PREFERENCE:
        found = [d for d in pictures if d.get("imageType") == flavour]
        if found:
            return min(found, key=lambda d: (d.get("availability", ONLINE) != ONLINE, _pixels(d)))  # online first
    if not pictures:
        raise NotFound("nothing here has pixels to make a thumbnail of")
    pictures.sort(key=lambda d: (d["seriesInstanceUID"], d.get("instanceNumber") or 0, d["sopInstanceUID"]))
    return pictures[len(pictures) // 2]


def _pixels(doc: Document) -> int:
    size = doc.get("totalPixelMatrix") or [0, 0]
    return int(size[0] or 0) * int(size[1] or 0)


def _reencode(png: bytes, params: RenderParams) -> bytes:
    if params.media_type == render.PNG:
        return png
    image = Image.open(io.BytesIO(png))
    image.load()
    out = io.BytesIO()
    options = {"quality": params.quality} if params.media_type in (render.JPEG, render.WEBP) else {}
    image.save(out, {render.JPEG: "JPEG", render.GIF: "GIF", render.WEBP: "WEBP"}[params.media_type], **options)
    return out.getvalue()


def standard(params: RenderParams) -> bool:
    """Whether ``params`` ask for the kept thumbnail (only the media type and quality chosen)."""
    return params.viewport is None and params.window is None and params.icc == "no"


async def of_instance(service: Service, doc: Document, params: RenderParams) -> bytes:
    """The thumbnail of one instance: the kept PNG (made on first request), or a rendering for other parameters."""
    if not standard(params):
        viewport = params.viewport or Viewport(SIDE, SIDE)
        return await rendered.instance(service, doc, RenderParams(params.media_type, params.quality, viewport,
                                                                   params.icc, params.window))
    name = retrieve.location(doc).sidecar("thumbnail")
    try:
        png = await service.blobs.sidecars.get(name)
    except NotFound:
        png = await rendered.instance(service, doc, RenderParams(render.PNG, viewport=Viewport(SIDE, SIDE)))
        await service.blobs.sidecars.put(name, png)
    return await cpu.run(_reencode, png, params)
