"""Upload-session functions: the direct-to-Blob path for instances beyond one request (see ``dicomweb.uploads``).

``POST /uploads`` {"size": N or null, "studyInstanceUID": optional} → 201 with the block plan
and a write-only SAS URL; ``GET /uploads/{id}`` → progress (and a fresh SAS) for resuming;
``POST /uploads/{id}/commit[?size=N]`` (body: the file's frame offset record, or nothing) → the
STOW-RS answer, or 202 while the ingest job goes on; ``DELETE /uploads/{id}`` → 204. A
timer sends a removal job for each expired session.
"""

import logging

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from dicomweb import auth, uploads
from dicomweb.api.http import base_url, dicom_json, endpoint, json_response, small_json, warning_header
from dicomweb.auth import Permission
from dicomweb.errors import BadRequest, PayloadTooLarge
from dicomweb.service import Service, get_service

blueprint = func.Blueprint()
log = logging.getLogger(__name__)

SESSION = "uploads/{id}"
#: Expired sessions are looked for this often (NCRONTAB: second minute hour day month weekday).
CLEANUP_SCHEDULE = "0 */15 * * * *"
MAX_REQUEST_BYTES = 64 * 1024
#: A frame offset record holds 16 bytes per frame (dicomweb.dicom.frames.FrameIndex).
RECORD_BYTES_PER_FRAME = 16



@endpoint(blueprint, "upload_create", "uploads", ["POST"], Permission.WRITE)
async def create(req: Request, service: Service) -> Response:
    """Open a session for one instance of a declared size (or of a size its commit gives)."""
    request = await small_json(req, MAX_REQUEST_BYTES,
                               '{"size": <bytes, or null to give it at the commit>, "studyInstanceUID": <optional UID>}')
    if "size" not in request:
        raise BadRequest("size is required: the instance's size in bytes, or null to give it at the commit")
    session = await uploads.create(service, request["size"], request.get("studyInstanceUID"), auth.current().id)
    base = base_url(req, service.settings)
    description = await uploads.describe(service, session, base)
    return json_response(description, 201, {"location": description["statusUrl"]})


@endpoint(blueprint, "upload_status", SESSION, ["GET"], Permission.WRITE)
async def status(req: Request, service: Service) -> Response:
    """Which blocks arrived (and a fresh SAS), the ingest's progress, or its result."""
    session = await uploads.status(service, req.path_params["id"], auth.current().id)
    return json_response(await uploads.describe(service, session, base_url(req, service.settings)))


@endpoint(blueprint, "upload_commit", SESSION + "/commit", ["POST"], Permission.WRITE)
async def commit(req: Request, service: Service) -> Response:
    """Commit the blocks and ingest: the STOW-RS answer, or 202 with the status URL while it runs."""
    base = base_url(req, service.settings)
    most = RECORD_BYTES_PER_FRAME * service.settings.max_frames + 4096
    body = bytearray()
    async for chunk in req.stream():
        body += chunk
        if len(body) > most:
            raise PayloadTooLarge(f"a frame offset record of DICOMWEB_MAX_FRAMES frames has at most {most} bytes")
    record = uploads.read_record(bytes(body), service.settings.max_frames)
    session = await uploads.commit(service, req.path_params["id"], auth.current().id, base, record,
                                   req.query_params.get("size"))
    if session.result is None:
        description = await uploads.describe(service, session, base)
        return json_response(description, 202, {"location": description["statusUrl"], "retry-after": "5"})
    result = session.result
    headers = {"warning": warning_header(result["warning"])} if result["warning"] else {}
    return dicom_json(result["body"], result["status"], headers or None)


@endpoint(blueprint, "upload_abort", SESSION, ["DELETE"], Permission.WRITE)
async def abort(req: Request, service: Service) -> Response:
    """Drop the session and its staged blocks."""
    await uploads.abort(service, req.path_params["id"], auth.current().id)
    return Response(status_code=204)


@blueprint.function_name("upload_cleanup")
@blueprint.timer_trigger(arg_name="timer", schedule=CLEANUP_SCHEDULE)
async def cleanup(timer: func.TimerRequest) -> None:
    """Send a job removing each expired session and its staged blocks."""
    sent = await uploads.cleanup(await get_service())
    if sent:
        log.info("%d expired upload sessions to remove", sent)
