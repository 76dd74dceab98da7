"""Storage Queue adapter: the service's background jobs, and the consumer side the local host needs.

In Azure the Functions host consumes the job queue (a queue trigger): it keeps a message
invisible while its function runs, makes it visible again after a failure, and moves it
to ``<queue>-poison`` after ``maxDequeueCount`` deliveries (``host.json``). The service
itself only sends. :class:`QueueConsumer` is what ``dicomweb serve`` uses to play the
host's part against Azurite's queue service, and :func:`add_only_sas` lets the local Blob
stand-in post blob events to a queue as Event Grid does in Azure.

Messages are JSON text (``host.json`` sets ``messageEncoding`` to ``none``, so the host
reads them as sent).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import AccountSasPermissions, ResourceTypes, generate_account_sas
from azure.storage.queue.aio import QueueClient, QueueServiceClient

from dicomweb.errors import StorageFailure

#: Azure's longest message delay and visibility timeout (7 days).
MAX_DELAY_SECONDS = 7 * 24 * 3600
POISON_SUFFIX = "-poison"
#: How long the local stand-in's event SAS lasts: longer than any local stack runs.
EVENTS_SAS_DAYS = 3650


def _failure(exc: AzureError, what: str) -> StorageFailure:
    if isinstance(exc, ResourceNotFoundError):
        return StorageFailure(f"Queue Storage has no queue '{what}': the infrastructure (infra/) deploys it",
                              retry_after=5)
    return StorageFailure(f"Queue Storage failed on {what}: {exc.__class__.__name__}")


def add_only_sas(account_name: str, account_key: str) -> str:
    """An account SAS that can only add messages to queues: all the local Blob stand-in needs to post the
    events Event Grid delivers in Azure (``dicomweb/local/azurite_blob.js``), and nothing it could read."""
    return generate_account_sas(account_name, account_key, ResourceTypes(object=True), AccountSasPermissions(add=True),
                                datetime.now(timezone.utc) + timedelta(days=EVENTS_SAS_DAYS), services="q")


class JobQueue:
    """The queue of background jobs: the service sends to it, the platform delivers."""

    def __init__(self, service: QueueServiceClient, name: str) -> None:
        self._service = service
        self.name = name
        self.client: QueueClient = service.get_queue_client(name)
        self.poison: QueueClient = service.get_queue_client(name + POISON_SUFFIX)

    async def provision(self) -> None:
        """Create the queue and its poison queue where missing (idempotent): for the local stack only
        (:mod:`dicomweb.local.provision`); in Azure the Bicep owns them."""
        for client in (self.client, self.poison):
            try:
                await client.create_queue()
            except ResourceExistsError:
                pass
            except AzureError as exc:
                raise _failure(exc, client.queue_name) from exc

    async def send(self, body: dict[str, Any], delay_seconds: int = 0) -> None:
        """Send one job, visible after ``delay_seconds``."""
        try:
            await self.client.send_message(json.dumps(body, separators=(",", ":")),
                                           visibility_timeout=min(max(0, delay_seconds), MAX_DELAY_SECONDS) or None)
        except AzureError as exc:
            raise _failure(exc, self.name) from exc

    async def close(self) -> None:
        """Release the HTTP session."""
        await self._service.close()


@dataclass
class Delivery:
    """A received message: its body, how often it was delivered, and the receipt that updates it."""

    id: str
    content: str
    dequeue_count: int
    pop_receipt: str


class QueueConsumer:
    """Receives, holds, completes and poisons messages of one queue, as the Functions host does."""

    def __init__(self, service: QueueServiceClient, name: str) -> None:
        self._service = service
        self.name = name
        self._queue = service.get_queue_client(name)
        self._poison = service.get_queue_client(name + POISON_SUFFIX)

    async def ensure(self) -> None:
        """Create the queue and its poison queue if they do not exist."""
        for client in (self._queue, self._poison):
            try:
                await client.create_queue()
            except ResourceExistsError:
                pass

    async def receive(self, most: int, hold_seconds: int) -> list[Delivery]:
        """Up to ``most`` visible messages, each invisible to others for ``hold_seconds``."""
        found = []
        async for message in self._queue.receive_messages(messages_per_page=most, max_messages=most,
                                                           visibility_timeout=hold_seconds):
            found.append(Delivery(message.id, message.content, message.dequeue_count or 1, message.pop_receipt))
        return found

    async def hold(self, delivery: Delivery, seconds: int) -> None:
        """Keep ``delivery`` invisible for ``seconds`` more (while its function still runs, or before a retry)."""
        message = await self._queue.update_message(delivery.id, delivery.pop_receipt, visibility_timeout=seconds)
        delivery.pop_receipt = message.pop_receipt

    async def complete(self, delivery: Delivery) -> None:
        """Delete a processed message."""
        try:
            await self._queue.delete_message(delivery.id, delivery.pop_receipt)
        except ResourceNotFoundError:
            pass

    async def poison(self, delivery: Delivery) -> None:
        """Move a message that failed every delivery to the poison queue."""
        await self._poison.send_message(delivery.content)
        await self.complete(delivery)

    async def close(self) -> None:
        await self._service.close()
