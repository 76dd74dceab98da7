"""WADO-RS functions (PS3.18 §10.4): instances, metadata, frames and bulk data."""

from typing import AsyncIterator

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response, StreamingResponse

from dicomweb import availability, records, retrieve, transcode
from dicomweb.api import conditional
from dicomweb.api.http import DICOM_JSON, base_url, endpoint, primed, rehydration_url, streaming, warning_header
from dicomweb.auth import Permission
from dicomweb.dicom import media
from dicomweb.dicom.availability import ONLINE
from dicomweb.dicom.multipart import multipart_body, new_boundary, write_multipart
from dicomweb.errors import NotAcceptable
from dicomweb.service import Service
from dicomweb.storage.cosmos import Document

blueprint = func.Blueprint()

STUDY = "studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{instance}"
#: Frame and bulk data answers up to this size go out in one piece (one write, a Content-Length); larger ones
#: stream.
WHOLE_ANSWER_BYTES = 8 * 1024 * 1024


def _uids(req: Request) -> tuple[str, str | None, str | None]:
    params = req.path_params
    return params["study"], params.get("series"), params.get("instance")


def _multipart_type(payload: str, boundary: str) -> str:
    return f'multipart/related; type="{payload}"; boundary={boundary}'


@endpoint(blueprint, "retrieve_study", STUDY, ["GET"], Permission.READ)
async def retrieve_study(req: Request, service: Service) -> Response:
    """All instances of a study."""
    return await _instances(req, service)


@endpoint(blueprint, "retrieve_series", SERIES, ["GET"], Permission.READ)
async def retrieve_series(req: Request, service: Service) -> Response:
    """All instances of a series."""
    return await _instances(req, service)


@endpoint(blueprint, "retrieve_instance", INSTANCE, ["GET"], Permission.READ)
async def retrieve_instance(req: Request, service: Service) -> Response:
    """One instance, multipart or single-part ``application/dicom``."""
    return await _instances(req, service)


async def _instances(req: Request, service: Service) -> Response:
    study, series, instance = _uids(req)
    docs = await retrieve.instance_documents(service, study, series, instance)
    choice = await transcode.choose_instances(service, docs, req.headers.get("accept"),
                                              single_allowed=instance is not None)
    if not choice.multipart:
        syntax, size, body = await transcode.instance(service, docs[0], choice.transfer_syntax)
        return await streaming(body, f"{media.DICOM}; transfer-syntax={syntax}",
                               {"content-length": str(size)} if size is not None else None)
    await retrieve.check_readable(service, docs)

    async def parts() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        for doc in docs:
            syntax, size, body = await transcode.instance(service, doc, choice.transfer_syntax)
            headers = {"Content-Type": f"{media.DICOM}; transfer-syntax={syntax}"}
            if size is not None:
                headers["Content-Length"] = str(size)
            yield headers, body

    boundary = new_boundary()
    return await streaming(write_multipart(parts(), boundary), _multipart_type(media.DICOM, boundary))


@endpoint(blueprint, "study_metadata", STUDY + "/metadata", ["GET"], Permission.READ)
async def study_metadata(req: Request, service: Service) -> Response:
    """Metadata of every instance of a study."""
    return await _metadata(req, service)


@endpoint(blueprint, "series_metadata", SERIES + "/metadata", ["GET"], Permission.READ)
async def series_metadata(req: Request, service: Service) -> Response:
    """Metadata of every instance of a series."""
    return await _metadata(req, service)


@endpoint(blueprint, "instance_metadata", INSTANCE + "/metadata", ["GET"], Permission.READ)
async def instance_metadata(req: Request, service: Service) -> Response:
    """Metadata of one instance."""
    return await _metadata(req, service)


async def _metadata(req: Request, service: Service) -> Response:
    """A DICOM JSON array, instance by instance, BulkDataURIs made absolute; revalidated by ETag, gzip on request."""
    if not media.accepts_json(req.headers.get("accept")):
        raise NotAcceptable(f"metadata is served as {DICOM_JSON}")
    study, series, instance = _uids(req)
    docs = await retrieve.instance_documents(service, study, series, instance)
    warning = None
    if instance is None:
        docs, warning = await _online(req, service, docs)
    base = base_url(req, service.settings)
    compress = media.accepts_gzip(req.headers.get("accept-encoding"))
    tag = conditional.etag("metadata", base, compress, warning or "",
                           *(f"{d['generation']}:{d.get('availability', ONLINE)}" for d in docs))
    vary = "Accept, Accept-Encoding"
    if (unchanged := conditional.not_modified(req, tag, conditional.REVALIDATE, vary)) is not None:
        return unchanged
    headers = conditional.headers(tag, conditional.REVALIDATE, vary)
    if warning:
        headers["warning"] = warning_header(warning)
    if compress:
        headers["content-encoding"] = "gzip"
    kept = service.answers.get(tag)
    if kept is not None:
        return Response(kept, media_type=DICOM_JSON, headers=headers)

    async def instances() -> AsyncIterator[bytes]:
        separator = b"["
        async for doc, sidecar in retrieve.metadata(service, docs):
            url = f"{base}/studies/{doc['studyInstanceUID']}/series/{doc['seriesInstanceUID']}/instances/{doc['sopInstanceUID']}"
            yield separator + records.served_metadata(sidecar, url, doc.get("availability", ONLINE))
            separator = b","
        yield b"]"

    return await streaming(_kept(service, tag, retrieve.gzipped(instances()) if compress else instances()),
                           DICOM_JSON, headers)


#: SOP Instance UIDs a Warning names of the instances left out of series or study metadata.
NAMED_LEFT_OUT = 10


async def _online(req: Request, service: Service, docs: list[Document]) -> tuple[list[Document], str | None]:
    """The instances of series or study metadata that are online, and a Warning naming those left out.

    A viewer builds a slide's pyramid from series metadata and reads tiles of whatever
    level it lists: leaving out the levels whose bytes are offline (checked against their
    blobs) lets an archived slide open from its hot levels (labels, overviews and small
    levels stay hot) with no failed request. QIDO still lists every instance with its
    availability, and once rehydrated the levels are listed again (the ETag changes). When
    none is online, the answer is the refusal of a retrieve (409 OFFLINE, 503 NEARLINE).
    """
    left_out = await availability.confirm(service, docs)
    if not left_out:
        return docs, None
    gone = {doc["sopInstanceUID"] for doc, _ in left_out}
    online = [d for d in docs if d["sopInstanceUID"] not in gone]
    if not online:
        await retrieve.check_readable(service, [doc for doc, _ in left_out])
    names = sorted(gone)
    shown = ", ".join(names[:NAMED_LEFT_OUT])
    if len(names) > NAMED_LEFT_OUT:
        shown += f" and {len(names) - NAMED_LEFT_OUT} more"
    where = rehydration_url(req, service.settings)
    return online, (f"{len(names)} of {len(docs)} instances are left out, not online (OFFLINE or NEARLINE): {shown}; "
                    f"POST {where} to rehydrate them")


async def _kept(service: Service, tag: str, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``body`` passed on, and kept whole under ``tag`` once complete if it is small enough."""
    collected: list[bytes] | None = []
    size = 0
    async for chunk in body:
        if collected is not None:
            size += len(chunk)
            if size <= service.answers.largest:
                collected.append(chunk)
            else:
                collected = None
        yield chunk
    if collected is not None:
        service.answers.put(tag, b"".join(collected))


@endpoint(blueprint, "retrieve_frames", INSTANCE + "/frames/{frames}", ["GET"], Permission.READ)
async def retrieve_frames(req: Request, service: Service) -> Response:
    """Frames by number, each from one ranged read of the stored file."""
    study, series, instance = _uids(req)
    assert series is not None and instance is not None
    numbers = retrieve.parse_frame_list(req.path_params["frames"], service.settings.max_frames_per_request)
    return await _frames(req, service, study, series, instance, numbers)


async def _frames(
    req: Request, service: Service, study: str, series: str, instance: str, numbers: list[int] | None
) -> Response:
    cached = await retrieve.frame_index(service, study, series, instance)
    index = cached.frames
    numbers = numbers if numbers is not None else list(range(1, len(index) + 1))
    retrieve.check_frames(index, numbers)
    choice = await transcode.choose(service, cached, req.headers.get("accept"), single=len(numbers) == 1)
    tag = conditional.etag(index.generation, "frames", ",".join(map(str, numbers)), choice)
    if (unchanged := conditional.not_modified(req, tag, conditional.IMMUTABLE)) is not None:
        return unchanged
    cache = conditional.headers(tag, conditional.IMMUTABLE)
    frames = retrieve.read_frames(service, study, series, instance, numbers)
    stored = media.frame_label(index.transfer_syntax)
    size = sum(index.span(n)[1] for n in numbers)
    if choice.transfer_syntax != stored:
        fmt = await transcode.pixel_format(service, cached)
        frames = transcode.frames(frames, numbers, index.transfer_syntax, choice.transfer_syntax, fmt)
        size = len(numbers) * fmt.decoded().native_length
    media_type = f"{choice.media_type}; transfer-syntax={choice.transfer_syntax}"
    if not choice.multipart:
        return Response(b"".join([frame async for frame in frames]), media_type=media_type, headers=cache)
    part_headers = {"Content-Type": media_type}
    boundary = conditional.boundary(tag)
    if size <= WHOLE_ANSWER_BYTES:
        body = multipart_body([(part_headers, frame) async for frame in frames], boundary)
        return Response(body, media_type=_multipart_type(choice.media_type, boundary), headers=cache)

    async def parts() -> AsyncIterator[tuple[dict[str, str], bytes]]:
        async for frame in frames:
            yield part_headers, frame

    return await streaming(write_multipart(parts(), boundary), _multipart_type(choice.media_type, boundary), cache)


@endpoint(blueprint, "retrieve_bulkdata", INSTANCE + "/bulkdata/{path}", ["GET"], Permission.READ)
async def retrieve_bulkdata(req: Request, service: Service) -> Response:
    """A bulk value named by the metadata's BulkDataURI, or the byte range of it a ``Range`` header asks (206);
    Pixel Data goes out frame by frame. A large value streams from one ranged read of the stored file."""
    study, series, instance = _uids(req)
    assert series is not None and instance is not None
    path = req.path_params["path"]
    if retrieve.is_pixel_data(path):
        return await _frames(req, service, study, series, instance, None)
    multipart = media.negotiate_bulkdata(req.headers.get("accept"))
    (doc,) = await retrieve.instance_documents(service, study, series, instance)
    tag = conditional.etag(doc["generation"], "bulkdata", path, multipart)
    if (unchanged := conditional.not_modified(req, tag, conditional.IMMUTABLE)) is not None:
        return unchanged
    headers = {**conditional.headers(tag, conditional.IMMUTABLE), "accept-ranges": "bytes"}
    offset, length = retrieve.bulk_span(await retrieve.load_sidecar(service, doc), path)
    status = 200
    if conditional.range_applies(req, tag) and (
            asked := media.byte_range(req.headers.get("range"), length)) is not None:
        first, last = asked
        headers["content-range"] = f"bytes {first}-{last}/{length}"
        offset, length, status = offset + first, last - first + 1, 206
    location = retrieve.location(doc)
    boundary = conditional.boundary(tag)
    media_type = _multipart_type(media.OCTET_STREAM, boundary) if multipart else media.OCTET_STREAM
    if length <= WHOLE_ANSWER_BYTES:
        data = await service.blobs.instances.read_range(location, offset, length)
        whole = multipart_body([({"Content-Type": media.OCTET_STREAM}, data)], boundary) if multipart else data
        return Response(whole, status_code=status, media_type=media_type, headers=headers)
    value = await primed(service.blobs.instances.stream(location, offset, length))

    async def part() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        yield {"Content-Type": media.OCTET_STREAM}, value

    body = write_multipart(part(), boundary) if multipart else value
    return StreamingResponse(body, status_code=status, media_type=media_type, headers=headers)
