"""The Cosmos DB (NoSQL API) container the index, the claims and the change feed share, and its one error map.

One container, partitioned by ``/studyInstanceUID``: a study's documents live together
(far below the 20 GB logical-partition limit), so one study's instance and summary
documents change together in one transactional batch. Beside the study partitions the
container holds one small partition per SOP Instance UID (its claim,
:mod:`dicomweb.storage.claims`) and the change-feed partition
(:mod:`dicomweb.storage.changes`). Each store is one kind of data over this container;
:class:`Container` holds what they share: point operations, conditional writes, batches,
paging, and the mapping of Cosmos failures to DICOMweb statuses.
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
    CosmosBatchOperationError,
    CosmosResourceExistsError,
    CosmosResourceNotFoundError,
)
from azure.cosmos.http_constants import SubStatusCodes

from dicomweb.errors import ConcurrentChange, DicomWebError, StorageFailure

PARTITION_KEY = "/studyInstanceUID"
#: What Cosmos indexes: the match fields and keys, never the returned attributes (the Bicep deploys the same file).
INDEXING_POLICY: dict[str, Any] = json.loads((Path(__file__).with_name("indexing-policy.json")).read_text())
#: Every document has the match fields: the local Cosmos server fails a search that reads below a missing one.
NO_MATCH_FIELDS: dict[str, Any] = {"m": {}, "w": {}}
#: Cosmos DB's limit of operations in one transactional batch.
MAX_BATCH = 100
Document = dict[str, Any]
#: One operation of a transactional batch, as the SDK takes it: (kind, args) or (kind, args, options).
Operation = tuple[Any, ...]


class Conflict(ConcurrentChange):
    """A conditional write lost a race (the document changed, appeared or vanished): read again and retry."""


class BatchFailed(Conflict):
    """A transactional batch changed nothing because operation ``index`` failed with ``status``
    (404 missing, 409 exists, 412 condition or etag)."""

    def __init__(self, message: str, index: int, status: int) -> None:
        super().__init__(message)
        self.index = index
        self.status = status


def document_id(level: str, uid: str) -> str:
    """Id of the ``level`` ("study", "series", "instance", "claim", …) document of ``uid``."""
    return f"{level}:{uid}"


def _pointer(key: str) -> str:
    """``key`` as one JSON Pointer token (RFC 6901), for patch paths."""
    return key.replace("~", "~0").replace("/", "~1")


def patch_path(*keys: str) -> str:
    """A patch path from property names."""
    return "/" + "/".join(_pointer(k) for k in keys)


class Container:
    """The container of one Cosmos DB account, as one store sees it (the stores share the client)."""

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

    def _missing(self, what: str) -> StorageFailure:
        """The 503 of a call that found no container (or no database) to work in."""
        return StorageFailure(f"Cosmos DB has no container '{self._container_name}' in database "
                              f"'{self._database_name}' ({what}): the infrastructure (infra/) deploys them",
                              retry_after=5)

    async def close(self) -> None:
        """Release the HTTP session (of every store sharing the client)."""
        await self._client.close()

    async def find(self, partition: str, level: str, uid: str) -> Document | None:
        """One document by id: a point read (None when there is none)."""
        try:
            return await self.container.read_item(document_id(level, uid), partition_key=partition)
        except CosmosResourceNotFoundError as exc:
            if _owner_missing(exc):
                raise self._missing("read") from exc
            return None
        except UNAVAILABLE as exc:
            raise _unavailable(exc, "read") from exc

    async def create(self, document: Document) -> None:
        """Insert a document that must not exist yet (else Conflict)."""
        try:
            await self.container.create_item(document)
        except CosmosResourceExistsError as exc:
            raise Conflict(f"{document['id']} was changed by another writer") from exc
        except CosmosResourceNotFoundError as exc:
            raise self._missing("index") from exc
        except UNAVAILABLE as exc:
            raise _unavailable(exc, "index") from exc

    async def replace(self, document: Document) -> Document:
        """Write back a document read with :meth:`find`, only if nobody changed it since (else Conflict)."""
        try:
            return await self.container.replace_item(
                document["id"], _body(document), etag=document["_etag"], match_condition=MatchConditions.IfNotModified
            )
        except (CosmosAccessConditionFailedError, CosmosResourceNotFoundError) as exc:
            if _owner_missing(exc):
                raise self._missing("index") from exc
            raise Conflict(f"{document['id']} was changed by another writer") from exc
        except UNAVAILABLE as exc:
            raise _unavailable(exc, "index") from exc

    async def patch(self, partition: str, doc_id: str, operations: list[dict[str, Any]],
                    condition: str | None = None) -> Document:
        """Apply patch ``operations`` atomically; the document afterwards.

        Conflict when the document is missing or ``condition`` (a ``FROM c WHERE …``
        filter) does not hold. Increments never conflict with each other.
        """
        kwargs: dict[str, Any] = {"filter_predicate": condition} if condition else {}
        try:
            return await self.container.patch_item(doc_id, partition, operations, **kwargs)
        except (CosmosAccessConditionFailedError, CosmosResourceNotFoundError) as exc:
            if _owner_missing(exc):
                raise self._missing(f"update {doc_id.split(':')[0]}") from exc
            raise Conflict(f"{doc_id} was changed by another writer") from exc
        except UNAVAILABLE as exc:
            raise _unavailable(exc, f"update {doc_id.split(':')[0]}") from exc

    async def delete(self, partition: str, level: str, uid: str, etag: str | None = None) -> bool:
        """Remove a document (with ``etag``: only if unchanged since); False when it was not there."""
        kwargs: dict[str, Any] = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        try:
            await self.container.delete_item(document_id(level, uid), partition_key=partition, **kwargs)
        except CosmosAccessConditionFailedError as exc:
            raise Conflict(f"{document_id(level, uid)} was changed by another writer") from exc
        except CosmosResourceNotFoundError as exc:
            if _owner_missing(exc):
                raise self._missing("delete") from exc
            return False
        except UNAVAILABLE as exc:
            raise _unavailable(exc, "delete") from exc
        return True

    async def batch(self, partition: str, operations: Sequence[Operation]) -> list[Document | None]:
        """Run ``operations`` in one partition as one transaction: all or nothing; each one's document after it.

        A batch is what keeps a document and the counts that summarise it exact together:
        applied twice (the SDK retries a write whose answer was lost), its first
        conditional operation fails the second time and nothing changes. BatchFailed
        names the operation that failed; nothing was applied.
        """
        assert 0 < len(operations) <= MAX_BATCH
        try:
            results = await self.container.execute_item_batch(list(operations), partition_key=partition)
        except CosmosBatchOperationError as exc:
            status, index = int(exc.status_code or 0), int(exc.error_index or 0)
            if status in (404, 409, 412):
                raise BatchFailed(f"operation {index} of a batch in {partition} failed ({status})", index,
                                  status) from exc
            raise _unavailable(exc, "index") from exc
        except CosmosResourceNotFoundError as exc:
            raise self._missing("index") from exc
        except UNAVAILABLE as exc:
            raise _unavailable(exc, "index") from exc
        return [result.get("resourceBody") for result in results]

    async def query(self, sql: str, parameters: dict[str, Any], partition: str | None) -> list[Document]:
        """Every result of a query (in one partition when ``partition`` is given)."""
        return await self.page(sql, parameters, partition, 0, None)

    async def page(self, sql: str, parameters: dict[str, Any], partition: str | None, offset: int,
                   limit: int | None) -> list[Document]:
        """Results ``offset .. offset+limit`` (all with no limit) of a query, page by page with continuation tokens.

        Never OFFSET: the local server and the cost model both punish it.
        """
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
            raise self._missing("query") from exc
        except UNAVAILABLE as exc:
            raise _unavailable(exc, "query") from exc


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
        headers = getattr(exc, "headers", None) or getattr(getattr(exc, "response", None), "headers", None) or {}
        wait_ms = str(headers.get("x-ms-retry-after-ms", "1000"))
        seconds = max(1, -(-int(wait_ms) // 1000)) if wait_ms.isdigit() else 1
        return StorageFailure(f"Cosmos DB is throttling ({what}); try again", retry_after=seconds)
    detail = status if status is not None else exc.__class__.__name__
    return StorageFailure(f"Cosmos DB is unavailable ({what}: {detail}); try again")


def _body(document: Document) -> Document:
    """A document without the system properties Cosmos adds (``_etag``, ``_ts``, …)."""
    return {k: v for k, v in document.items() if not k.startswith("_")}
