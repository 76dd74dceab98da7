"""Background jobs: work that outlives an HTTP request travels on the job queue.

Nothing runs after an HTTP function has answered. A request that starts longer work
(an upload's ingest, the rest of a deletion that failed half way) or a timer that finds
work (expired upload sessions) sends a job; a queue-triggered function runs it, on any
worker, with the platform's at-least-once delivery: a worker that vanishes mid-job lets
the message reappear, and a job that fails every delivery lands in the poison queue.
So every job is idempotent, and its handler gets told when a delivery is the last one
(to record why it gave up before the message is poisoned).

Each kind of job has one handler, registered by the module that owns that work with
:func:`handler`; a job carries the actor that caused it, so audit records and the change
feed name the principal, not the queue.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from dicomweb import audit, auth
from dicomweb.service import Service

log = logging.getLogger(__name__)

#: Deliveries of one message before it goes to the poison queue (``host.json`` maxDequeueCount).
MAX_DELIVERIES = 5


@dataclass(frozen=True)
class Delivery:
    """One delivery of a job: its fields, and whether it is the last before the poison queue."""

    fields: dict[str, Any]
    attempt: int

    @property
    def last(self) -> bool:
        return self.attempt >= MAX_DELIVERIES


Handler = Callable[[Service, Delivery], Awaitable[None]]
_handlers: dict[str, Handler] = {}


def handler(kind: str) -> Callable[[Handler], Handler]:
    """Register the handler of jobs of ``kind`` (one per kind)."""
    def register(function: Handler) -> Handler:
        assert kind not in _handlers, f"two handlers for {kind} jobs"
        _handlers[kind] = function
        return function

    return register


async def enqueue(service: Service, kind: str, delay_seconds: int = 0, **fields: Any) -> None:
    """Send a job of ``kind`` (its handler must be registered), on behalf of the current principal."""
    assert kind in _handlers, f"no handler for {kind} jobs"
    await service.jobs.send({"kind": kind, "actor": audit.actor(), **fields}, delay_seconds)


async def run(service: Service, body: dict[str, Any], attempt: int) -> None:
    """Run one delivered job as the principal that caused it; raise to have it delivered again."""
    kind = body.get("kind")
    function = _handlers.get(kind) if isinstance(kind, str) else None
    if function is None:
        log.error("dropped a job of unknown kind %r", kind)
        return
    actor = body.get("actor") or {}
    principal = auth.Principal(str(actor.get("id") or auth.SYSTEM.id), actor.get("app"), auth.SYSTEM.permissions)
    token = auth.act_as(principal)
    try:
        fields = {k: v for k, v in body.items() if k not in ("kind", "actor")}
        await function(service, Delivery(fields, attempt))
    finally:
        auth.reset(token)
