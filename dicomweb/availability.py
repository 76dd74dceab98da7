"""What the index knows of each instance's availability, learned from the platform (PS3.3 §C.4.23.1.1).

An instance's bytes are ONLINE in the Hot, Cool and Cold tiers, NEARLINE while a
rehydration from Archive is pending, OFFLINE in Archive. The tiers change outside the
service (the lifecycle policy archives unread blobs; a rehydration ends hours after it
was asked for), so the index learns them three ways, each only ever recording what the
blob itself says at a given moment (:func:`dicomweb.generations.set_availability` keeps
the newest reading):

- **Blob events.** Event Grid delivers ``BlobTierChanged`` and ``AsyncOperationInitiated``
  of the instance container to a Storage Queue; the queue-triggered
  function hands each message to :func:`handle`, which reads the blob's properties again
  (an event may be late, repeated or out of order: the blob is the truth).
- **Reconciliation.** A daily timer sends one job per study comparing Blob's listing of
  the study with the index (:func:`reconcile_study`), for events that never came;
  ``reindex`` does the same for each study it rebuilds.
- **Reads.** A read refused because the index said offline is checked against the blob
  first (:func:`confirm`): a rehydration that just ended serves at once.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Sequence

from dicomweb import blobevents, generations, jobs, retrieve
from dicomweb.dicom.availability import ONLINE
from dicomweb.service import Service
from dicomweb.storage.cosmos import Document
from dicomweb.storage.naming import Location

log = logging.getLogger(__name__)

#: Event types that can change an instance blob's availability. Not BlobCreated: every file is written under a new
#: generation's name (a store, an upload's server-side copy; rehydration is in place), and a new generation is
#: ONLINE, as its document says by default; following it cost a blob read and a Cosmos write per upload.
WATCHED = {"Microsoft.Storage.BlobTierChanged", "Microsoft.Storage.AsyncOperationInitiated"}
#: Blob properties read at once when checking documents against their blobs.
CONCURRENCY = 16
RECONCILE = "reconcile-availability"
#: How long a reading of a blob that was not online is trusted before a read checks the blob again.
TRUSTED_SECONDS = 30


def _now() -> datetime:
    return datetime.now(timezone.utc)


async def refresh(service: Service, location: Location) -> str | None:
    """Read ``location``'s availability from its blob and record it in the index; None when the file is gone."""
    observed = _now()
    found = await service.blobs.instances.availability(location)
    if found is not None:
        await generations.set_availability(service, location, found, observed)
    return found


def _instance(event: dict[str, Any], container: str) -> Location | None:
    """The instance file an event concerns, if it is one the service keeps availability for."""
    name = blobevents.blob_name(event, container, WATCHED)
    if name is None:
        return None
    location = Location.parse(name)
    return location if location is not None and location.instance == name else None


async def handle(service: Service, text: str) -> int:
    """Record what the blobs one queue message's events concern say now; how many instances were looked at.

    A message that is not an event is dropped (retrying cannot mend it); a storage failure
    raises, so the platform delivers the message again (and poisons it in the end).
    """
    locations = {loc for e in blobevents.parse(text) if (loc := _instance(e, service.settings.instance_container))}
    if not locations and text.strip():
        log.debug("a blob event message named no instance file")
    await gather(refresh(service, location) for location in locations)
    return len(locations)


async def gather(steps: Iterable[Any]) -> list[Any]:
    """Run awaitables ``CONCURRENCY`` at a time; the first failure is raised once all have ended."""
    slots = asyncio.Semaphore(CONCURRENCY)

    async def bounded(step: Any) -> Any:
        async with slots:
            return await step

    results = await asyncio.gather(*(bounded(s) for s in steps), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


async def reconcile_study(service: Service, prefix: str) -> int:
    """Make the index's availability of one study (``<study>/``) what one listing of its blobs says; how many
    instance documents changed."""
    observed = _now()
    offline = {location: state async for location, state in service.blobs.instances.offline(prefix)}
    changes = [generations.set_availability(service, location, state, observed) for location, state in offline.items()]
    for doc in await service.index.unavailable(prefix.rstrip("/")):
        location = retrieve.location(doc)
        if location not in offline:
            changes.append(generations.set_availability(service, location, ONLINE, observed))
    return sum(await gather(changes))


async def reconcile(service: Service) -> int:
    """Send one reconciliation job per study with files (the daily timer); how many were sent."""
    studies = [prefix async for prefix in service.blobs.instances.studies()]
    await gather(jobs.enqueue(service, RECONCILE, prefix=prefix) for prefix in studies)
    return len(studies)


@jobs.handler(RECONCILE)
async def _reconcile_job(service: Service, delivery: jobs.Delivery) -> None:
    changed = await reconcile_study(service, str(delivery.fields["prefix"]))
    if changed:
        log.info("availability reconciled: %d instance documents changed", changed)


def unavailable(docs: Sequence[Document]) -> list[Document]:
    """The documents of ``docs`` the index says are not online."""
    return [d for d in docs if d.get("availability", ONLINE) != ONLINE]


async def confirm(service: Service, docs: Sequence[Document]) -> list[tuple[Document, str]]:
    """Of the documents the index says are not online, those whose blob says so too, with what it says: what a
    read must refuse or leave out. A blob is read again (and the reading recorded) only if the index's reading
    is older than :data:`TRUSTED_SECONDS`, so that a slide opened often costs no storage call per request."""
    doubtful = unavailable(docs)
    cutoff = (_now() - timedelta(seconds=TRUSTED_SECONDS)).isoformat()
    recheck = [d for d in doubtful if d.get("availabilityObserved", "") < cutoff]
    found = dict(zip((d["id"] for d in recheck), await gather(refresh(service, retrieve.location(d)) for d in recheck)))
    states = [(doc, found.get(doc["id"], doc.get("availability", ONLINE))) for doc in doubtful]
    return [(doc, state) for doc, state in states if state not in (None, ONLINE)]
