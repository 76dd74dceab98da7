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

Beside the study partitions the container holds one small partition per SOP
Instance UID (its *claim*: where the instance lives and its current generation,
the store-wide uniqueness check) and the change-feed partition (its entries, a
sequence counter and the visibility watermark).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

import aiohttp
from azure.core import MatchConditions
from azure.core.exceptions import AzureError
from azure.cosmos import PartitionKey
from azure.cosmos.aio import ContainerProxy, CosmosClient
from azure.cosmos.exceptions import (
    CosmosAccessConditionFailedError,
    CosmosResourceExistsError,
    CosmosResourceNotFoundError,
)
from azure.cosmos.http_constants import SubStatusCodes

from dicomweb.dicom.query import Filter
from dicomweb.errors import BadRequest, ConcurrentChange, DicomWebError, StorageFailure

PARTITION_KEY = "/studyInstanceUID"
#: What Cosmos indexes: the match fields and keys, never the returned attributes (the Bicep deploys the same file).
INDEXING_POLICY: dict[str, Any] = json.loads((Path(__file__).with_name("indexing-policy.json")).read_text())
#: The partition of the change feed, its sequence counter and watermark (not a UID, so never a study's).
CHANGEFEED = "changefeed"
#: Every document has the match fields: the local Cosmos server fails a search that reads below a missing one.
NO_MATCH_FIELDS: dict[str, Any] = {"m": {}, "w": {}}
#: The change-feed action of a sequence number whose change never happened (hidden from readers).
SKIP = "skip"
Document = dict[str, Any]


class Conflict(ConcurrentChange):
    """A conditional write lost a race (the document changed, appeared or vanished): read again and retry."""


def document_id(level: str, uid: str) -> str:
    """Id of the ``level`` ("study", "series" or "instance") document of ``uid``."""
    return f"{level}:{uid}"


def claim_partition(sop: str) -> str:
    """The partition of an instance's claim (a prefix no UID has, so never a study's)."""
    return f"claim:{sop}"


def change_id(sequence: int) -> str:
    """Id of change-feed entry ``sequence`` (zero-padded, so ids sort as sequences do)."""
    return document_id("change", f"{sequence:016d}")


def _pointer(key: str) -> str:
    """``key`` as one JSON Pointer token (RFC 6901), for patch paths."""
    return key.replace("~", "~0").replace("/", "~1")


class IndexStore:
    """The index container of one Cosmos DB account."""

    def __init__(self, client: CosmosClient, database: str, container: str) -> None:
        self._client = client
        self._database_name = database
        self._container_name = container
        #: A proxy only: opening the store costs no call, and makes no control-plane call ever.
        self.container: ContainerProxy = client.get_database_client(database).get_container_client(container)

    async def provision(self) -> None:
        """Create the database and the container (partition key, indexing policy) where missing (idempotent).

        For the local stack only (:mod:`dicomweb.local.provision`): in Azure the Bicep owns
        them (``infra/``), the service does no control-plane call, and a missing one is a 503
        that names it.
        """
        try:
            database = await self._client.create_database_if_not_exists(self._database_name)
            await database.create_container_if_not_exists(
                self._container_name, partition_key=PartitionKey(path=PARTITION_KEY), indexing_policy=INDEXING_POLICY
            )
        except UNAVAILABLE as exc:
            raise _unavailable(exc, "provision the index") from exc

    def _missing(self, exc: CosmosResourceNotFoundError, what: str) -> StorageFailure:
        """The 503 of a call that found no container (or no database) to work in."""
        return StorageFailure(f"Cosmos DB has no container '{self._container_name}' in database "
                              f"'{self._database_name}' ({what}): the infrastructure (infra/) deploys them",
                              retry_after=5)

    async def close(self) -> None:
        """Release the HTTP session."""
        await self._client.close()

    async def _query(self, query: str, parameters: dict[str, Any], study: str | None) -> list[Document]:
        return await self._page(query, parameters, study, 0, None)

    async def find(self, study: str, level: str, uid: str) -> Document | None:
        """One document by id: a point read (None when there is none)."""
        try:
            return await self.container.read_item(document_id(level, uid), partition_key=study)
        except CosmosResourceNotFoundError as exc:
            if _owner_missing(exc):
                raise self._missing(exc, "read") from exc
            return None
        except UNAVAILABLE as exc:
            raise _unavailable(exc, "read") from exc

    async def instances(self, study: str, series: str | None = None) -> list[Document]:
        """Instance documents of a study, or of one series, in a stable order."""
        query = "SELECT * FROM c WHERE c.studyInstanceUID = @study AND c.type = 'instance'"
        params: dict[str, Any] = {"@study": study}
        if series is not None:
            query += " AND c.seriesInstanceUID = @series"
            params["@series"] = series
        docs = await self._query(query, params, study)
        return sorted(docs, key=lambda d: (d["seriesInstanceUID"], d.get("instanceNumber") or 0, d["id"]))

    async def documents(self, kind: str) -> list[Document]:
        """Every document of one type ("instance", "claim", "study", "series") across partitions.

        A fan-out query over the whole index, for ``dicomweb check`` only.
        """
        return await self._query("SELECT * FROM c WHERE c.type = @type", {"@type": kind}, None)

    async def summaries(self, study: str) -> list[Document]:
        """The study and series documents of a study."""
        return await self._query(
            "SELECT * FROM c WHERE c.studyInstanceUID = @study AND (c.type = 'series' OR c.type = 'study')",
            {"@study": study}, study)

    async def create(self, document: Document) -> None:
        """Insert a document that must not exist yet (else Conflict)."""
        try:
            await self.container.create_item(document)
        except CosmosResourceExistsError as exc:
            raise Conflict(f"{document['id']} was changed by another writer") from exc
        except CosmosResourceNotFoundError as exc:
            raise self._missing(exc, "index") from exc
        except UNAVAILABLE as exc:
            raise _unavailable(exc, "index") from exc

    async def replace(self, document: Document) -> None:
        """Write back a document read with :meth:`find`, only if nobody changed it since (else Conflict)."""
        try:
            await self.container.replace_item(
                document["id"], _body(document), etag=document["_etag"], match_condition=MatchConditions.IfNotModified
            )
        except (CosmosAccessConditionFailedError, CosmosResourceNotFoundError) as exc:
            if _owner_missing(exc):
                raise self._missing(exc, "index") from exc
            raise Conflict(f"{document['id']} was changed by another writer") from exc
        except UNAVAILABLE as exc:
            raise _unavailable(exc, "index") from exc

    async def patch(self, partition: str, doc_id: str, operations: list[dict[str, Any]],
                    condition: str | None = None) -> Document:
        """Apply patch ``operations`` atomically; the document afterwards.

        Conflict when the document is missing or ``condition`` (a ``FROM c WHERE …``
        filter) does not hold. Increments never conflict with each other, which is
        what keeps counts exact under any number of concurrent writers.
        """
        kwargs: dict[str, Any] = {"filter_predicate": condition} if condition else {}
        try:
            return await self.container.patch_item(doc_id, partition, operations, **kwargs)
        except (CosmosAccessConditionFailedError, CosmosResourceNotFoundError) as exc:
            if _owner_missing(exc):
                raise self._missing(exc, f"update {doc_id.split(':')[0]}") from exc
            raise Conflict(f"{doc_id} was changed by another writer") from exc
        except UNAVAILABLE as exc:
            raise _unavailable(exc, f"update {doc_id.split(':')[0]}") from exc

    async def delete(self, study: str, level: str, uid: str, etag: str | None = None) -> bool:
        """Remove a document (with ``etag``: only if unchanged since); False when it was not there."""
        kwargs: dict[str, Any] = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        try:
            await self.container.delete_item(document_id(level, uid), partition_key=study, **kwargs)
        except CosmosAccessConditionFailedError as exc:
            raise Conflict(f"{document_id(level, uid)} was changed by another writer") from exc
        except CosmosResourceNotFoundError as exc:
            if _owner_missing(exc):
                raise self._missing(exc, "delete") from exc
            return False
        except UNAVAILABLE as exc:
            raise _unavailable(exc, "delete") from exc
        return True

    async def search(self, level: str, filters: Sequence[Filter], limit: int, offset: int) -> list[Document]:
        """Documents of ``level`` matching every filter, in a stable order, ``offset`` skipped.

        Paging goes through the SDK's continuation tokens, never OFFSET; a filter on one
        StudyInstanceUID keeps the query inside that study's partition.
        """
        sql, params, study = build_search(level, filters)
        return await self._page(sql, {p["name"]: p["value"] for p in params}, study, offset, limit)

    async def _page(self, sql: str, parameters: dict[str, Any], partition: str | None, offset: int,
                    limit: int | None) -> list[Document]:
        """Results ``offset .. offset+limit`` (all with no limit) of a query, page by page with continuation tokens."""
        params = [{"name": name, "value": value} for name, value in parameters.items()]
        kwargs: dict[str, Any] = {"partition_key": partition} if partition is not None else {}
        found: list[Document] = []
        skipped = 0
        try:
            pages = self.container.query_items(
                sql, parameters=params, max_item_count=min(offset + (limit or 1000), 1000), **kwargs
            ).by_page()
            async for page in pages:
                async for doc in page:
                    if skipped < offset:
                        skipped += 1
                        continue
                    found.append(doc)
                    if len(found) == limit:
                        return found
            return found
        except CosmosResourceNotFoundError as exc:
            raise self._missing(exc, "query") from exc
        except UNAVAILABLE as exc:
            raise _unavailable(exc, "query") from exc

    # Claims: one per SOP Instance UID, in a partition of its own.

    async def claim(self, sop: str) -> Document | None:
        """The claim of SOP instance ``sop``: where it lives, its generation and last change."""
        return await self.find(claim_partition(sop), "claim", sop)

    async def claim_of_change(self, sequence: int) -> Document | None:
        """The claim whose last change is ``sequence`` (a fan-out query, run only to resolve a gap)."""
        docs = await self._query("SELECT * FROM c WHERE c.type = 'claim' AND c.sequence = @s", {"@s": sequence}, None)
        return docs[0] if docs else None

    # The change feed.

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

    async def add_change(self, entry: Document) -> None:
        """Write change-feed entry ``entry["sequence"]``; Conflict when that sequence is taken."""
        await self.create({**entry, "id": change_id(entry["sequence"]), "type": "change",
                           "studyInstanceUID": CHANGEFEED, **NO_MATCH_FIELDS})

    async def change(self, sequence: int) -> Document | None:
        """Entry ``sequence`` (a skip included)."""
        return await self.find(CHANGEFEED, "change", f"{sequence:016d}")

    async def changes_after(self, after: int, limit: int) -> list[Document]:
        """Up to ``limit`` entries (skips included) with a sequence above ``after``, in order."""
        return await self._page(
            "SELECT * FROM c WHERE c.studyInstanceUID = @partition AND c.type = 'change' AND c.sequence > @after"
            " ORDER BY c.sequence", {"@partition": CHANGEFEED, "@after": after}, CHANGEFEED, 0, limit)

    async def visible_changes(self, after: int, upto: int, start: str | None, end: str | None,
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
        return await self._page(sql, params, CHANGEFEED, 0, limit)

    async def latest_visible(self, upto: int) -> Document | None:
        """The newest entry (no skip) at or below ``upto``."""
        docs = await self._query(
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


#: What a Cosmos call raises when the service is down, slow, throttling or failing (connection errors included).
UNAVAILABLE = (AzureError, aiohttp.ClientError, asyncio.TimeoutError, OSError)


def _owner_missing(exc: CosmosResourceNotFoundError) -> bool:
    """Whether a 404 means the container (or its database) is missing rather than a document.

    Cosmos DB says so with substatus 1003 on a document operation; before its first call on
    a container the SDK reads the container itself, and that read answers a plain 404.
    """
    if exc.sub_status == SubStatusCodes.OWNER_RESOURCE_NOT_FOUND:
        return True
    request = getattr(getattr(exc, "response", None), "request", None)
    segments = [part for part in urlparse(getattr(request, "url", "")).path.split("/") if part]
    return bool(segments) and len(segments) <= 4  # dbs/<db>[/colls/<container>], no docs/<id>


def _unavailable(exc: BaseException, what: str) -> DicomWebError:
    """The one mapping from a failed Cosmos call to a 503 (throttling passes its wait on as Retry-After), but
    for an item above Cosmos DB's size limit."""
    status = getattr(exc, "status_code", None)
    if status == 413:  # retrying cannot help: not a 503
        return DicomWebError(f"Cosmos DB refused a document above its 2 MB item limit ({what})")
    if status == 429:
        headers = getattr(getattr(exc, "response", None), "headers", None) or {}
        wait_ms = str(headers.get("x-ms-retry-after-ms", "1000"))
        seconds = max(1, -(-int(wait_ms) // 1000)) if wait_ms.isdigit() else 1
        return StorageFailure(f"Cosmos DB is throttling ({what}); try again", retry_after=seconds)
    detail = status if status is not None else exc.__class__.__name__
    return StorageFailure(f"Cosmos DB is unavailable ({what}: {detail}); try again")


def _body(document: Document) -> Document:
    """A document without the system properties Cosmos adds (``_etag``, ``_ts``, …)."""
    return {k: v for k, v in document.items() if not k.startswith("_")}


def patch_path(*keys: str) -> str:
    """A patch path from property names."""
    return "/" + "/".join(_pointer(k) for k in keys)


def build_search(level: str, filters: Sequence[Filter]) -> tuple[str, list[dict[str, Any]], str | None]:
    """Cosmos SQL, its parameters, and the one partition it needs (if any) for a QIDO search.

    Every condition reads the indexed ``m`` (values) and ``w`` (name words) arrays, but
    ModalitiesInStudy, which reads the study's per-modality instance counts.
    """
    params: list[dict[str, Any]] = [{"name": "@type", "value": level}]
    where = ["c.type = @type"]
    if level != "instance":
        where.append("c.numberOfInstances > 0")  # a summary whose last instance went (removed once nothing races it)
    study: str | None = None

    def param(value: Any) -> str:
        name = f"@p{len(params)}"
        params.append({"name": name, "value": value})
        return name

    for item in filters:
        field = f"c.m.{item.attribute.keyword}"
        if item.attribute.keyword == "ModalitiesInStudy":
            if item.op != "in":
                raise BadRequest("ModalitiesInStudy matches exact modalities only")
            where.append("(" + " OR ".join(f"c.modalities[{param(v)}] > 0" for v in item.values) + ")")
        elif item.attribute.keyword == "StudyInstanceUID" and item.op == "in":
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
