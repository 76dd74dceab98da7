"""The audit trail: who stored, replaced or deleted what, when, and how it ended.

Every write and delete leaves one structured record on the ``dicomweb.audit`` logger:
the message is the record as JSON (what a plain log shows) and the same fields are the
record's attributes (what OpenTelemetry exports to Application Insights as custom
dimensions, see :mod:`dicomweb.storage.monitor`). Records name principals and UIDs,
never patient data: an outcome is a status and a failure reason, not a message, since
messages may quote a dataset's values. The change feed keeps the actor of each change too.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from dicomweb import auth

log = logging.getLogger("dicomweb.audit")

#: Fields a record may carry besides who and when (UIDs are no patient identifiers).
FIELDS = ("route", "status", "study", "series", "instance", "generation", "session", "reason")


def actor() -> dict[str, str]:
    """The acting principal as the change feed and the index keep it."""
    principal = auth.current()
    return {"id": principal.id, **({"app": principal.app} if principal.app else {})}


def record(action: str, outcome: str, **what: str | int | None) -> None:
    """Log one audit record of ``action`` by the current principal."""
    unknown = set(what) - set(FIELDS)
    assert not unknown, f"audit fields {unknown} are not declared"
    principal = auth.current()
    entry: dict[str, str | int] = {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "action": action, "outcome": outcome, "principal": principal.id,
    }
    if principal.app:
        entry["app"] = principal.app
    entry.update({k: v for k, v in what.items() if v is not None})
    log.info("audit %s", json.dumps(entry), extra={f"audit.{k}": v for k, v in entry.items()})
