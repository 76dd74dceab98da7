"""Bearer-token authentication (OpenID Connect), on when an issuer is configured.

Viewers such as Slim sign users in with Entra ID (or any OIDC provider) and send
``Authorization: Bearer <access token>``. The token must be a JWT signed by one of the
issuer's keys (found through its discovery document), issued by that issuer, meant for
one of the configured audiences, and within its validity period. Keys are cached and
fetched again when a token names an unknown key (the provider rotated its keys).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import jwt

from dicomweb.errors import StorageFailure, Unauthorized

#: Signing algorithms accepted (asymmetric only: a shared secret would be a key in the settings).
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384"]
KEYS_LIFETIME = 3600.0
#: Shortest pause between two fetches of the keys (an unknown key id must not hammer the provider).
REFETCH_SECONDS = 60.0
LEEWAY_SECONDS = 60


class TokenValidator:
    """Validates access tokens of one issuer for a set of audiences."""

    def __init__(self, issuer: str, audiences: tuple[str, ...]) -> None:
        self.issuer = issuer
        self.audiences = audiences
        self._discovery = f"{issuer.rstrip('/')}/.well-known/openid-configuration"
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched = 0.0
        self._lock = asyncio.Lock()

    async def _fetch(self) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        try:
            async with aiohttp.ClientSession(timeout=timeout, trust_env=True) as http:
                async with http.get(self._discovery) as response:
                    response.raise_for_status()
                    jwks_uri = (await response.json(content_type=None))["jwks_uri"]
                async with http.get(jwks_uri) as response:
                    response.raise_for_status()
                    document = await response.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError) as exc:
            raise StorageFailure(f"the token issuer's keys could not be read: {exc.__class__.__name__}") from exc
        keys = {}
        for entry in document.get("keys", []):
            try:
                keys[entry.get("kid", "")] = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue
        self._keys = keys
        self._fetched = time.monotonic()

    async def _key(self, kid: str) -> jwt.PyJWK:
        async with self._lock:
            age = time.monotonic() - self._fetched
            if age > KEYS_LIFETIME or (kid not in self._keys and age > REFETCH_SECONDS):
                await self._fetch()
        key = self._keys.get(kid)
        if key is None:
            raise Unauthorized("the token is signed with a key the issuer does not publish")
        return key

    async def validate(self, authorization: str | None) -> dict[str, Any]:
        """The claims of the bearer token in an ``Authorization`` header; 401 for anything else."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send an access token: Authorization: Bearer <token>")
        token = token.strip()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"the bearer token is not a JWT: {exc}") from None
        key = await self._key(str(header.get("kid", "")))
        try:
            return jwt.decode(token, key=key, algorithms=ALGORITHMS, audience=list(self.audiences),
                              issuer=self.issuer, leeway=LEEWAY_SECONDS,
                              options={"require": ["exp", "iss", "aud"]})
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"the bearer token is not valid here: {exc}") from None
