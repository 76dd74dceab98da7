"""How the index learns tier changes (see ``dicomweb.availability``): the blob-event queue and the daily timer.

Event Grid delivers the instance container's blob events to ``DICOMWEB_BLOB_EVENTS_QUEUE``
(``infra/modules/storage.bicep``; locally the Azurite stand-in writes the same messages), reached
through the ``DICOMWEB_QUEUES`` connection like the job queue. A message that fails every
delivery lands in ``<queue>-poison``; the daily reconciliation catches what such a message missed.
"""

import logging

import azure.functions as func

from dicomweb import availability
from dicomweb.api.jobs import CONNECTION
from dicomweb.service import get_service

blueprint = func.Blueprint()
log = logging.getLogger(__name__)

#: Every day at 00:00 UTC (the local host runs it every 24 hours from its start).
RECONCILE_SCHEDULE = "0 0 */24 * * *"


@blueprint.function_name("blob_events")
@blueprint.queue_trigger(arg_name="message", queue_name="%DICOMWEB_BLOB_EVENTS_QUEUE%", connection=CONNECTION)
async def blob_events(message: func.QueueMessage) -> None:
    """Record the availability of the instance files a blob event message concerns."""
    await availability.handle(await get_service(), message.get_body().decode("utf-8", errors="replace"))


@blueprint.function_name("availability_reconcile")
@blueprint.timer_trigger(arg_name="timer", schedule=RECONCILE_SCHEDULE)
async def reconcile(timer: func.TimerRequest) -> None:
    """Send one job per study comparing the index's availability with Blob's tiers."""
    sent = await availability.reconcile(await get_service())
    log.info("availability reconciliation: %d studies to compare", sent)
