"""What a lifecycle management run sees of Blob Storage and does to it: each blob's facts, Set Blob Tier, Delete Blob.

Azure runs the storage account's policy itself, once a day. :mod:`dicomweb.local.lifecycle` runs the
same policy on the local store through this class, with the very calls Azure's run makes, so the local
Blob stand-in sends the tier-change and deletion events Azure's run causes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import AsyncIterator

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, HttpResponseError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobProperties
from azure.storage.blob.aio import ContainerClient

from dicomweb.storage.blobs import BlobStores
from dicomweb.storage.transfer import failure


@dataclass(frozen=True)
class BlobFacts:
    """What a lifecycle rule looks at on one base blob."""

    container: str
    name: str
    blob_type: str
    tier: str
    #: ``rehydrate-pending-to-…`` while a rehydration is under way, else None.
    archive_status: str | None
    tags: dict[str, str]
    created: datetime
    modified: datetime
    #: None where the blob has no last access time (written before tracking was on).
    accessed: datetime | None
    #: None where the tier was never set explicitly.
    tier_changed: datetime | None
    etag: str


def _text(value: object) -> str | None:
    """An SDK enum or string as plain text."""
    return None if value is None else str(getattr(value, "value", value))


def _facts(container: str, blob: BlobProperties) -> BlobFacts:
    return BlobFacts(container, blob.name, _text(blob.blob_type) or "", _text(blob.blob_tier) or "Hot",
                     _text(blob.archive_status), dict(blob.tags or {}), blob.creation_time, blob.last_modified,
                     blob.last_accessed_on, blob.blob_tier_change_time, blob.etag)


class LifecycleStore:
    """The containers of one store (instances, sidecars, staging) as a lifecycle run walks and changes them."""

    def __init__(self, stores: BlobStores) -> None:
        self._stores = stores
        self._containers: dict[str, ContainerClient] = {
            store.container.container_name: store.container
            for store in (stores.instances, stores.sidecars, stores.staging)}

    @property
    def containers(self) -> list[str]:
        return list(self._containers)

    async def blobs(self) -> AsyncIterator[BlobFacts]:
        """Every committed base blob of the containers, with its tags (one List Blobs per page, as the run lists)."""
        for name, container in self._containers.items():
            try:
                async for blob in container.list_blobs(include=["tags"]):
                    yield _facts(name, blob)
            except AzureError as exc:
                raise failure(exc, name) from exc

    async def set_tier(self, facts: BlobFacts, tier: str) -> bool:
        """Move a blob to ``tier``; False when it is gone or a rehydration began since it was listed."""
        try:
            await self._containers[facts.container].get_blob_client(facts.name).set_standard_blob_tier(tier)
        except ResourceNotFoundError:
            return False
        except HttpResponseError as exc:
            if exc.error_code == "BlobBeingRehydrated":
                return False
            raise failure(exc, facts.name) from exc
        except AzureError as exc:
            raise failure(exc, facts.name) from exc
        return True

    async def delete(self, facts: BlobFacts) -> bool:
        """Delete a blob as it was listed; False when it is gone or was written since."""
        try:
            await self._containers[facts.container].delete_blob(facts.name, etag=facts.etag,
                                                                match_condition=MatchConditions.IfNotModified)
        except (ResourceNotFoundError, ResourceModifiedError):
            return False
        except AzureError as exc:
            raise failure(exc, facts.name) from exc
        return True

    async def close(self) -> None:
        await self._stores.close()
