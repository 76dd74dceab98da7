"""Rehydration: bringing archived instances back online, asked for per study, series or instance.

An extension of DICOMweb (like upload sessions): ``POST …/rehydrate`` asks Blob Storage to
bring every OFFLINE file of what it addresses back to the Hot tier, records the request
(``operations/rehydrations/<id>.json`` in the staging container, the service's records
store) and answers ``202`` with its status resource, which reports per instance
``pending``, ``done`` or ``failed`` with times, read from the blobs when asked.

**In place, not by copy.** Microsoft recommends copying an archived blob to a new online
one. Here the blob's tier is set back to Hot instead (Set Blob Tier, with the priority the
client chose), because a copy would be a new generation: a second stored copy of the
instance to publish, index and clean up once the copy ends hours later, while the
generation's name, its frame offset record and the thumbnails made of it would change. In
place, the generation stays the one the index names and only its availability changes.
The two reasons for a copy are met otherwise: re-archiving by the age rules is prevented
by the ``rehydrated`` tag the archive rule does not match
(:meth:`dicomweb.storage.instances.InstanceStore.rehydrate`), and the early-deletion charge
(a blob that leaves Archive within 180 days pays the rest of them) is the same one a copy
pays when its archived source is deleted, which a copy must do to stop paying for both.

The blob tier calls are made within the request: each is one quick call, and a request
covers at most :data:`MAX_INSTANCES`. The pending state ends by itself in Blob Storage;
the index learns it from the blob events (:mod:`dicomweb.availability`).
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timezone
from typing import Any

from dicomweb import audit, availability, generations, retrieve
from dicomweb.dicom.availability import NEARLINE, ONLINE
from dicomweb.errors import BadRequest, DicomWebError, NotFound
from dicomweb.service import Service
from dicomweb.storage.cosmos import Document
from dicomweb.storage.naming import Location
from dicomweb.storage.transfer import StaleBlob

RECORDS = "operations/rehydrations/"
#: Azure's rehydration priorities: High often ends within an hour for blobs under 10 GB, Standard within 15.
PRIORITIES = ("Standard", "High")
#: Instances one request may cover (a whole-slide series has tens): larger studies are asked for by series.
MAX_INSTANCES = 1000
PENDING, DONE, FAILED = "pending", "done", "failed"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def priority(body: dict[str, Any]) -> str:
    """The priority a request body asks for (``{"priority": "High"}``; Standard when absent)."""
    unknown = set(body) - {"priority"}
    if unknown:
        raise BadRequest(f"a rehydration request takes only a priority, not {', '.join(sorted(unknown))[:200]}")
    chosen = body.get("priority", "Standard")
    if chosen not in PRIORITIES:
        raise BadRequest('the priority is "Standard" or "High"')
    return str(chosen)


def _entry(doc: Document, state: str, requested: str, reason: str | None = None) -> dict[str, Any]:
    entry = {"studyInstanceUID": doc["studyInstanceUID"], "seriesInstanceUID": doc["seriesInstanceUID"],
             "sopInstanceUID": doc["sopInstanceUID"], "generation": doc["generation"], "state": state,
             "requested": requested}
    if state == DONE:
        entry["done"] = requested
    if reason is not None:
        entry["reason"] = reason
    return entry


def _location(entry: dict[str, Any]) -> Location:
    return Location(entry["studyInstanceUID"], entry["seriesInstanceUID"], entry["sopInstanceUID"],
                    entry["generation"])


async def request(service: Service, study: str, series: str | None, instance: str | None,
                  chosen: str) -> dict[str, Any]:
    """Ask for every instance of what the UIDs address to be brought online; the request's record.

    Instances online already are ``done`` at once. Asking again is harmless: a pending
    rehydration keeps going (a High priority raises a Standard one's).
    """
    docs = await retrieve.instance_documents(service, study, series, instance)
    if len(docs) > MAX_INSTANCES:
        raise BadRequest(f"a rehydration request covers at most {MAX_INSTANCES} instances; ask for each series")
    requested = _now()

    async def ask(doc: Document) -> dict[str, Any]:
        location, asked = retrieve.location(doc), datetime.now(timezone.utc)
        try:
            found = await service.blobs.instances.rehydrate(location, chosen)
        except NotFound:
            return _entry(doc, FAILED, requested, "the instance was deleted or replaced")
        except DicomWebError as error:
            return _entry(doc, FAILED, requested, error.message)
        if found == NEARLINE:  # NEARLINE in QIDO at once: the blob was read after ``asked``
            await generations.set_availability(service, location, found, asked)
        return _entry(doc, DONE if found == ONLINE else PENDING, requested)

    entries = await availability.gather(ask(doc) for doc in docs)
    record = {"id": secrets.token_hex(12), "requested": requested, "priority": chosen,
              "actor": audit.actor().get("id"), "instances": entries}
    await service.blobs.staging.put_record(f"{RECORDS}{record['id']}.json", json.dumps(record).encode())
    return record  # the endpoint's audit record names who asked, for what


async def status(service: Service, request_id: str) -> dict[str, Any]:
    """A rehydration request's record, its pending instances looked at again (NotFound when unknown).

    An instance is ``done`` once its blob is online (with the time its tier changed), and
    ``failed`` when its generation is gone (deleted or replaced since) or back in Archive
    with no rehydration pending.
    """
    if not request_id.isalnum() or len(request_id) > 64:
        raise NotFound("no such rehydration request")
    name = f"{RECORDS}{request_id}.json"
    try:
        raw, etag = await service.blobs.staging.get_record(name)
    except NotFound:
        raise NotFound("no such rehydration request") from None
    record = json.loads(raw)
    pending = [e for e in record["instances"] if e["state"] == PENDING]
    found = await availability.gather(service.blobs.instances.tier_state(_location(e)) for e in pending)
    changed = False
    for entry, state in zip(pending, found):
        if state is None:
            entry.update(state=FAILED, reason="the instance was deleted or replaced")
        elif state[0] == ONLINE:
            entry.update(state=DONE, done=(state[1] or datetime.now(timezone.utc)).isoformat(timespec="seconds"))
        elif state[0] != NEARLINE:
            entry.update(state=FAILED, reason="the instance is back in the Archive tier with no rehydration pending")
        else:
            continue
        changed = True
    if changed:
        try:  # the next look starts from here; a concurrent look wrote the same
            await service.blobs.staging.put_record(name, json.dumps(record).encode(), etag)
        except StaleBlob:
            pass
    return record


def summary(record: dict[str, Any]) -> dict[str, int]:
    """How many instances of a request are in each state."""
    counts = {PENDING: 0, DONE: 0, FAILED: 0}
    for entry in record["instances"]:
        counts[entry["state"]] += 1
    return counts
