"""A real OpenID Connect issuer on localhost for the tests: discovery document, published keys, tokens.

It publishes an RSA signing key, an EC signing key and an RSA key marked for encryption
(``use: enc``), counts how often its keys are fetched, can rotate in a new signing key,
and can be made to lie about its issuer name in the discovery document.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.conftest import ThreadedHttpServer

AUDIENCE = "api://dicomweb"


@dataclass
class Key:
    """A private key, its id, and how the issuer publishes it."""

    private: Any
    kid: str = field(default_factory=lambda: uuid.uuid4().hex)
    use: str = "sig"
    alg: str | None = "RS256"

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            entry = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
        else:
            entry = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))
        entry.update({"kid": self.kid, "use": self.use})
        if self.alg:
            entry["alg"] = self.alg
        return entry


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Provider:
    """An OIDC issuer on localhost."""

    def __init__(self) -> None:
        self.signing = Key(rsa_key())
        self.ec = Key(ec.generate_private_key(ec.SECP256R1()), alg="ES256")
        self.encryption = Key(rsa_key(), use="enc", alg="RSA-OAEP")
        self.published = [self.signing, self.ec, self.encryption]
        self.stranger = rsa_key()
        self.key_fetches = 0
        self.claimed_issuer: str | None = None  # what discovery names as issuer (None: the truth)
        app = web.Application()
        app.router.add_get("/tenant/v2.0/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/keys", self._keys)
        self.server = ThreadedHttpServer(app)

    @property
    def issuer(self) -> str:
        return f"{self.server.url}/tenant/v2.0"

    async def _discovery(self, _: web.Request) -> web.Response:
        return web.json_response({"issuer": self.claimed_issuer or self.issuer, "jwks_uri": f"{self.server.url}/keys"})

    async def _keys(self, _: web.Request) -> web.Response:
        self.key_fetches += 1
        return web.json_response({"keys": [key.jwk() for key in self.published]})

    def rotate(self) -> Key:
        """Publish a new signing key (the old ones stay published)."""
        key = Key(rsa_key())
        self.published.append(key)
        return key

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": AUDIENCE, "sub": "pairwise-subject", "oid": "oid-pathologist",
                  "azp": "app-slim", "iat": now, "nbf": now - 5, "exp": now + 600}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, key: Key | None = None, algorithm: str | None = None, headers: dict[str, Any] | None = None,
              **claims: Any) -> str:
        """A token signed by ``key`` (the RSA signing key), with the default claims plus ``claims`` (None drops one)."""
        key = key or self.signing
        algorithm = algorithm or key.alg or "RS256"
        return jwt.encode(self.claims(**claims), key.private, algorithm=algorithm,
                          headers={"kid": key.kid, **(headers or {})})

    def bearer(self, **claims: Any) -> dict[str, str]:
        """An Authorization header with :meth:`token`."""
        return {"authorization": f"Bearer {self.token(**claims)}"}
