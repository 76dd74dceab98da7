"""The queue-triggered function that runs background jobs (see ``dicomweb.jobs``).

The Functions host delivers each message of the job queue (``DICOMWEB_JOBS_QUEUE``,
reached through the ``DICOMWEB_QUEUES`` connection: a connection string locally, the
identity in Azure) and retries a failed one after ``host.json``'s visibility timeout;
after ``maxDequeueCount`` deliveries it moves the message to the poison queue.
"""

import json
import logging

import azure.functions as func

# The modules that own background work register their job handlers on import.
from dicomweb import availability, generations, inbox, jobs, reindex, uploads  # noqa: F401
from dicomweb.service import get_service

blueprint = func.Blueprint()
log = logging.getLogger(__name__)

#: The trigger's connection: app settings with this prefix (``DICOMWEB_QUEUES__queueServiceUri``) or a
#: connection string under this name, the same settings the service sends with.
CONNECTION = "DICOMWEB_QUEUES"


@blueprint.function_name("jobs")
@blueprint.queue_trigger(arg_name="message", queue_name="%DICOMWEB_JOBS_QUEUE%", connection=CONNECTION)
async def run_job(message: func.QueueMessage) -> None:
    """Run one job; an exception makes the host deliver it again (or poison it after the last try)."""
    try:
        body = json.loads(message.get_body())
    except ValueError:
        log.error("dropped a job message that is not JSON")
        return
    if not isinstance(body, dict):
        log.error("dropped a job message that is not a JSON object")
        return
    await jobs.run(await get_service(), body, message.dequeue_count or 1)
