"""Blob events as Event Grid delivers them to a Storage Queue (locally: as the Azurite stand-in writes them), read
by the two queue-triggered functions that follow a container: availability (:mod:`dicomweb.availability`) and the
inbox (:mod:`dicomweb.inbox`)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Collection

#: Events one queue message may carry (Event Grid sends one; an array is accepted, bounded).
MAX_EVENTS_PER_MESSAGE = 100


def parse(text: str) -> list[dict[str, Any]]:
    """The events of one queue message: Event Grid schema or CloudEvents JSON, plain or base64 (Event Grid
    base64-encodes what it writes to a Storage Queue; ``host.json`` hands messages over as they are)."""
    try:
        body = json.loads(text)
    except ValueError:
        try:
            body = json.loads(base64.b64decode(text, validate=True))
        except (ValueError, binascii.Error):
            return []
    events = body if isinstance(body, list) else [body]
    return [e for e in events[:MAX_EVENTS_PER_MESSAGE] if isinstance(e, dict)]


def blob_name(event: dict[str, Any], container: str, types: Collection[str]) -> str | None:
    """The name of the blob of ``container`` an event of one of ``types`` concerns (None for any other event)."""
    if (event.get("eventType") or event.get("type")) not in types:
        return None
    subject = str(event.get("subject") or "")
    prefix = f"/blobServices/default/containers/{container}/blobs/"
    return subject[len(prefix):] or None if subject.startswith(prefix) else None
