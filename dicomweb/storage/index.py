"""Cosmos DB (NoSQL API) adapter: the search index of studies, series and instances.

One container, partitioned by ``/studyInstanceUID`` so a study's documents live
together (a study is far below the 20 GB logical-partition limit) and retrieval of
a study or series is a single-partition query. Document ids are ``<level>:<uid>``.
Queries always carry the partition-key equality when they name a partition, page
with continuation tokens, and never use OFFSET (the local server and the cost model
both punish it).
"""

from __future__ import annotations

from typing import Any

from azure.cosmos import PartitionKey
from azure.cosmos.aio import ContainerProxy, CosmosClient
from azure.cosmos.exceptions import CosmosHttpResponseError, CosmosResourceExistsError

from dicomweb.errors import Duplicate, StorageFailure

PARTITION_KEY = "/studyInstanceUID"
Document = dict[str, Any]


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
                self._container_name, partition_key=PartitionKey(path=PARTITION_KEY)
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

    async def count(self) -> int:
        """Number of documents (``serve`` reindexes an empty index over existing blobs)."""
        docs = await self._query("SELECT VALUE COUNT(1) FROM c", {}, None)
        return int(docs[0]) if docs else 0
