"""The managed-identity path, as Azure runs it: endpoints and ``DefaultAzureCredential``, no connection string.

``dicomweb serve`` gets only DICOMWEB_STORAGE_ACCOUNT_URL and DICOMWEB_COSMOS_ENDPOINT plus
the variables App Service sets for a managed identity (IDENTITY_ENDPOINT, IDENTITY_HEADER,
AZURE_CLIENT_ID). The identity endpoint is a local stand-in that issues tokens; Azurite runs
over HTTPS with OAuth on (it checks issuer, audience and lifetime of every bearer token); the
Cosmos server takes the AAD authorization the SDK sends. Azurite cannot issue user-delegation
keys, so what needs a SAS (frames, upload sessions) is left to the connection-string tests.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import jwt
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dicomweb.local.emulators import NODE_BIN, _wait_for_port, free_port
from tests.conftest import Server, ThreadedHttpServer, start_server
from tests.wsi_factory import make_slide

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = str(uuid.uuid4())


def _certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the service trusts it through SSL_CERT_FILE)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class IdentityEndpoint:
    """The App Service managed-identity protocol (api-version 2019-08-01) on localhost."""

    SECRET = uuid.uuid4().hex

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        app = web.Application()
        app.router.add_get("/msi/token", self._token)
        self.server = ThreadedHttpServer(app)

    async def _token(self, request: web.Request) -> web.Response:
        if request.headers.get("X-IDENTITY-HEADER") != self.SECRET:
            return web.json_response({"error": "unauthorized"}, status=401)
        self.requests.append(dict(request.query))
        resource = request.query["resource"]
        now = int(time.time())
        claims = {"iss": f"https://sts.windows.net/{TENANT}/", "aud": resource, "iat": now, "nbf": now - 60,
                  "exp": now + 3600, "appid": request.query.get("client_id", ""), "oid": str(uuid.uuid4())}
        token = jwt.encode(claims, uuid.uuid4().hex, algorithm="HS256")
        return web.json_response({"access_token": token, "expires_on": str(now + 3600), "resource": resource,
                                  "token_type": "Bearer", "client_id": request.query.get("client_id", "")})


@pytest.fixture(scope="module")
def identity_server(emulators: dict[str, str],
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, IdentityEndpoint]]:
    work = tmp_path_factory.mktemp("identity")
    cert, key = _certificate(work)
    port = free_port()
    azurite = subprocess.Popen(
        [str(NODE_BIN / "azurite-blob"), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location",
         str(work / "azurite"), "--oauth", "basic", "--cert", str(cert), "--key", str(key), "--skipApiVersionCheck",
         "--loose", "--silent", "--disableTelemetry"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    queue_port = free_port()
    queues = subprocess.Popen(
        [str(NODE_BIN / "azurite-queue"), "--queueHost", "127.0.0.1", "--queuePort", str(queue_port), "--location",
         str(work / "azurite"), "--oauth", "basic", "--cert", str(cert), "--key", str(key), "--skipApiVersionCheck",
         "--loose", "--silent", "--disableTelemetry"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = IdentityEndpoint()
    endpoint.server.start()
    try:
        _wait_for_port(port, azurite, "Azurite (HTTPS, OAuth)")
        _wait_for_port(queue_port, queues, "Azurite queues (HTTPS, OAuth)")
        cosmos = emulators["DICOMWEB_COSMOS_CONNECTION_STRING"].split("AccountEndpoint=")[1].split(";")[0]
        settings = {
            "DICOMWEB_STORAGE_ACCOUNT_URL": f"https://127.0.0.1:{port}/devstoreaccount1",
            "DICOMWEB_QUEUES__queueServiceUri": f"https://127.0.0.1:{queue_port}/devstoreaccount1",
            "DICOMWEB_COSMOS_ENDPOINT": cosmos, "DICOMWEB_COSMOS_DATABASE": f"db-{uuid.uuid4().hex[:8]}",
            "IDENTITY_ENDPOINT": f"{endpoint.server.url}/msi/token", "IDENTITY_HEADER": endpoint.SECRET, "AZURE_CLIENT_ID": CLIENT_ID,
            "SSL_CERT_FILE": str(cert),
        }
        # What the Bicep deploys in Azure, made here through the same identity.
        subprocess.run([sys.executable, "-m", "dicomweb.local.provision"], env={**os.environ, **settings}, check=True,
                       timeout=60)
        server = start_server(settings, work)
        assert "DICOMWEB_STORAGE_CONNECTION_STRING" not in server.env and "DICOMWEB_QUEUES" not in server.env
        yield server, endpoint
        server.stop()
    finally:
        endpoint.server.stop()
        for process in (azurite, queues):
            process.terminate()
            process.wait(10)


def test_the_service_runs_on_its_managed_identity(identity_server: tuple[Server, IdentityEndpoint],
                                                  tmp_path: Path) -> None:
    server, endpoint = identity_server
    volume = make_slide(tmp_path, levels=1, associated=False, base_size=(600, 400))[0]
    data = volume.path.read_bytes()
    stored = httpx.post(f"{server.base_url}/studies", content=data, headers={"content-type": "application/dicom"},
                        timeout=60)
    assert stored.status_code == 200, stored.text
    found = httpx.get(f"{server.base_url}/studies/{volume.study_uid}/instances").json()
    assert [item["00080018"]["Value"][0] for item in found] == [volume.sop_uid]
    instance = f"{server.base_url}/studies/{volume.study_uid}/series/{volume.series_uid}/instances/{volume.sop_uid}"
    assert httpx.get(f"{instance}/metadata").json()[0]["00080018"]["Value"] == [volume.sop_uid]
    whole = httpx.get(instance, headers={"accept": "application/dicom; transfer-syntax=*"}, timeout=60)
    assert whole.status_code == 200 and whole.content[132:] == data[132:]
    resources = {request["resource"] for request in endpoint.requests}
    assert "https://storage.azure.com" in resources and "https://127.0.0.1" in resources
    assert {request.get("client_id") for request in endpoint.requests} == {CLIENT_ID}
    assert {request["api-version"] for request in endpoint.requests} == {"2019-08-01"}
