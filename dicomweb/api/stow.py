"""STOW-RS functions (PS3.18 §10.5): ``POST /studies`` and ``POST /studies/{study}``."""

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from dicomweb.api.http import base_url, dicom_json, endpoint, warning_header
from dicomweb.dicom.multipart import MultipartReader, parse_media_type
from dicomweb.dicom.syntax import is_valid_uid
from dicomweb.errors import BadRequest, UnsupportedMediaType
from dicomweb.service import Service
from dicomweb.stow import Outcome, store_instance

blueprint = func.Blueprint()

DICOM = "application/dicom"


@endpoint(blueprint, "stow_studies", "studies", ["POST"])
async def store(req: Request, service: Service) -> Response:
    """Store instances of any study; a stored SOP Instance UID is refused (reason 45070)."""
    return await _store(req, service, None, replace=False)


@endpoint(blueprint, "stow_study", "studies/{study}", ["POST"])
async def store_in_study(req: Request, service: Service) -> Response:
    """Store instances that must all belong to the study in the URL (else reason 43265)."""
    return await _store(req, service, _study(req), replace=False)


@endpoint(blueprint, "upsert_studies", "studies", ["PUT"])
async def upsert(req: Request, service: Service) -> Response:
    """Store instances of any study, replacing stored ones with the same SOP Instance UID."""
    return await _store(req, service, None, replace=True)


@endpoint(blueprint, "upsert_study", "studies/{study}", ["PUT"])
async def upsert_in_study(req: Request, service: Service) -> Response:
    """Store or replace instances of the study in the URL."""
    return await _store(req, service, _study(req), replace=True)


def _study(req: Request) -> str:
    study = req.path_params["study"]
    if not is_valid_uid(study):
        raise BadRequest(f"study UID {study!r} is not a valid UID")
    return study


async def _store(req: Request, service: Service, study: str | None, replace: bool) -> Response:
    media, params = parse_media_type(req.headers.get("content-type", ""))
    outcomes: list[Outcome] = []
    if media == "multipart/related":
        declared = parse_media_type(params.get("type", DICOM))[0]
        if declared != DICOM:
            raise UnsupportedMediaType(f'multipart type "{declared}" is not supported; send type="{DICOM}"')
        reader = MultipartReader(req.stream(), params.get("boundary", ""))
        while (part := await reader.next_part()) is not None:
            if part.content_type in (DICOM, ""):
                outcomes.append(await store_instance(service, part, study, replace))
            else:
                error = UnsupportedMediaType(f"a part of type {part.content_type} is not supported; send {DICOM}")
                outcomes.append(Outcome(None, None, error=error))
    elif media == DICOM:
        outcomes.append(await store_instance(service, req.stream(), study, replace))
    else:
        raise UnsupportedMediaType(f"send multipart/related; type=\"{DICOM}\" or {DICOM}, not {media or 'nothing'}")
    if not outcomes:
        raise BadRequest("the request holds no instance")
    return _answer(outcomes, base_url(req, service.settings))


def _answer(outcomes: list[Outcome], base: str) -> Response:
    """The STOW response dataset (PS3.18 §10.5.3): 200 all stored, 202 some, 409 none."""
    stored = [o for o in outcomes if o.error is None]
    failed = [o for o in outcomes if o.error is not None]
    body: dict = {}
    studies = {o.study for o in stored}
    if len(studies) == 1:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{studies.pop()}"]}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [
            {**_reference(o), "00081190": {"vr": "UR", "Value": [
                f"{base}/studies/{o.study}/series/{o.series}/instances/{o.sop_instance}"]}}
            for o in stored
        ]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [
            {**_reference(o), "00081197": {"vr": "US", "Value": [o.error.reason]}} for o in failed  # type: ignore[union-attr]
        ]}
    status = 200 if not failed else 202 if stored else 409
    headers = {}
    if failed:
        messages = "; ".join(f"{o.sop_instance or 'unknown instance'}: {o.error.message}" for o in failed)  # type: ignore[union-attr]
        headers["warning"] = warning_header(messages)
    return dicom_json(body, status, headers)


def _reference(outcome: Outcome) -> dict:
    item = {}
    if outcome.sop_class:
        item["00081150"] = {"vr": "UI", "Value": [outcome.sop_class]}
    if outcome.sop_instance:
        item["00081155"] = {"vr": "UI", "Value": [outcome.sop_instance]}
    return item
