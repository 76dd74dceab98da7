"""QIDO-RS (PS3.18 §10.6), the part the slide viewers need to open a study.

``GET /studies/{study}/instances`` with exact and UID-list matching on the indexed
attributes, which is what wsidicom's first query sends. The rest of QIDO-RS
(wildcards, ranges, fuzzy names, the other resources, paging) builds on this.
"""

from urllib.parse import parse_qsl

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response
from pydicom.datadict import tag_for_keyword

from dicomweb.api.http import dicom_json, endpoint
from dicomweb.errors import BadRequest
from dicomweb.service import Service

blueprint = func.Blueprint()

#: Parameters that shape the answer rather than filter it.
_CONTROL = {"includefield", "limit", "offset", "fuzzymatching"}


def _key(name: str) -> str:
    """A query key (keyword or 8-digit tag) as a DICOM JSON key."""
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        return name.upper()
    tag = tag_for_keyword(name)
    if tag is None:
        raise BadRequest(f"unknown query parameter {name!r}")
    return f"{tag:08X}"


def parse_filters(query: str) -> dict[str, set[str]]:
    """Filters by DICOM JSON key; comma lists and repeated keys are OR-ed (PS3.18 §8.3.4.1)."""
    filters: dict[str, set[str]] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name.lower() in _CONTROL:
            continue
        filters.setdefault(_key(name), set()).update(v for v in value.split(",") if v)
    return filters


def _matches(attributes: dict, filters: dict[str, set[str]]) -> bool:
    for key, wanted in filters.items():
        values = attributes.get(key, {}).get("Value") or []
        if wanted and not any(str(v) in wanted for v in values):
            return False
    return True


@endpoint(blueprint, "search_study_instances", "studies/{study}/instances", ["GET"])
async def search_study_instances(req: Request, service: Service) -> Response:
    """Instances of one study that match every filter."""
    filters = parse_filters(req.url.query)
    docs = await service.index.instances(req.path_params["study"])
    return dicom_json([d["attributes"] for d in docs if _matches(d["attributes"], filters)])
