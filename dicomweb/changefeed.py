"""The change feed, as the Azure DICOM service offers it: every create, update and delete, in order.

Entries live in their own partition of the index container with a sequence number
from a counter document. An entry's State is worked out when it is read: ``current``
for an instance's newest entry, ``replaced`` when a newer one exists, ``deleted``
when the newest is a delete. Metadata comes from the instance's sidecar, for
current entries only.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from dicomweb.dicom.dicomjson import JsonDict, resolve_bulk_uris
from dicomweb.errors import BadRequest, NotFound
from dicomweb.service import Service
from dicomweb.storage.blobs import sidecar_name
from dicomweb.storage.index import Document

ACTIONS = ("create", "update", "delete")
DEFAULT_LIMIT, MAX_LIMIT = 100, 200


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def parse_time(name: str, value: str | None) -> str | None:
    """An ISO 8601 time parameter, as the UTC text entries are stored with; 400 when malformed."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name}={value!r} is not an ISO 8601 date and time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


async def record(service: Service, action: str, study: str, series: str, sop: str) -> None:
    """Append one entry."""
    assert action in ACTIONS
    sequence = await service.index.next_sequence()
    await service.index.add_change({"sequence": sequence, "timestamp": _now(), "action": action,
                                    "study": study, "series": series, "sop": sop})


async def _metadata(service: Service, entry: Document, base: str) -> JsonDict | None:
    try:
        data = await service.blobs.get_sidecar(sidecar_name(entry["study"], entry["series"], entry["sop"], "json"))
    except NotFound:
        return None
    url = f"{base}/studies/{entry['study']}/series/{entry['series']}/instances/{entry['sop']}"
    return resolve_bulk_uris(json.loads(data)["dataset"], lambda relative: f"{url}/{relative}")


async def render(service: Service, entries: list[Document], include_metadata: bool, base: str) -> list[JsonDict]:
    """Entries in the Azure DICOM service's change-feed JSON."""
    latest = await service.index.last_changes([e["sop"] for e in entries])
    out = []
    for entry in entries:
        newest = latest.get(entry["sop"], entry)
        state = "deleted" if newest["action"] == "delete" else (
            "current" if newest["sequence"] == entry["sequence"] else "replaced")
        item: JsonDict = {
            "Sequence": entry["sequence"], "StudyInstanceUid": entry["study"], "SeriesInstanceUid": entry["series"],
            "SopInstanceUid": entry["sop"], "Action": entry["action"], "Timestamp": entry["timestamp"],
            "State": state,
        }
        if include_metadata and state == "current":
            item["Metadata"] = await _metadata(service, entry, base)
        out.append(item)
    return out
