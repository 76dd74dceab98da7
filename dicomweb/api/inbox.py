"""The inbox (see ``dicomweb.inbox``): the queue-triggered conversion of the scanner files written to the inbox
container, and the status of each file.

Event Grid delivers the inbox container's ``BlobCreated`` events to ``DICOMWEB_INBOX_QUEUE``
(``infra/modules/events.bicep``; locally the Azurite stand-in writes the same messages), read
through the ``DICOMWEB_QUEUES`` connection like the job queue. A message that fails every
delivery lands in ``<queue>-poison``, its file's record saying ``failed``.
"""

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from dicomweb import inbox, jobs
from dicomweb.api.http import endpoint, json_response
from dicomweb.api.jobs import CONNECTION
from dicomweb.auth import Permission
from dicomweb.service import Service, get_service

blueprint = func.Blueprint()


@blueprint.function_name("inbox_events")
@blueprint.queue_trigger(arg_name="message", queue_name="%DICOMWEB_INBOX_QUEUE%", connection=CONNECTION)
async def inbox_events(message: func.QueueMessage) -> None:
    """Convert and store the scanner files a BlobCreated message of the inbox names."""
    await inbox.handle(await get_service(), message.get_body().decode("utf-8", errors="replace"),
                       last=(message.dequeue_count or 1) >= jobs.MAX_DELIVERIES)


# The records name the files people dropped (names may say whose slide it is): writers and owners, who may
# drop files, see them.
@endpoint(blueprint, "inbox_status", "inbox", ["GET"], Permission.WRITE)
async def inbox_status(req: Request, service: Service) -> Response:
    """``?file=<name in the inbox>``: that file's record (converting, stored with its UIDs, or failed with the
    reason); without it, the latest records."""
    file = req.query_params.get("file")
    if file:
        return json_response(await inbox.status(service, file))
    return json_response(await inbox.recent(service))
