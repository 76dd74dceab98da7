"""Blob Storage: the storage account and its stores, one per container and kind of data.

Blob is the system of record: everything the Cosmos index holds can be rebuilt from the
instance files (:mod:`dicomweb.storage.instances`) and their sidecars
(:mod:`dicomweb.storage.sidecars`), named by generation (:mod:`dicomweb.storage.naming`).
Upload sessions live in staging (:mod:`dicomweb.storage.staging`); scanner files to convert in the inbox
(:mod:`dicomweb.storage.inbox`).
"""

from __future__ import annotations

from azure.core.exceptions import AzureError, ResourceExistsError
from azure.storage.blob.aio import BlobServiceClient

from dicomweb.storage.inbox import InboxStore
from dicomweb.storage.instances import InstanceStore
from dicomweb.storage.inventory import Inventory
from dicomweb.storage.sidecars import SidecarStore
from dicomweb.storage.staging import StagingStore
from dicomweb.storage.transfer import RangeReader, SasSigner, failure


#: Container metadata naming the queue the local Azurite stand-in posts the container's blob events to.
EVENTS_METADATA = "dicomweb_events_queue"


class BlobStores:
    """The storage account: its four stores, sharing one SAS signer and one ranged reader, and the inventory of the
    service's three."""

    def __init__(self, service: BlobServiceClient, instance_container: str, sidecar_container: str,
                 staging_container: str, inbox_container: str, timeout_seconds: int = 20) -> None:
        self._service = service
        self.signer = SasSigner(service)
        self._ranges = RangeReader(self.signer, timeout_seconds)
        self.instances = InstanceStore(service.get_container_client(instance_container), self._ranges)
        self.sidecars = SidecarStore(service.get_container_client(sidecar_container))
        self.staging = StagingStore(service.get_container_client(staging_container), self.signer, self._ranges)
        self.inbox = InboxStore(service.get_container_client(inbox_container), self.signer)
        #: What the three containers hold, blob by blob (``dicomweb usage``).
        self.inventory = Inventory(self.instances.container, self.sidecars.container, self.staging.container)

    async def provision(self, events_queue: str | None = None, inbox_queue: str | None = None) -> None:
        """Create the containers where missing (idempotent), and subscribe ``events_queue`` (if given) to the instance
        container's blob events and ``inbox_queue`` to the inbox's: for the local stack only
        (:mod:`dicomweb.local.provision`); in Azure the Bicep owns them (the Event Grid subscriptions of
        ``infra/modules/events.bicep``).

        The local Azurite stand-in (``dicomweb/local/azurite_blob.js``) posts a container's
        blob events to the queue its ``dicomweb_events_queue`` metadata names.
        """
        for store in (self.instances, self.sidecars, self.staging, self.inbox):
            try:
                await store.container.create_container()
            except ResourceExistsError:
                pass
            except AzureError as exc:
                raise failure(exc, store.container.container_name) from exc
        for container, queue in ((self.instances.container, events_queue), (self.inbox.container, inbox_queue)):
            if queue is None:
                continue
            try:
                await container.set_container_metadata({EVENTS_METADATA: queue})
            except AzureError as exc:
                raise failure(exc, container.container_name) from exc

    async def close(self) -> None:
        """Release the HTTP sessions."""
        await self._ranges.close()
        await self._service.close()
