"""The change feed's documents: entries, the sequence counter and the watermark, in one partition of their own.

What the numbers mean and how holes are resolved is :mod:`dicomweb.changefeed`'s; this store
reads and writes the documents.
"""

from __future__ import annotations

from typing import Any, Sequence

from dicomweb.errors import StorageFailure
from dicomweb.storage.cosmos import NO_MATCH_FIELDS, Conflict, Container, Document, document_id

#: The partition of the change feed, its sequence counter and watermark (not a UID, so never a study's).
CHANGEFEED = "changefeed"
#: The change-feed action of a sequence number whose change never happened (hidden from readers).
SKIP = "skip"


def change_id(sequence: int) -> str:
    """Id of change-feed entry ``sequence`` (zero-padded, so ids sort as sequences do)."""
    return document_id("change", f"{sequence:016d}")


class ChangeStore(Container):
    """The change-feed partition of the shared container."""

    async def next_sequence(self) -> int:
        """The next change-feed sequence number: an atomic increment of the counter, which never conflicts."""
        counter = document_id("counter", "sequence")
        for _ in range(3):
            try:
                return int((await self.patch(CHANGEFEED, counter, [{"op": "incr", "path": "/value", "value": 1}]))
                           ["value"])
            except Conflict:
                try:
                    await self.create({"id": counter, "type": "counter", "studyInstanceUID": CHANGEFEED, "value": 0,
                                       **NO_MATCH_FIELDS})
                except Conflict:
                    pass
        raise StorageFailure("the change-feed counter could not be created")

    async def add(self, entry: Document) -> None:
        """Write change-feed entry ``entry["sequence"]``; Conflict when that sequence is taken."""
        await self.create({**entry, "id": change_id(entry["sequence"]), "type": "change",
                           "studyInstanceUID": CHANGEFEED, **NO_MATCH_FIELDS})

    async def get(self, sequence: int) -> Document | None:
        """Entry ``sequence`` (a skip included)."""
        return await self.find(CHANGEFEED, "change", f"{sequence:016d}")

    async def after(self, after: int, limit: int) -> list[Document]:
        """Up to ``limit`` entries (skips included) with a sequence above ``after``, in order."""
        return await self.page(
            "SELECT * FROM c WHERE c.studyInstanceUID = @partition AND c.type = 'change' AND c.sequence > @after"
            " ORDER BY c.sequence", {"@partition": CHANGEFEED, "@after": after}, CHANGEFEED, 0, limit)

    async def visible(self, after: int, upto: int, start: str | None, end: str | None,
                      limit: int) -> list[Document]:
        """Entries ``after < sequence <= upto`` (no skips) within [start, end), in order: a range read."""
        where = ["c.studyInstanceUID = @partition", "c.type = 'change'", "c.sequence > @after",
                 "c.sequence <= @upto", "c.action != @skip"]
        params: dict[str, Any] = {"@partition": CHANGEFEED, "@after": after, "@upto": upto, "@skip": SKIP}
        if start:
            where.append("c.timestamp >= @start")
            params["@start"] = start
        if end:
            where.append("c.timestamp < @end")
            params["@end"] = end
        sql = f"SELECT * FROM c WHERE {' AND '.join(where)} ORDER BY c.sequence"
        return await self.page(sql, params, CHANGEFEED, 0, limit)

    async def latest_visible(self, upto: int) -> Document | None:
        """The newest entry (no skip) at or below ``upto``."""
        docs = await self.query(
            "SELECT TOP 1 * FROM c WHERE c.studyInstanceUID = @partition AND c.type = 'change'"
            " AND c.sequence <= @upto AND c.action != @skip ORDER BY c.sequence DESC",
            {"@partition": CHANGEFEED, "@upto": upto, "@skip": SKIP}, CHANGEFEED)
        return docs[0] if docs else None

    async def watermark(self) -> int:
        """The highest sequence below which every entry is written or skipped (0 before any)."""
        doc = await self.find(CHANGEFEED, "counter", "watermark")
        return int(doc["value"]) if doc else 0

    async def raise_watermark(self, value: int) -> None:
        """Move the watermark up to ``value``; never down (a reader that raced ahead keeps its value)."""
        doc_id = document_id("counter", "watermark")
        try:
            await self.patch(CHANGEFEED, doc_id, [{"op": "set", "path": "/value", "value": value}],
                             condition=f"FROM c WHERE c[\"value\"] < {int(value)}")
        except Conflict:
            if await self.find(CHANGEFEED, "counter", "watermark") is None:
                try:
                    await self.create({"id": doc_id, "type": "counter", "studyInstanceUID": CHANGEFEED,
                                       "value": value, **NO_MATCH_FIELDS})
                except Conflict:
                    await self.raise_watermark(value)

    async def last_changes(self, sops: Sequence[str]) -> dict[str, Document]:
        """The newest change-feed entry of each SOP instance in ``sops``."""
        if not sops:
            return {}
        names = {f"@s{i}": sop for i, sop in enumerate(sorted(set(sops)))}
        docs = await self.query(
            "SELECT c.sop, c.sequence, c.action FROM c WHERE c.studyInstanceUID = @partition AND c.type = 'change'"
            f" AND c.sop IN ({', '.join(names)})", {"@partition": CHANGEFEED, **names}, CHANGEFEED)
        latest: dict[str, Document] = {}
        for doc in docs:
            if doc["sop"] not in latest or doc["sequence"] > latest[doc["sop"]]["sequence"]:
                latest[doc["sop"]] = doc
        return latest
