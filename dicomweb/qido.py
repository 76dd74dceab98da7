"""QIDO-RS use case (PS3.18 §10.6): search the index and shape the matches as DICOM JSON.

Each match returns the default attributes of its level (PS3.18 §10.6.3.3, plus the
pathology attributes of :mod:`dicomweb.dicom.attributes`), the ones asked for with
``includefield`` (or every one the document holds for ``all``), and the computed ones: RetrieveURL,
InstanceAvailability (at every level: an instance's from its tier, a study's or series' the least available
of its instances, from the counts of its summary), ModalitiesInStudy, the related-series/instance counts and, asked
for at the instance level, the stored Transfer Syntax UID.
Searches not limited to one study also return the study's defaults, and instance
searches not limited to one series the series' (PS3.18 §10.6.3.3.2-3).
"""

from __future__ import annotations

from pydicom.datadict import tag_for_keyword

from dicomweb.dicom.attributes import BY_KEYWORD, CATALOG, LEVELS
from dicomweb.dicom.availability import NEARLINE, OFFLINE, ONLINE, least
from dicomweb.dicom.dicomjson import JsonDict
from dicomweb.dicom.query import Query
from dicomweb.service import Service
from dicomweb.storage.cosmos import Document

RETRIEVE_URL = "00081190"
INSTANCE_AVAILABILITY = "00080056"
#: Transfer Syntax UID, a File Meta attribute (PS3.10 §7.1) that is no part of the dataset QIDO searches, returned
#: only when asked for: Google's Healthcare API does, and EZ-WSI refuses an instance without it.
TRANSFER_SYNTAX = "00020010"


def _defaults(query: Query, scope: dict[str, str]) -> set[str]:
    depth = LEVELS.index(query.level)
    levels = {query.level}
    if "StudyInstanceUID" not in scope:
        levels |= set(LEVELS[:depth])
    elif "SeriesInstanceUID" not in scope and depth == 2:
        levels.add("series")
    keywords = {a.keyword for a in CATALOG if a.default and a.level in levels}
    keywords |= {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"} & {
        a.keyword for a in CATALOG if LEVELS.index(a.level) <= depth}
    return keywords


def _tag(keyword: str) -> str | None:
    attribute = BY_KEYWORD.get(keyword)
    if attribute is not None:
        return attribute.tag
    tag = tag_for_keyword(keyword)
    if tag is not None:
        return f"{tag:08X}"
    return keyword if len(keyword) == 8 else None


def _computed(doc: Document, base: str) -> JsonDict:
    """The attributes the service derives rather than reads from the instance."""
    study = doc["studyInstanceUID"]
    if doc["type"] == "instance":
        available = doc.get("availability", ONLINE)
    else:  # as available as its least available instance
        available = least({NEARLINE: doc.get("nearline", 0), OFFLINE: doc.get("offline", 0)})
    out: JsonDict = {INSTANCE_AVAILABILITY: {"vr": "CS", "Value": [available]}}
    if doc["type"] == "study":
        url = f"{base}/studies/{study}"
        modalities = sorted(m for m, count in doc.get("modalities", {}).items() if count > 0)
        out["00080061"] = {"vr": "CS", "Value": modalities} if modalities else {"vr": "CS"}
        out["00201206"] = {"vr": "IS", "Value": [sum(1 for count in doc.get("series", {}).values() if count > 0)]}
        out["00201208"] = {"vr": "IS", "Value": [doc.get("numberOfInstances", 0)]}
    elif doc["type"] == "series":
        url = f"{base}/studies/{study}/series/{doc['seriesInstanceUID']}"
        out["00201209"] = {"vr": "IS", "Value": [doc.get("numberOfInstances", 0)]}
    else:
        url = f"{base}/studies/{study}/series/{doc['seriesInstanceUID']}/instances/{doc['sopInstanceUID']}"
        out[TRANSFER_SYNTAX] = {"vr": "UI", "Value": [doc["transferSyntaxUID"]]}
    out[RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
    return out


def _absolute(element: JsonDict, instance_url: str) -> JsonDict:
    """``element`` with the relative BulkDataURIs the index keeps (an optical path's ICC profile) made absolute."""
    if "BulkDataURI" in element:
        return {**element, "BulkDataURI": f"{instance_url}/{element['BulkDataURI']}"}
    if element.get("vr") != "SQ" or not element.get("Value"):
        return element
    return {"vr": "SQ", "Value": [{key: _absolute(child, instance_url) for key, child in item.items()}
                                  for item in element["Value"]]}


def render(doc: Document, query: Query, scope: dict[str, str], base: str) -> JsonDict:
    """One match as DICOM JSON with the attributes the query returns."""
    available = {**doc["attributes"], **_computed(doc, base)}
    if query.include_all:
        found = dict(sorted(available.items()))
    else:
        wanted = {_tag(k) for k in _defaults(query, scope) | query.include} | {RETRIEVE_URL, INSTANCE_AVAILABILITY}
        found = {tag: available[tag] for tag in sorted(wanted - {None}) if tag in available}  # type: ignore[operator]
    if doc["type"] != "instance":
        return found
    url = available[RETRIEVE_URL]["Value"][0]
    return {tag: _absolute(element, url) for tag, element in found.items()}


async def search(service: Service, query: Query, scope: dict[str, str], base: str) -> list[JsonDict]:
    """The matches of ``query`` (already holding the path's UIDs as filters), rendered."""
    docs = await service.index.search(query.level, query.filters, query.limit, query.offset)
    return [render(doc, query, scope, base) for doc in docs]
