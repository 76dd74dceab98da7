"""STOW-RS functions (PS3.18 §10.5): ``POST /studies`` and ``POST /studies/{study}``."""

from typing import AsyncIterator

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from dicomweb.api.http import base_url, dicom_json, endpoint, warning_header
from dicomweb.auth import Permission
from dicomweb.config import MIB
from dicomweb.dicom.multipart import MultipartReader, parse_media_type
from dicomweb.errors import BadRequest, DicomWebError, PayloadTooLarge, StorageFailure, UnsupportedMediaType
from dicomweb.service import Service
from dicomweb.stow import Outcome, response, store_instance

blueprint = func.Blueprint()

DICOM = "application/dicom"


@endpoint(blueprint, "stow_studies", "studies", ["POST"], Permission.WRITE)
async def store(req: Request, service: Service) -> Response:
    """Store instances of any study; a stored SOP Instance UID is refused (reason 45070)."""
    return await _store(req, service, None, replace=False)


@endpoint(blueprint, "stow_study", "studies/{study}", ["POST"], Permission.WRITE)
async def store_in_study(req: Request, service: Service) -> Response:
    """Store instances that must all belong to the study in the URL (else reason 43265)."""
    return await _store(req, service, _study(req), replace=False)


@endpoint(blueprint, "upsert_studies", "studies", ["PUT"], Permission.WRITE)
async def upsert(req: Request, service: Service) -> Response:
    """Store instances of any study, replacing stored ones with the same SOP Instance UID."""
    return await _store(req, service, None, replace=True)


@endpoint(blueprint, "upsert_study", "studies/{study}", ["PUT"], Permission.WRITE)
async def upsert_in_study(req: Request, service: Service) -> Response:
    """Store or replace instances of the study in the URL."""
    return await _store(req, service, _study(req), replace=True)


def _study(req: Request) -> str:
    return str(req.path_params["study"])


def _limited(req: Request, service: Service) -> AsyncIterator[bytes]:
    """The request body, refused with 413 beyond the configured limit (declared or counted as it streams).

    Functions hosts cap request bodies (100 MB by default) and time out after 230 s, so
    large instances travel straight to Blob through upload sessions instead.
    """
    limit = service.settings.max_request_bytes
    too_large = PayloadTooLarge(
        f"the request body exceeds the {limit // MIB} MB limit of STOW-RS; store large instances through "
        f"upload sessions: POST {base_url(req, service.settings)}/uploads")
    declared = req.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large

    async def body() -> AsyncIterator[bytes]:
        received = 0
        async for chunk in req.stream():
            received += len(chunk)
            if received > limit:
                raise too_large
            yield chunk

    return body()


async def _store(req: Request, service: Service, study: str | None, replace: bool) -> Response:
    media, params = parse_media_type(req.headers.get("content-type", ""))
    outcomes: list[Outcome] = []
    if media == "multipart/related":
        declared = parse_media_type(params.get("type", DICOM))[0]
        if declared != DICOM:
            raise UnsupportedMediaType(f'multipart type "{declared}" is not supported; send type="{DICOM}"')
        reader = MultipartReader(_limited(req, service), params.get("boundary", ""))
        try:
            await _store_parts(reader, service, study, replace, outcomes)
        except DicomWebError as error:
            if not any(o.error is None for o in outcomes):
                raise
            # Stored parts stay stored (a PUT may have displaced what it replaced): the answer says
            # exactly which parts were stored and that the rest of the body failed (202).
            outcomes.append(Outcome(None, None, error=error))
    elif media == DICOM:
        outcomes.append(await store_instance(service, _limited(req, service), study, replace))
    else:
        raise UnsupportedMediaType(f"send multipart/related; type=\"{DICOM}\" or {DICOM}, not {media or 'nothing'}")
    if not outcomes:
        raise BadRequest("the request holds no instance")
    return _answer(outcomes, base_url(req, service.settings))


async def _store_parts(reader: MultipartReader, service: Service, study: str | None, replace: bool,
                       outcomes: list[Outcome]) -> None:
    """Store each part in turn, appending its outcome; framing errors and the request limits raise."""
    most = service.settings.max_parts_per_request
    while (part := await reader.next_part()) is not None:
        if len(outcomes) == most:
            raise BadRequest(f"a request holds at most {most} parts (DICOMWEB_MAX_PARTS_PER_REQUEST)")
        if part.content_type in (DICOM, ""):
            outcomes.append(await store_instance(service, part, study, replace))
        else:
            error = UnsupportedMediaType(f"a part of type {part.content_type} is not supported; send {DICOM}")
            outcomes.append(Outcome(None, None, error=error))


def _answer(outcomes: list[Outcome], base: str) -> Response:
    status, body, warning = response(outcomes, base)
    headers = {"warning": warning_header(warning)} if warning else {}
    if status == 503:
        headers["retry-after"] = str(max(o.error.retry_after for o in outcomes if isinstance(o.error, StorageFailure)))
    return dicom_json(body, status, headers or None)
