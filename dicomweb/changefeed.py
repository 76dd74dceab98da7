"""The change feed, as the Azure DICOM service offers it: every create, update and delete, in order.

Entries live in their own partition of the index container. A change takes its
sequence number from a counter (an atomic increment: it never conflicts, so recording
never fails a store) and writes its entry once the change is in place, so numbers
can arrive out of order and a writer that dies leaves a hole. Readers therefore see
only entries up to the *watermark*: the highest sequence below which every number is
resolved. A hole is resolved from the instance claim that holds its sequence (a change
whose worker died after making it: its entry is written for it), or, once it is older
than ``DICOMWEB_CHANGEFEED_GAP_SECONDS``, by a *skip* that readers never see (a change
that never happened); a late writer whose number was skipped takes a new one. A
consumer that pages with "entries after the last sequence I saw" therefore gets every
change exactly once, in order, and each page is a range read whatever its position.

An entry's State is worked out when it is read: ``current`` for an instance's newest
entry, ``replaced`` when a newer one exists, ``deleted`` when the newest is a delete.
Metadata comes from the sidecar of the entry's generation, for current entries only.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from dicomweb import audit, records
from dicomweb.dicom.dicomjson import JsonDict
from dicomweb.errors import BadRequest, NotFound
from dicomweb.service import Service
from dicomweb.storage.naming import Location
from dicomweb.storage.changes import SKIP
from dicomweb.storage.cosmos import Conflict, Document

ACTIONS = ("create", "update", "delete")
DEFAULT_LIMIT, MAX_LIMIT = 100, 200
#: The largest sequence number a consumer can name (the counter is a JSON number: exact up to 2**53).
MAX_SEQUENCE = 2**53
#: Entries read at once while moving the watermark.
SCAN = 500


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _text(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def parse_time(name: str, value: str | None) -> str | None:
    """An ISO 8601 time parameter, as the UTC text entries are stored with; 400 when malformed."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return _text(moment.astimezone(timezone.utc))
    except (ValueError, OverflowError):
        raise BadRequest(f"{name} is not an ISO 8601 date and time within years 1 to 9999") from None


def _entry(sequence: int, action: str, location: Location, actor: dict[str, str]) -> Document:
    return {"sequence": sequence, "timestamp": _text(_now()), "action": action, "study": location.study,
            "series": location.series, "sop": location.sop, "generation": location.generation, "actor": actor}


async def record(service: Service, sequence: int, action: str, location: Location) -> int:
    """Write the entry of change ``sequence``; the sequence it got (a new one if a reader skipped it meanwhile)."""
    assert action in ACTIONS
    changes = service.changes
    while True:
        try:
            await changes.add(_entry(sequence, action, location, audit.actor()))
            return sequence
        except Conflict:
            found = await changes.get(sequence)
            if found is not None and found["action"] == action and found["generation"] == location.generation:
                return sequence  # a reader resolved the hole from this change's claim already
        # Skipped as a hole: take a new number, and let the claim name it so a reader can resolve it again.
        old, sequence = sequence, await changes.next_sequence()
        try:
            await service.claims.update(location.sop, [{"op": "set", "path": "/sequence", "value": sequence}],
                                        f"FROM c WHERE c.sequence = {int(old)}")
        except Conflict:
            pass


async def skip(service: Service, sequence: int) -> None:
    """Mark ``sequence`` as a number whose change did not happen, so readers need not wait for it."""
    try:
        await service.changes.add({"sequence": sequence, "timestamp": _text(_now()), "action": SKIP,
                                        "study": "", "series": "", "sop": "", "generation": ""})
    except Conflict:
        pass


async def _resolve(service: Service, sequence: int, following: Document) -> bool:
    """Fill hole ``sequence`` if it can be decided now: from the claim holding it, or a skip once old enough."""
    claim = await service.claims.of_change(sequence)
    if claim is not None:
        try:
            await service.changes.add(_entry(sequence, claim["action"], records.named(claim),
                                                  claim.get("actor", audit.actor())))
        except Conflict:
            pass
        return True
    waited = _now() - datetime.fromisoformat(following["timestamp"])
    if waited < timedelta(seconds=service.settings.changefeed_gap_seconds):
        return False
    await skip(service, sequence)
    return True


async def watermark(service: Service) -> int:
    """Move the watermark over every resolved entry (resolving the holes it can) and return it."""
    changes = service.changes
    start = mark = await changes.watermark()
    while True:
        batch = await changes.after(mark, SCAN)
        for entry in batch:
            while entry["sequence"] > mark + 1:
                if not await _resolve(service, mark + 1, entry):
                    break
                mark += 1
            if entry["sequence"] != mark + 1:
                break
            mark += 1
        else:
            if len(batch) == SCAN:
                continue
        break
    if mark > start:
        await changes.raise_watermark(mark)
    return mark


async def changes(service: Service, after: int, start: str | None, end: str | None, limit: int) -> list[Document]:
    """Visible entries with a sequence above ``after`` within [start, end), in order."""
    return await service.changes.visible(after, await watermark(service), start, end, limit)


async def latest(service: Service) -> Document | None:
    """The newest visible entry."""
    return await service.changes.latest_visible(await watermark(service))


async def _metadata(service: Service, entry: Document, base: str) -> JsonDict | None:
    try:
        data = await service.blobs.sidecars.get(records.named(entry).sidecar("json"))
    except NotFound:
        return None
    url = f"{base}/studies/{entry['study']}/series/{entry['series']}/instances/{entry['sop']}"
    return json.loads(records.served_metadata(data, url))


async def render(service: Service, entries: list[Document], include_metadata: bool, base: str) -> list[JsonDict]:
    """Entries in the Azure DICOM service's change-feed JSON."""
    newest = await service.changes.last_changes([e["sop"] for e in entries])
    out = []
    for entry in entries:
        last = newest.get(entry["sop"], entry)
        state = "deleted" if last["action"] == "delete" else (
            "current" if last["sequence"] == entry["sequence"] else "replaced")
        item: JsonDict = {
            "Sequence": entry["sequence"], "StudyInstanceUid": entry["study"], "SeriesInstanceUid": entry["series"],
            "SopInstanceUid": entry["sop"], "Action": entry["action"], "Timestamp": entry["timestamp"],
            "State": state,
        }
        if "actor" in entry:  # who made the change (dicomweb.audit): a principal id and its client app
            item["Principal"] = {"Id": entry["actor"]["id"], **({"AppId": entry["actor"]["app"]}
                                                               if "app" in entry["actor"] else {})}
        if include_metadata and state == "current":
            item["Metadata"] = await _metadata(service, entry, base)
        out.append(item)
    return out
