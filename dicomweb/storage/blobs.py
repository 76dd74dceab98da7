"""Blob Storage: the storage account and its stores, one per container and kind of data.

Blob is the system of record: everything the Cosmos index holds can be rebuilt from the
instance files (:mod:`dicomweb.storage.instances`) and their sidecars
(:mod:`dicomweb.storage.sidecars`), named by generation (:mod:`dicomweb.storage.naming`).
Upload sessions live in staging (:mod:`dicomweb.storage.staging`).
"""

from __future__ import annotations

from azure.core.exceptions import AzureError, ResourceExistsError
from azure.storage.blob.aio import BlobServiceClient

from dicomweb.storage.instances import InstanceStore
from dicomweb.storage.sidecars import SidecarStore
from dicomweb.storage.staging import StagingStore
from dicomweb.storage.transfer import RangeReader, SasSigner, failure


class BlobStores:
    """The storage account: its three stores, sharing one SAS signer and one ranged reader."""

    def __init__(self, service: BlobServiceClient, instance_container: str, sidecar_container: str,
                 staging_container: str, timeout_seconds: int = 20) -> None:
        self._service = service
        self.signer = SasSigner(service)
        self._ranges = RangeReader(self.signer, timeout_seconds)
        self.instances = InstanceStore(service.get_container_client(instance_container), self._ranges)
        self.sidecars = SidecarStore(service.get_container_client(sidecar_container))
        self.staging = StagingStore(service.get_container_client(staging_container), self.signer, self._ranges)

    async def provision(self) -> None:
        """Create the containers where missing (idempotent): for the local stack only
        (:mod:`dicomweb.local.provision`); in Azure the Bicep owns them."""
        for store in (self.instances, self.sidecars, self.staging):
            try:
                await store.container.create_container()
            except ResourceExistsError:
                pass
            except AzureError as exc:
                raise failure(exc, store.container.container_name) from exc

    async def close(self) -> None:
        """Release the HTTP sessions."""
        await self._ranges.close()
        await self._service.close()
