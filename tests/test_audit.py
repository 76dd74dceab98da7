"""The audit trail: structured records of every write and delete, in the log, in Application Insights
(through a local stand-in for its ingestion endpoint) and in the change feed, without patient data."""

from __future__ import annotations

import gzip
import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from dicomweb import audit, auth
from tests.conftest import Server, ThreadedHttpServer, fresh_settings, patient_identifiers_in, start_server
from tests.oidc import Provider
from tests.wsi_factory import make_slide


def audit_records(log: Path) -> list[dict[str, Any]]:
    """The audit records a ``serve`` log holds, in order."""
    return [json.loads(line.split(" audit ", 1)[1]) for line in log.read_text().splitlines() if " audit {" in line]


def test_a_record_names_the_actor_and_only_declared_fields(caplog: pytest.LogCaptureFixture) -> None:
    token = auth.act_as(auth.Principal("oid-1", "app-1", frozenset()))
    try:
        with caplog.at_level(logging.INFO, logger="dicomweb.audit"):
            audit.record("store", "stored", study="1.2", generation="g1")
        with pytest.raises(AssertionError):
            audit.record("store", "stored", patient="Doe^Jane")
    finally:
        auth.reset(token)
    (entry,) = caplog.records
    record = json.loads(entry.getMessage().split(" ", 1)[1])
    assert {k: record[k] for k in ("action", "outcome", "principal", "app", "study", "generation")} == {
        "action": "store", "outcome": "stored", "principal": "oid-1", "app": "app-1", "study": "1.2", "generation": "g1"}
    assert getattr(entry, "audit.principal") == "oid-1" and record["time"].endswith("Z")
    assert audit.actor() == {"id": "system"}


def test_the_scan_finds_patient_identifiers() -> None:
    """The suite-wide log scan (tests/conftest.py) would catch a leak: it is not vacuous."""
    assert patient_identifiers_in("GET /v1/studies?PatientName=Doe%5EJane 200")
    assert patient_identifiers_in("value 'SMITH^JOHN' of PN") and patient_identifiers_in("PatientID P-B")
    assert patient_identifiers_in("born 19700101.")
    assert not patient_identifiers_in("1.2.826.0.1.3680043.8.498.197001011 P-10 does")


def test_stow_put_and_delete_are_audited_and_in_the_change_feed(secured: Server, provider: Provider,
                                                               tmp_path: Path) -> None:
    (file,) = make_slide(tmp_path, levels=1, associated=False, base_size=(256, 256))
    owner = provider.bearer(roles=["DICOM.Owner"], oid="oid-admin", azp="app-scanner")
    reader = provider.bearer(roles=["DICOM.Reader"], oid="oid-viewer")
    body = {"content": file.path.read_bytes(), "headers": {**owner, "content-type": "application/dicom"}}
    assert httpx.post(f"{secured.base_url}/studies", **body).status_code == 200
    assert httpx.put(f"{secured.base_url}/studies", **body).status_code == 200
    instance = f"{secured.base_url}/studies/{file.study_uid}/series/{file.series_uid}/instances/{file.sop_uid}"
    assert httpx.delete(instance, headers=reader).status_code == 403
    assert httpx.delete(instance, headers=owner).status_code == 204

    mine = [r for r in audit_records(secured.log) if r.get("instance") == file.sop_uid]
    stored = [r for r in mine if r["action"] in ("store", "replace", "delete")]
    assert [(r["action"], r["outcome"]) for r in stored] == [("store", "stored"), ("replace", "stored"),
                                                             ("delete", "deleted")]
    for record in stored:
        assert (record["principal"], record["app"]) == ("oid-admin", "app-scanner")
        assert (record["study"], record["series"]) == (file.study_uid, file.series_uid)
        assert record["generation"]
    assert stored[0]["generation"] != stored[1]["generation"] == stored[2]["generation"]
    refused = [r for r in mine if r["action"] == "request" and r["status"] == 403]
    assert refused and refused[0]["principal"] == "oid-viewer" and refused[0]["route"] == "delete_instance"

    feed = httpx.get(f"{secured.base_url}/changefeed", params={"includeMetadata": "false", "limit": 200},
                     headers=reader).json()
    entries = [e for e in feed if e["SopInstanceUid"] == file.sop_uid]
    assert [e["Action"] for e in entries] == ["create", "update", "delete"]
    assert all(e["Principal"] == {"Id": "oid-admin", "AppId": "app-scanner"} for e in entries)


def test_upload_sessions_are_audited(secured: Server, provider: Provider, tmp_path: Path) -> None:
    writer = provider.bearer(roles=["DICOM.Writer"], oid="oid-uploader", azp="app-cli")
    opened = httpx.post(f"{secured.base_url}/uploads", json={"size": 10}, headers=writer).json()
    assert httpx.delete(opened["statusUrl"], headers=writer).status_code == 204
    (record,) = [r for r in audit_records(secured.log) if r.get("session") == opened["id"] and r["action"] != "request"]
    assert (record["action"], record["principal"], record["app"]) == ("upload-abort", "oid-uploader", "app-cli")


def test_searches_by_patient_leave_no_patient_data_in_the_log(server: Server, tmp_path: Path) -> None:
    (file,) = make_slide(tmp_path, levels=1, associated=False, base_size=(256, 256))
    assert httpx.post(f"{server.base_url}/studies", content=file.path.read_bytes(),
                      headers={"content-type": "application/dicom"}).status_code == 200
    for query in ({"PatientName": "Doe^Jane"}, {"PatientID": "P-1"}, {"PatientBirthDate": "19700101"},
                  {"PatientName": "Doe^Jane" * 1000}):
        httpx.get(f"{server.base_url}/studies", params=query)
    broken = file.path.read_bytes().replace(b"Doe^Jane", b"Doe^Jane\x00\xff")
    httpx.post(f"{server.base_url}/studies", content=broken, headers={"content-type": "application/dicom"})
    time.sleep(0.5)
    assert patient_identifiers_in(server.log.read_text()) == []


class Ingestion:
    """A stand-in for Application Insights' ingestion endpoint: keeps every telemetry item posted to it."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.paths: list[str] = []
        app = web.Application()
        app.router.add_post("/{path:.*}", self._track)
        self.server = ThreadedHttpServer(app)

    async def _track(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        raw = await request.read()
        if request.headers.get("content-encoding") == "gzip":
            raw = gzip.decompress(raw)
        text = raw.decode()
        items = json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines()]
        self.items.extend(items)
        return web.json_response({"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []})


def test_audit_records_reach_application_insights(emulators: dict[str, str], tmp_path: Path) -> None:
    ingestion = Ingestion()
    ingestion.server.start()
    connection = f"InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint={ingestion.server.url}"
    server = start_server(fresh_settings(emulators), tmp_path, APPLICATIONINSIGHTS_CONNECTION_STRING=connection,
                          APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL="true", OTEL_BLRP_SCHEDULE_DELAY="200")
    try:
        (file,) = make_slide(tmp_path, levels=1, associated=False, base_size=(256, 256))
        assert httpx.post(f"{server.base_url}/studies", content=file.path.read_bytes(),
                          headers={"content-type": "application/dicom"}).status_code == 200
        deadline = time.monotonic() + 30
        found: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not found:
            time.sleep(0.3)
            found = [item for item in ingestion.items
                     if item.get("data", {}).get("baseData", {}).get("properties", {}).get("audit.instance") == file.sop_uid]
    finally:
        server.stop()
        ingestion.server.stop()
    assert found, f"no audit record among {len(ingestion.items)} telemetry items posted to {set(ingestion.paths)}"
    assert set(ingestion.paths) == {"/v2.1/track"}
    properties = found[0]["data"]["baseData"]["properties"]
    assert properties["audit.action"] == "store" and properties["audit.principal"] == "anonymous"
    assert properties["audit.study"] == file.study_uid and properties["audit.generation"]
