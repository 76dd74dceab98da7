"""QIDO-RS functions (PS3.18 §10.6): the six search resources."""

from urllib.parse import parse_qsl

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from dicomweb import qido
from dicomweb.api.http import base_url, dicom_json, endpoint, warning_header
from dicomweb.auth import Permission
from dicomweb.dicom import media
from dicomweb.dicom.query import parse_query
from dicomweb.errors import NotAcceptable
from dicomweb.service import Service

blueprint = func.Blueprint()

_SCOPE = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID"}


async def _search(req: Request, service: Service, level: str) -> Response:
    if not media.accepts_json(req.headers.get("accept")):
        raise NotAcceptable("search results are served as application/dicom+json")
    scope = {keyword: req.path_params[param] for param, keyword in _SCOPE.items() if param in req.path_params}
    query = parse_query(parse_qsl(req.url.query, keep_blank_values=True), level, scope)
    matches = await qido.search(service, query, scope, base_url(req, service.settings))
    headers = {"warning": warning_header("; ".join(query.warnings))} if query.warnings else None
    return dicom_json(matches, headers=headers)


@endpoint(blueprint, "search_studies", "studies", ["GET"], Permission.READ)
async def search_studies(req: Request, service: Service) -> Response:
    """Studies."""
    return await _search(req, service, "study")


@endpoint(blueprint, "search_series", "series", ["GET"], Permission.READ)
async def search_series(req: Request, service: Service) -> Response:
    """Series of any study."""
    return await _search(req, service, "series")


@endpoint(blueprint, "search_instances", "instances", ["GET"], Permission.READ)
async def search_instances(req: Request, service: Service) -> Response:
    """Instances of any study."""
    return await _search(req, service, "instance")


@endpoint(blueprint, "search_study_series", "studies/{study}/series", ["GET"], Permission.READ)
async def search_study_series(req: Request, service: Service) -> Response:
    """Series of one study."""
    return await _search(req, service, "series")


@endpoint(blueprint, "search_study_instances", "studies/{study}/instances", ["GET"], Permission.READ)
async def search_study_instances(req: Request, service: Service) -> Response:
    """Instances of one study."""
    return await _search(req, service, "instance")


@endpoint(blueprint, "search_series_instances", "studies/{study}/series/{series}/instances", ["GET"], Permission.READ)
async def search_series_instances(req: Request, service: Service) -> Response:
    """Instances of one series."""
    return await _search(req, service, "instance")
