"""DELETE of studies, series and instances, the change feed (as the Azure DICOM service offers them),
the reindex operation (rebuild the index from Blob, fanned out over the job queue), and what the store
holds and costs (``GET /usage``)."""

import dataclasses

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from dicomweb import changefeed, delete, reindex, usage
from dicomweb.api.http import base_url, dicom_json, endpoint, json_response
from dicomweb.auth import Permission
from dicomweb.dicom.syntax import bounded_int
from dicomweb.errors import BadRequest
from dicomweb.service import Service

blueprint = func.Blueprint()


def _uids(req: Request) -> tuple[str, str | None, str | None]:
    params = req.path_params
    return params["study"], params.get("series"), params.get("instance")


@endpoint(blueprint, "delete_study", "studies/{study}", ["DELETE"], Permission.DELETE)
async def delete_study(req: Request, service: Service) -> Response:
    """Delete every instance of a study."""
    study, _, _ = _uids(req)
    await delete.delete(service, study)
    return Response(status_code=204)


@endpoint(blueprint, "delete_series", "studies/{study}/series/{series}", ["DELETE"], Permission.DELETE)
async def delete_series(req: Request, service: Service) -> Response:
    """Delete every instance of a series."""
    study, series, _ = _uids(req)
    await delete.delete(service, study, series)
    return Response(status_code=204)


@endpoint(blueprint, "delete_instance", "studies/{study}/series/{series}/instances/{instance}", ["DELETE"], Permission.DELETE)
async def delete_instance(req: Request, service: Service) -> Response:
    """Delete one instance."""
    study, series, instance = _uids(req)
    await delete.delete(service, study, series, instance)
    return Response(status_code=204)


def _count(req: Request, name: str, default: int, low: int, high: int) -> int:
    raw = req.query_params.get(name)
    if raw is None:
        return default
    number = bounded_int(raw, low, high)
    if number is None:
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    return number


@endpoint(blueprint, "changefeed", "changefeed", ["GET"], Permission.READ)
async def read_changefeed(req: Request, service: Service) -> Response:
    """Changes in order: ``offset`` (entries after this sequence), ``limit``, ``startTime``, ``endTime``
    (ISO 8601) and ``includeMetadata``. A consumer passes the last Sequence it saw as the next ``offset``."""
    start = changefeed.parse_time("startTime", req.query_params.get("startTime"))
    end = changefeed.parse_time("endTime", req.query_params.get("endTime"))
    offset = _count(req, "offset", 0, 0, changefeed.MAX_SEQUENCE)
    limit = _count(req, "limit", changefeed.DEFAULT_LIMIT, 1, changefeed.MAX_LIMIT)
    include = req.query_params.get("includeMetadata", "true").lower()
    if include not in ("true", "false"):
        raise BadRequest("includeMetadata must be true or false")
    entries = await changefeed.changes(service, offset, start, end, limit)
    return dicom_json(await changefeed.render(service, entries, include == "true", base_url(req, service.settings)))


@endpoint(blueprint, "changefeed_latest", "changefeed/latest", ["GET"], Permission.READ)
async def latest_change(req: Request, service: Service) -> Response:
    """The newest change (an empty object when nothing has changed yet)."""
    entry = await changefeed.latest(service)
    if entry is None:
        return dicom_json({})
    include = req.query_params.get("includeMetadata", "true").lower() == "true"
    (item,) = await changefeed.render(service, [entry], include, base_url(req, service.settings))
    return dicom_json(item)


def _progress(progress: reindex.Progress, base: str) -> dict[str, object]:
    return {"id": progress.run.id, "started": progress.run.started, "partitions": progress.run.total,
            "done": progress.done, "status": "finished" if progress.finished else "running",
            "statusUrl": f"{base}/operations/reindex/{progress.run.id}",
            **({"report": dataclasses.asdict(progress.report)} if progress.report is not None else {})}



@endpoint(blueprint, "reindex_start", "operations/reindex", ["POST"], Permission.DELETE)
async def start_reindex(req: Request, service: Service) -> Response:
    """Rebuild the index from Blob: one job per study on the queue; 202 with the run's status URL."""
    run = await reindex.start(service)
    answer = _progress(reindex.Progress(run, 0, None), base_url(req, service.settings))
    return json_response(answer, 202, {"location": str(answer["statusUrl"])})


@endpoint(blueprint, "reindex_status", "operations/reindex/{id}", ["GET"], Permission.DELETE)
async def reindex_status(req: Request, service: Service) -> Response:
    """How many partitions of a run are done, and once all are, what they did together."""
    progress = await reindex.progress(service, req.path_params["id"])
    return json_response(_progress(progress, base_url(req, service.settings)))


@endpoint(blueprint, "usage", "usage", ["GET"], Permission.DELETE)
async def storage_usage(req: Request, service: Service) -> Response:
    """What the three containers hold and cost a month, per access tier, by kind and for the ``top`` largest
    studies (default 20, at most 1000; the rest summed): the JSON :mod:`dicomweb.usage` documents. One listing
    of every blob, so it takes a while on a large store (``dicomweb usage`` runs the same without a time limit)."""
    top = _count(req, "top", usage.DEFAULT_TOP, 0, usage.MAX_TOP)
    return json_response(await usage.measure(service.blobs.inventory, service.settings.prices_per_gb_month, top))
