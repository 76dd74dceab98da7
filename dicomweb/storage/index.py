"""Cosmos DB (NoSQL API) adapter: the search index of studies, series and instances.

One container, partitioned by ``/studyInstanceUID`` so a study's documents live
together (a study is far below the 20 GB logical-partition limit) and retrieval of
a study or series is a single-partition query; searches across studies fan out over
the physical partitions, which Cosmos adds as the index grows. Document ids are
``<level>:<uid>``. Searches read only the indexed ``m`` (normalised values) and ``w``
(person-name words) fields; the returned DICOM JSON (``attributes``) is not indexed.
Queries always carry the partition-key equality when they name a partition, page
with continuation tokens, and never use OFFSET (the local server and the cost model
both punish it).
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any, Sequence

from azure.core import MatchConditions
from azure.cosmos import PartitionKey
from azure.cosmos.aio import ContainerProxy, CosmosClient
from azure.cosmos.exceptions import (
    CosmosAccessConditionFailedError,
    CosmosHttpResponseError,
    CosmosResourceExistsError,
)

from dicomweb.dicom.query import Filter
from dicomweb.errors import Duplicate, StorageFailure

PARTITION_KEY = "/studyInstanceUID"
#: What Cosmos indexes: the match fields and keys, never the returned attributes (the Bicep deploys the same file).
INDEXING_POLICY: dict[str, Any] = json.loads((Path(__file__).with_name("indexing-policy.json")).read_text())
#: The partition of the change feed and its sequence counter (not a UID, so never a study's).
CHANGEFEED = "changefeed"
SEQUENCE_ATTEMPTS = 50
#: Every document has the match fields: the local Cosmos server fails a search that reads below a missing one.
NO_MATCH_FIELDS: dict[str, Any] = {"m": {}, "w": {}}
Document = dict[str, Any]


class Conflict(Exception):
    """A conditional write lost a race (the document changed or appeared): read again and retry."""


def document_id(level: str, uid: str) -> str:
    """Id of the ``level`` ("study", "series" or "instance") document of ``uid``."""
    return f"{level}:{uid}"


class IndexStore:
    """The index container of one Cosmos DB account."""

    def __init__(self, client: CosmosClient, database: str, container: str) -> None:
        self._client = client
        self._database_name = database
        self._container_name = container
        self._container: ContainerProxy | None = None

    @property
    def container(self) -> ContainerProxy:
        """The container, once :meth:`ensure` ran."""
        assert self._container is not None, "IndexStore.ensure() not called"
        return self._container

    async def ensure(self) -> None:
        """Create the database and container if missing (idempotent)."""
        try:
            database = await self._client.create_database_if_not_exists(self._database_name)
            self._container = await database.create_container_if_not_exists(
                self._container_name, partition_key=PartitionKey(path=PARTITION_KEY), indexing_policy=INDEXING_POLICY
            )
        except CosmosHttpResponseError as exc:
            raise StorageFailure(f"Cosmos DB failed to open the index: {exc.status_code}") from exc

    async def close(self) -> None:
        """Release the HTTP session."""
        await self._client.close()

    async def _query(self, query: str, parameters: dict[str, Any], study: str | None) -> list[Document]:
        params = [{"name": name, "value": value} for name, value in parameters.items()]
        kwargs: dict[str, Any] = {"partition_key": study} if study is not None else {}
        try:
            return [doc async for doc in self.container.query_items(query, parameters=params, **kwargs)]
        except CosmosHttpResponseError as exc:
            raise StorageFailure(f"Cosmos DB query failed: {exc.status_code}") from exc

    async def find(self, study: str, level: str, uid: str) -> Document | None:
        """One document by id (a query: the local server answers 500 for a missing point read)."""
        docs = await self._query(
            "SELECT * FROM c WHERE c.studyInstanceUID = @study AND c.id = @id",
            {"@study": study, "@id": document_id(level, uid)},
            study,
        )
        return docs[0] if docs else None

    async def instances(self, study: str, series: str | None = None) -> list[Document]:
        """Instance documents of a study, or of one series, in a stable order."""
        query = "SELECT * FROM c WHERE c.studyInstanceUID = @study AND c.type = 'instance'"
        params: dict[str, Any] = {"@study": study}
        if series is not None:
            query += " AND c.seriesInstanceUID = @series"
            params["@series"] = series
        docs = await self._query(query, params, study)
        return sorted(docs, key=lambda d: (d["seriesInstanceUID"], d.get("instanceNumber") or 0, d["id"]))

    async def create(self, document: Document) -> None:
        """Insert a document that must not exist yet."""
        try:
            await self.container.create_item(document)
        except CosmosResourceExistsError as exc:
            raise Duplicate("the instance is already indexed") from exc
        except CosmosHttpResponseError as exc:
            raise StorageFailure(f"Cosmos DB failed to index: {exc.status_code}") from exc

    async def upsert(self, document: Document) -> None:
        """Insert or replace a document."""
        try:
            await self.container.upsert_item(document)
        except CosmosHttpResponseError as exc:
            raise StorageFailure(f"Cosmos DB failed to index: {exc.status_code}") from exc

    async def delete(self, study: str, level: str, uid: str) -> None:
        """Remove a document; a missing one is fine."""
        try:
            await self.container.delete_item(document_id(level, uid), partition_key=study)
        except CosmosHttpResponseError as exc:
            if exc.status_code != 404:
                raise StorageFailure(f"Cosmos DB failed to delete: {exc.status_code}") from exc

    async def search(self, level: str, filters: Sequence[Filter], limit: int, offset: int) -> list[Document]:
        """Documents of ``level`` matching every filter, in a stable order, ``offset`` skipped.

        Paging goes through the SDK's continuation tokens, never OFFSET; a filter on one
        StudyInstanceUID keeps the query inside that study's partition.
        """
        sql, params, study = build_search(level, filters)
        return await self._page(sql, {p["name"]: p["value"] for p in params}, study, offset, limit)

    async def _page(self, sql: str, parameters: dict[str, Any], partition: str | None, offset: int,
                    limit: int) -> list[Document]:
        """Results ``offset .. offset+limit`` of a query, read page by page with continuation tokens."""
        params = [{"name": name, "value": value} for name, value in parameters.items()]
        kwargs: dict[str, Any] = {"partition_key": partition} if partition is not None else {}
        found: list[Document] = []
        skipped = 0
        try:
            pages = self.container.query_items(
                sql, parameters=params, max_item_count=min(offset + limit, 1000), **kwargs
            ).by_page()
            async for page in pages:
                async for doc in page:
                    if skipped < offset:
                        skipped += 1
                        continue
                    found.append(doc)
                    if len(found) == limit:
                        return found
        except CosmosHttpResponseError as exc:
            raise StorageFailure(f"Cosmos DB query failed: {exc.status_code}") from exc
        return found

    async def replace(self, document: Document) -> None:
        """Write back a document read with :meth:`find`, only if nobody changed it since (else Conflict)."""
        body = {k: v for k, v in document.items() if not k.startswith("_")}
        try:
            await self.container.replace_item(
                document["id"], body, etag=document["_etag"], match_condition=MatchConditions.IfNotModified
            )
        except CosmosAccessConditionFailedError as exc:
            raise Conflict(document["id"]) from exc
        except CosmosHttpResponseError as exc:
            raise StorageFailure(f"Cosmos DB failed to index: {exc.status_code}") from exc

    async def insert(self, document: Document) -> None:
        """Create a document that another writer may create at the same moment (then Conflict)."""
        try:
            await self.container.create_item(document)
        except CosmosResourceExistsError as exc:
            raise Conflict(document["id"]) from exc
        except CosmosHttpResponseError as exc:
            raise StorageFailure(f"Cosmos DB failed to index: {exc.status_code}") from exc

    async def count_instances(self, study: str, series: str) -> int:
        """Instances of one series."""
        docs = await self._query(
            "SELECT VALUE COUNT(1) FROM c WHERE c.studyInstanceUID = @study AND c.type = 'instance'"
            " AND c.seriesInstanceUID = @series",
            {"@study": study, "@series": series},
            study,
        )
        return int(docs[0]) if docs else 0

    async def series_of(self, study: str) -> list[Document]:
        """Series documents of a study."""
        return await self._query(
            "SELECT * FROM c WHERE c.studyInstanceUID = @study AND c.type = 'series'", {"@study": study}, study
        )

    async def next_sequence(self) -> int:
        """The next change-feed sequence number: a counter document bumped with optimistic concurrency."""
        for attempt in range(SEQUENCE_ATTEMPTS):
            current = await self.find(CHANGEFEED, "counter", "sequence")
            value = (current or {}).get("value", 0) + 1
            doc = {"id": document_id("counter", "sequence"), "type": "counter", "studyInstanceUID": CHANGEFEED,
                   "value": value, **NO_MATCH_FIELDS}
            try:
                if current is None:
                    await self.insert(doc)
                else:
                    await self.replace({**doc, "_etag": current["_etag"]})
                return value
            except Conflict:
                await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
        raise StorageFailure("the change feed is too busy; try again")

    async def add_change(self, entry: Document) -> None:
        """Append a change-feed entry (``sequence`` set by :meth:`next_sequence`)."""
        await self.insert({**entry, "id": document_id("change", f"{entry['sequence']:016d}"), "type": "change",
                           "studyInstanceUID": CHANGEFEED, **NO_MATCH_FIELDS})

    async def changes(self, start: str | None, end: str | None, offset: int, limit: int) -> list[Document]:
        """Change-feed entries in sequence order within [start, end), ``offset`` skipped."""
        where = ["c.studyInstanceUID = @partition", "c.type = 'change'"]
        params: dict[str, Any] = {"@partition": CHANGEFEED}
        if start:
            where.append("c.timestamp >= @start")
            params["@start"] = start
        if end:
            where.append("c.timestamp < @end")
            params["@end"] = end
        sql = f"SELECT * FROM c WHERE {' AND '.join(where)} ORDER BY c.sequence"
        return await self._page(sql, params, CHANGEFEED, offset, limit)

    async def latest_change(self) -> Document | None:
        """The newest change-feed entry."""
        docs = await self._query(
            "SELECT TOP 1 * FROM c WHERE c.studyInstanceUID = @partition AND c.type = 'change'"
            " ORDER BY c.sequence DESC", {"@partition": CHANGEFEED}, CHANGEFEED)
        return docs[0] if docs else None

    async def last_changes(self, sops: Sequence[str]) -> dict[str, Document]:
        """The newest change-feed entry of each SOP instance in ``sops``."""
        if not sops:
            return {}
        names = {f"@s{i}": sop for i, sop in enumerate(sorted(set(sops)))}
        docs = await self._query(
            "SELECT c.sop, c.sequence, c.action FROM c WHERE c.studyInstanceUID = @partition AND c.type = 'change'"
            f" AND c.sop IN ({', '.join(names)})", {"@partition": CHANGEFEED, **names}, CHANGEFEED)
        latest: dict[str, Document] = {}
        for doc in docs:
            if doc["sop"] not in latest or doc["sequence"] > latest[doc["sop"]]["sequence"]:
                latest[doc["sop"]] = doc
        return latest

    async def count(self) -> int:
        """Number of documents (``serve`` reindexes an empty index over existing blobs)."""
        docs = await self._query("SELECT VALUE COUNT(1) FROM c", {}, None)
        return int(docs[0]) if docs else 0


def build_search(level: str, filters: Sequence[Filter]) -> tuple[str, list[dict[str, Any]], str | None]:
    """Cosmos SQL, its parameters, and the one partition it needs (if any) for a QIDO search.

    Every condition reads the indexed ``m`` (values) and ``w`` (name words) arrays.
    """
    params: list[dict[str, Any]] = [{"name": "@type", "value": level}]
    where = ["c.type = @type"]
    study: str | None = None

    def param(value: Any) -> str:
        name = f"@p{len(params)}"
        params.append({"name": name, "value": value})
        return name

    for item in filters:
        field = f"c.m.{item.attribute.keyword}"
        if item.attribute.keyword == "StudyInstanceUID" and item.op == "in":
            where.append(f"c.studyInstanceUID IN ({', '.join(param(v) for v in item.values)})")
            if len(item.values) == 1:
                study = item.values[0]
        elif item.op == "in":
            where.append(f"EXISTS(SELECT VALUE v FROM v IN {field} WHERE v IN ({', '.join(param(v) for v in item.values)}))")
        elif item.op == "prefix":
            where.append(f"EXISTS(SELECT VALUE v FROM v IN {field} WHERE STARTSWITH(v, {param(item.values[0])}))")
        elif item.op == "wildcard":
            where.append(f"EXISTS(SELECT VALUE v FROM v IN {field} WHERE RegexMatch(v, {param(item.values[0])}))")
        elif item.op == "range":
            low, high = item.values
            bounds = ([f"v >= {param(low)}"] if low is not None else []) + (
                [f"v <= {param(high)}"] if high is not None else [])
            where.append(f"EXISTS(SELECT VALUE v FROM v IN {field} WHERE {' AND '.join(bounds)})")
        elif item.op == "words":
            words = f"c.w.{item.attribute.keyword}"
            for word in item.values:
                where.append(f"EXISTS(SELECT VALUE w FROM w IN {words} WHERE STARTSWITH(w, {param(word)}))")
        else:
            raise ValueError(f"unknown filter {item.op}")
    return f"SELECT * FROM c WHERE {' AND '.join(where)} ORDER BY c.id", params, study
