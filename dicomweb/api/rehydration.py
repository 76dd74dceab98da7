"""Rehydration of archived instances (an extension, see ``dicomweb.rehydration``): ask per study, series or
instance; follow the request's status resource."""

from typing import Any

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from dicomweb import rehydration
from dicomweb.api.http import base_url, endpoint, json_response, small_json
from dicomweb.auth import Permission
from dicomweb.service import Service

blueprint = func.Blueprint()

STUDY = "studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{instance}"
STATUS = "operations/rehydrations/{id}"
MAX_REQUEST_BYTES = 1024


def _described(record: dict[str, Any], base: str) -> dict[str, Any]:
    """A request as its status resource shows it: ``pending`` while any instance is, then ``done``, ``failed`` (none
    came back) or ``partial``."""
    counts = rehydration.summary(record)
    state = ("pending" if counts["pending"] else "done" if not counts["failed"] else "failed" if not counts["done"]
             else "partial")
    return {"id": record["id"], "status": state, "statusUrl": f"{base}/operations/rehydrations/{record['id']}",
            "requested": record["requested"], "priority": record["priority"], "counts": counts,
            "instances": [{k: v for k, v in e.items() if k != "generation"} for e in record["instances"]]}


async def _request(req: Request, service: Service) -> Response:
    body = await small_json(req, MAX_REQUEST_BYTES, '{"priority": "Standard" | "High"}')
    params = req.path_params
    record = await rehydration.request(service, params["study"], params.get("series"), params.get("instance"),
                                       rehydration.priority(body))
    described = _described(record, base_url(req, service.settings))
    return json_response(described, 202, {"location": str(described["statusUrl"])})


# Rehydrating costs money (and the 180-day early-deletion charge of the Archive tier): writers and owners may
# ask, as they may store; a reader who needs archived bytes asks one of them.
@endpoint(blueprint, "rehydrate_study", STUDY + "/rehydrate", ["POST"], Permission.WRITE)
async def rehydrate_study(req: Request, service: Service) -> Response:
    """Bring every archived instance of a study back online."""
    return await _request(req, service)


@endpoint(blueprint, "rehydrate_series", SERIES + "/rehydrate", ["POST"], Permission.WRITE)
async def rehydrate_series(req: Request, service: Service) -> Response:
    """Bring every archived instance of a series back online."""
    return await _request(req, service)


@endpoint(blueprint, "rehydrate_instance", INSTANCE + "/rehydrate", ["POST"], Permission.WRITE)
async def rehydrate_instance(req: Request, service: Service) -> Response:
    """Bring one archived instance back online."""
    return await _request(req, service)


@endpoint(blueprint, "rehydration_status", STATUS, ["GET"], Permission.WRITE)
async def rehydration_status(req: Request, service: Service) -> Response:
    """Per instance: pending, done or failed, with times (for those who may ask; readers see the availability
    in QIDO)."""
    record = await rehydration.status(service, req.path_params["id"])
    return json_response(_described(record, base_url(req, service.settings)))
