"""Rendered and thumbnail resources (PS3.18 §10.4.1.1.3 and §10.4.1.1.4)."""

from typing import AsyncIterator

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from dicomweb import rendered, retrieve, thumbnails
from dicomweb.api import conditional
from dicomweb.api.http import endpoint, streaming
from dicomweb.api.retrieve import INSTANCE, SERIES, STUDY
from dicomweb.auth import Permission
from dicomweb.dicom import media, render
from dicomweb.dicom.multipart import multipart_body, write_multipart
from dicomweb.errors import BadRequest, NotAcceptable
from dicomweb.service import Service
from dicomweb.storage.cosmos import Document

blueprint = func.Blueprint()


def _params(req: Request, single: bool) -> tuple[media.Choice, render.RenderParams]:
    query = req.query_params
    repeated = sorted({key for key in query.keys() if len(query.getlist(key)) > 1})
    if repeated:
        raise BadRequest(f"the query parameter {repeated[0]} is given more than once")
    choice = media.negotiate_rendered(req.headers.get("accept"), render.MEDIA_TYPES, single)
    return choice, render.parse_params(dict(query), choice.media_type)


def _tag(docs: list[Document], what: str, choice: media.Choice, params: render.RenderParams) -> str:
    return conditional.etag(what, choice.multipart, params, *(d["generation"] for d in docs))


def _answer(images: list[bytes], choice: media.Choice, tag: str, cache_control: str) -> Response:
    headers = conditional.headers(tag, cache_control)
    if not choice.multipart:
        return Response(images[0], media_type=choice.media_type, headers=headers)
    boundary = conditional.boundary(tag)
    body = multipart_body([({"Content-Type": choice.media_type}, image) for image in images], boundary)
    return Response(body, media_type=f'multipart/related; type="{choice.media_type}"; boundary={boundary}',
                    headers=headers)


async def _rendered_instances(req: Request, service: Service) -> Response:
    params_ = req.path_params
    docs = await retrieve.instance_documents(service, params_["study"], params_.get("series"),
                                             params_.get("instance"))
    docs = [d for d in docs if d.get("numberOfFrames")]
    if not docs:
        raise NotAcceptable("nothing here has pixel data, so nothing is rendered")
    single = params_.get("instance") is not None
    choice, params = _params(req, single)
    tag = _tag(docs, "rendered", choice, params)
    if (unchanged := conditional.not_modified(req, tag, conditional.IMMUTABLE)) is not None:
        return unchanged
    if single:
        return _answer([await rendered.instance(service, docs[0], params)], choice, tag, conditional.IMMUTABLE)
    # Every instance is planned (and refused) before the answer starts; each is drawn as its part goes out.
    plans = [await rendered.prepare(service, doc, params) for doc in docs]

    async def parts() -> AsyncIterator[tuple[dict[str, str], bytes]]:
        for prepared in plans:
            yield {"Content-Type": choice.media_type}, await rendered.draw(service, prepared, params)

    return await streaming(write_multipart(parts(), conditional.boundary(tag)),
                           f'multipart/related; type="{choice.media_type}"; boundary={conditional.boundary(tag)}',
                           conditional.headers(tag, conditional.IMMUTABLE))


@endpoint(blueprint, "rendered_study", STUDY + "/rendered", ["GET"], Permission.READ)
async def rendered_study(req: Request, service: Service) -> Response:
    """Every instance of a study with pixel data, rendered (multipart)."""
    return await _rendered_instances(req, service)


@endpoint(blueprint, "rendered_series", SERIES + "/rendered", ["GET"], Permission.READ)
async def rendered_series(req: Request, service: Service) -> Response:
    """Every instance of a series with pixel data, rendered (multipart)."""
    return await _rendered_instances(req, service)


@endpoint(blueprint, "rendered_instance", INSTANCE + "/rendered", ["GET"], Permission.READ)
async def rendered_instance(req: Request, service: Service) -> Response:
    """One instance rendered: a tiled level composed from the frames the viewport needs."""
    return await _rendered_instances(req, service)


async def _rendered_frames(req: Request, service: Service, viewport: render.Viewport | None) -> Response:
    p = req.path_params
    numbers = retrieve.parse_frame_list(p["frames"], service.settings.max_frames_per_request)
    cached = await retrieve.frame_index(service, p["study"], p["series"], p["instance"])
    retrieve.check_frames(cached.frames, numbers)
    choice, params = _params(req, len(numbers) == 1)
    if viewport is not None and params.viewport is None:
        params = render.RenderParams(params.media_type, params.quality, viewport, params.icc, params.window)
    tag = conditional.etag("rendered-frames", cached.frames.generation, ",".join(map(str, numbers)),
                           choice.multipart, params)
    if (unchanged := conditional.not_modified(req, tag, conditional.IMMUTABLE)) is not None:
        return unchanged
    return _answer(await rendered.frames(service, cached, numbers, params), choice, tag, conditional.IMMUTABLE)


@endpoint(blueprint, "rendered_frames", INSTANCE + "/frames/{frames}/rendered", ["GET"], Permission.READ)
async def rendered_frames(req: Request, service: Service) -> Response:
    """Frames rendered, each on its own; several as a multipart answer."""
    return await _rendered_frames(req, service, None)


@endpoint(blueprint, "frame_thumbnail", INSTANCE + "/frames/{frames}/thumbnail", ["GET"], Permission.READ)
async def frame_thumbnail(req: Request, service: Service) -> Response:
    """Frames rendered to fit the thumbnail box unless a viewport says otherwise."""
    return await _rendered_frames(req, service, render.Viewport(thumbnails.SIDE, thumbnails.SIDE))


async def _thumbnail(req: Request, service: Service) -> Response:
    p = req.path_params
    docs = await retrieve.instance_documents(service, p["study"], p.get("series"), p.get("instance"))
    doc = docs[0] if p.get("instance") else thumbnails.pick(docs)
    choice, params = _params(req, True)
    # Which instance stands for a study or series can change as instances arrive: revalidate those.
    cache_control = conditional.IMMUTABLE if p.get("instance") else conditional.REVALIDATE
    tag = _tag([doc], "thumbnail", choice, params)
    if (unchanged := conditional.not_modified(req, tag, cache_control)) is not None:
        return unchanged
    kept = service.answers.get(tag)
    if kept is None:
        kept = await thumbnails.of_instance(service, doc, params)
        service.answers.put(tag, kept)
    return _answer([kept], choice, tag, cache_control)


@endpoint(blueprint, "study_thumbnail", STUDY + "/thumbnail", ["GET"], Permission.READ)
async def study_thumbnail(req: Request, service: Service) -> Response:
    """The study's thumbnail: a slide's thumbnail, overview or smallest level; never a label."""
    return await _thumbnail(req, service)


@endpoint(blueprint, "series_thumbnail", SERIES + "/thumbnail", ["GET"], Permission.READ)
async def series_thumbnail(req: Request, service: Service) -> Response:
    """The series' thumbnail, chosen as the study's is."""
    return await _thumbnail(req, service)


@endpoint(blueprint, "instance_thumbnail", INSTANCE + "/thumbnail", ["GET"], Permission.READ)
async def instance_thumbnail(req: Request, service: Service) -> Response:
    """The instance's own thumbnail (a label's too, when asked for by its UID)."""
    return await _thumbnail(req, service)
