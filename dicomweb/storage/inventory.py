"""What the storage account holds: every blob of the service's three containers with its size and billed tier.

The one reader behind ``dicomweb usage`` and ``GET /usage`` (:mod:`dicomweb.usage`). It lists, it
never reads a blob's content, and it hands the listing on a page at a time (at most 5,000 entries, as
Blob Storage pages it), so nothing holds every name of a large store.

What counts is what Blob Storage bills capacity for:

- The tier is the blob's access tier (``blob_tier``). A blob whose rehydration is pending
  (``archive_status`` ``rehydrate-pending-to-hot``/``-cool``/``-cold``) is still in the Archive tier
  (it cannot be read yet, and Azure bills it as archived until it arrives), so it counts as Archive.
  A blob without an explicit tier reports the account's default (``blob_tier_inferred``), which the
  listing gives as well; one with no tier at all (page or append blobs, which the service never writes)
  counts as Hot, the default tier of the account ``infra/`` deploys.
- Soft-deleted blobs and snapshots (the account keeps deleted blobs, and the old content of an
  overwritten one, for ``softDeleteDays``) are listed too, marked ``soft_deleted``: Azure bills them
  until the retention ends. Their size is an upper bound for a snapshot that shares blocks with its blob.
- Uncommitted blocks (an upload session's blocks before its commit) are not in any listing and are
  not counted.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass

from azure.core.exceptions import AzureError
from azure.storage.blob.aio import ContainerClient

from dicomweb.storage.transfer import failure

#: The access tiers of a standard account, hottest first.
TIERS = ("Hot", "Cool", "Cold", "Archive")
#: The kinds of data, one per container.
KINDS = ("instances", "sidecars", "staging")
ARCHIVE = "Archive"
#: What a rehydration that has not finished says in ``archive_status`` (``rehydrate-pending-to-<tier>``).
REHYDRATE_PENDING = "rehydrate-pending"


@dataclass(frozen=True, slots=True)
class BlobEntry:
    """One blob as the listing describes it."""

    name: str
    size: int
    #: One of :data:`TIERS`: the tier its capacity is billed in.
    tier: str
    #: A soft-deleted blob or a snapshot (the service takes none; an overwrite under soft delete leaves a deleted
    #: one): billed until the retention ends, no longer part of what is stored.
    soft_deleted: bool = False


def billed_tier(blob_tier: str | None, archive_status: str | None) -> str:
    """The tier a blob's capacity is billed in: a pending rehydration is still Archive; no tier is Hot."""
    if archive_status and archive_status.startswith(REHYDRATE_PENDING):
        return ARCHIVE
    tier = str(getattr(blob_tier, "value", blob_tier) or "")
    for known in TIERS:
        if tier.lower() == known.lower():
            return known
    return TIERS[0]


class Inventory:
    """Lists the instance, sidecar and staging containers, with size and billed tier of every blob."""

    def __init__(self, instances: ContainerClient, sidecars: ContainerClient, staging: ContainerClient) -> None:
        self._containers = {"instances": instances, "sidecars": sidecars, "staging": staging}

    async def pages(self, kind: str, prefix: str = "", page_size: int | None = None
                    ) -> AsyncGenerator[list[BlobEntry], None]:
        """Every blob of ``kind``'s container (one of :data:`KINDS`) under ``prefix``, a page at a time (of
        ``page_size`` entries; Blob Storage's default and most is 5,000), in name order (Blob Storage lists by
        name; soft-deleted blobs and snapshots sit next to their name)."""
        container = self._containers[kind]
        listing = container.list_blobs(name_starts_with=prefix or None, include=["deleted", "snapshots"],
                                       results_per_page=page_size)
        try:
            async for page in listing.by_page():
                yield [BlobEntry(blob.name, int(blob.size or 0), billed_tier(blob.blob_tier, blob.archive_status),
                                 bool(blob.deleted or blob.snapshot))
                       async for blob in page]
        except AzureError as exc:
            raise failure(exc, f"{kind} listing ({container.container_name})") from exc
