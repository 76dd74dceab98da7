"""Claims: one document per SOP Instance UID, the store-wide uniqueness check and the state of its generation.

Each claim lives in a partition of its own (``claim:<sop>``, a prefix no UID has), so
claiming is a point create and any writer can read it in one call. What a claim holds and
how it moves between states is :mod:`dicomweb.generations`'s; this store only reads and
writes the documents.
"""

from __future__ import annotations

from typing import Any

from dicomweb.storage.cosmos import Container, Document


def claim_partition(sop: str) -> str:
    """The partition of an instance's claim (a prefix no UID has, so never a study's)."""
    return f"claim:{sop}"


class ClaimStore(Container):
    """The claims in the shared container."""

    async def get(self, sop: str) -> Document | None:
        """The claim of SOP instance ``sop`` (None when it has none)."""
        return await self.find(claim_partition(sop), "claim", sop)

    async def remove(self, claim: Document) -> bool:
        """Delete ``claim`` if nobody changed it since it was read (else Conflict); False when it is gone."""
        return await self.delete(claim_partition(claim["sop"]), "claim", claim["sop"], etag=claim["_etag"])

    async def update(self, sop: str, operations: list[dict[str, Any]], condition: str) -> Document:
        """Patch the claim of ``sop`` if ``condition`` holds (else Conflict); the claim afterwards."""
        return await self.patch(claim_partition(sop), f"claim:{sop}", operations, condition)

    async def of_change(self, sequence: int) -> Document | None:
        """The claim whose last change is ``sequence`` (a fan-out query, run only to resolve a gap)."""
        docs = await self.query("SELECT * FROM c WHERE c.type = 'claim' AND c.sequence = @s", {"@s": sequence}, None)
        return docs[0] if docs else None

    async def in_state(self, state: str, study: str, series: str | None = None,
                       sop: str | None = None) -> list[Document]:
        """Claims in ``state`` within a study (or series, or one instance): a fan-out query, for the rare paths
        (a DELETE repeated after a deletion that died half way)."""
        where = ["c.type = 'claim'", "c.state = @state", "c.study = @study"]
        params: dict[str, Any] = {"@state": state, "@study": study}
        for name, value in (("series", series), ("sop", sop)):
            if value is not None:
                where.append(f"c.{name} = @{name}")
                params[f"@{name}"] = value
        return await self.query(f"SELECT * FROM c WHERE {' AND '.join(where)}", params, None)
