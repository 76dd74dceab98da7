"""Bearer tokens against a real OpenID Connect provider served by the test (discovery document and keys)."""

from __future__ import annotations

import asyncio
import json
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
from cryptography.hazmat.primitives.asymmetric import rsa

from dicomweb.auth import TokenValidator
from dicomweb.errors import Unauthorized
from tests.conftest import ROOT, Server, ThreadedHttpServer, fresh_settings, start_server
from tests.wsi_factory import make_slide

AUDIENCE = "api://dicomweb"


class Provider:
    """An OIDC issuer on localhost with one published RSA key (and one it keeps to itself)."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex
        app = web.Application()
        app.router.add_get("/tenant/v2.0/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/keys", self._keys)
        self.server = ThreadedHttpServer(app)

    @property
    def issuer(self) -> str:
        return f"{self.server.url}/tenant/v2.0"

    async def _discovery(self, _: web.Request) -> web.Response:
        return web.json_response({"issuer": self.issuer, "jwks_uri": f"{self.server.url}/keys"})

    async def _keys(self, _: web.Request) -> web.Response:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return web.json_response({"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "RS256"}]})

    def token(self, *, audience: str = AUDIENCE, issuer: str | None = None, lifetime: int = 600,
              stranger: bool = False) -> str:
        now = int(time.time())
        claims = {"iss": issuer or self.issuer, "aud": audience, "sub": "pathologist", "iat": now,
                  "nbf": now - 5, "exp": now + lifetime}
        key = self.stranger if stranger else self.key
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": self.kid})


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    running = Provider()
    running.server.start()
    yield running
    running.server.stop()


@pytest.fixture(scope="module")
def secured(emulators: dict[str, str], provider: Provider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(fresh_settings(emulators), tmp_path_factory.mktemp("secured"),
                          DICOMWEB_AUTH_ISSUER=provider.issuer, DICOMWEB_AUTH_AUDIENCE=f"other,{AUDIENCE}")
    yield server
    server.stop()


def _validate(provider: Provider, header: str | None) -> dict:
    return asyncio.run(TokenValidator(provider.issuer, (AUDIENCE,)).validate(header))


def test_a_valid_token_yields_its_claims(provider: Provider) -> None:
    claims = _validate(provider, f"Bearer {provider.token()}")
    assert claims["sub"] == "pathologist" and claims["aud"] == AUDIENCE


@pytest.mark.parametrize("case", ["missing", "basic", "garbage", "audience", "issuer", "expired", "foreign-key",
                                  "unsigned"])
def test_anything_else_is_unauthorized(provider: Provider, case: str) -> None:
    header = {
        "missing": None,
        "basic": "Basic dXNlcjpwYXNz",
        "garbage": "Bearer not-a-jwt",
        "audience": f"Bearer {provider.token(audience='api://elsewhere')}",
        "issuer": f"Bearer {provider.token(issuer='https://evil.example/v2.0')}",
        "expired": f"Bearer {provider.token(lifetime=-3600)}",
        "foreign-key": f"Bearer {provider.token(stranger=True)}",
        "unsigned": "Bearer " + jwt.encode({"iss": provider.issuer, "aud": AUDIENCE, "exp": int(time.time()) + 60},
                                           None, algorithm="none", headers={"kid": provider.kid}),
    }[case]
    with pytest.raises(Unauthorized):
        _validate(provider, header)


def test_the_service_requires_a_token_but_answers_preflights(secured: Server, provider: Provider) -> None:
    refused = httpx.get(f"{secured.base_url}/studies")
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert refused.headers["content-type"] == "application/dicom+json" and "Bearer" in refused.json()["message"]
    preflight = httpx.options(f"{secured.base_url}/studies", headers={
        "origin": "https://slim.example", "access-control-request-method": "GET",
        "access-control-request-headers": "accept, authorization"})
    assert preflight.status_code == 204 and "authorization" in preflight.headers["access-control-allow-headers"]
    wrong = httpx.get(f"{secured.base_url}/studies", headers={"authorization": f"Bearer {provider.token(audience='x')}"})
    assert wrong.status_code == 401
    allowed = httpx.get(f"{secured.base_url}/studies", headers={"authorization": f"Bearer {provider.token()}"})
    assert allowed.status_code == 200 and allowed.json() == []


def test_the_upload_cli_sends_its_token(secured: Server, provider: Provider, tmp_path: Path) -> None:
    instance = make_slide(tmp_path, levels=1, associated=False, base_size=(300, 300))[0]

    def upload(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dicomweb", "upload", str(instance.path), "--url", secured.base_url,
                               "--state", str(tmp_path / "state.json"), "--json", *extra],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)

    refused = upload()
    assert refused.returncode == 1 and "401" in json.loads(refused.stdout)["detail"]
    stored = upload("--token", provider.token())
    assert stored.returncode == 0 and json.loads(stored.stdout)["status"] == "stored"
