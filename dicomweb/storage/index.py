"""The search index: study, series and instance documents, as QIDO-RS searches them.

Documents live in their study's partition, ids ``<level>:<uid>``, so retrieval of a study
or series is a single-partition query and a study's documents change together in one
transactional batch (:meth:`dicomweb.storage.cosmos.Container.batch`). Searches read only
the indexed ``m`` (normalised values) and ``w`` (person-name words) fields; the returned
DICOM JSON (``attributes``) is not indexed. Queries carry the partition-key equality when
they name a partition, and searches across studies fan out over the physical partitions.
"""

from __future__ import annotations

from typing import Any, Sequence

from dicomweb.dicom.query import Filter
from dicomweb.errors import BadRequest
from dicomweb.storage.cosmos import Container, Document


class IndexStore(Container):
    """The search index's documents in the shared container."""

    async def instances(self, study: str, series: str | None = None) -> list[Document]:
        """Instance documents of a study, or of one series, in a stable order."""
        query = "SELECT * FROM c WHERE c.studyInstanceUID = @study AND c.type = 'instance'"
        params: dict[str, Any] = {"@study": study}
        if series is not None:
            query += " AND c.seriesInstanceUID = @series"
            params["@series"] = series
        docs = await self.query(query, params, study)
        return sorted(docs, key=lambda d: (d["seriesInstanceUID"], d.get("instanceNumber") or 0, d["id"]))

    async def documents(self, kind: str) -> list[Document]:
        """Every document of one type ("instance", "study", "series", "claim") across partitions.

        A fan-out query over the whole container, for ``dicomweb check`` only.
        """
        return await self.query("SELECT * FROM c WHERE c.type = @type", {"@type": kind}, None)

    async def unavailable(self, study: str) -> list[Document]:
        """A study's instance documents saying their file is not online (NEARLINE or OFFLINE): what reconciling
        the index with the tiers compares with Blob's listing of the study."""
        return await self.query(
            "SELECT * FROM c WHERE c.studyInstanceUID = @study AND c.type = 'instance' "
            "AND (c.availability = 'NEARLINE' OR c.availability = 'OFFLINE')", {"@study": study}, study)

    async def summaries(self, study: str) -> list[Document]:
        """The study and series documents of a study."""
        return await self.query(
            "SELECT * FROM c WHERE c.studyInstanceUID = @study AND (c.type = 'series' OR c.type = 'study')",
            {"@study": study}, study)

    async def search(self, level: str, filters: Sequence[Filter], limit: int, offset: int) -> list[Document]:
        """Documents of ``level`` matching every filter, in a stable order, ``offset`` skipped.

        Paging goes through the SDK's continuation tokens, never OFFSET; a filter on one
        StudyInstanceUID keeps the query inside that study's partition.
        """
        sql, params, study = build_search(level, filters)
        return await self.page(sql, {p["name"]: p["value"] for p in params}, study, offset, limit)

    async def count(self) -> int:
        """Number of documents (``serve`` reindexes an empty index over existing blobs)."""
        docs = await self.query("SELECT VALUE COUNT(1) FROM c", {}, None)
        return int(docs[0]) if docs else 0


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
