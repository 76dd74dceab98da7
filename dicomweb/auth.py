"""Who is calling and what they may do: bearer tokens (OpenID Connect) and data roles.

The service fails closed. With ``DICOMWEB_AUTH_ISSUER`` (and ``DICOMWEB_AUTH_AUDIENCE``)
every request needs ``Authorization: Bearer <access token>``: a JWT signed by one of the
issuer's keys (found through its discovery document), issued by that issuer, meant for
one of the audiences, and within its validity period (RFC 6750, RFC 8725). Without an
issuer nothing is served unless ``DICOMWEB_AUTH_DISABLED=true`` says so explicitly.

What a token may do comes from its app roles (``roles``) and delegated scopes (``scp``),
as the Azure DICOM service has data roles: a *reader* searches and retrieves, a *writer*
stores (STOW-RS, PUT, upload sessions), an *owner* does both and deletes. Each route
declares the one :class:`Permission` it needs where it is registered.
"""

from __future__ import annotations

import asyncio
import time
from contextvars import ContextVar, Token
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping

import aiohttp
import jwt

from dicomweb.config import Settings
from dicomweb.errors import Forbidden, NotConfigured, StorageFailure, Unauthorized

#: Signing algorithms accepted (asymmetric only: a shared secret would be a key in the settings; RFC 8725 §3.1).
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
KEYS_LIFETIME = 3600.0
#: Shortest pause between two fetches of the keys (unknown key ids must not hammer the provider).
REFETCH_SECONDS = 60.0
#: Pause before the keys are fetched again after the issuer could not be reached.
RETRY_SECONDS = 5.0
#: Clock skew tolerated on ``exp`` and ``nbf``.
LEEWAY_SECONDS = 60
#: Longest token read: larger ones are refused before any parsing (Entra tokens are a few KB).
MAX_TOKEN_CHARS = 16 * 1024


class Permission(str, Enum):
    """What a route needs, declared where it is registered."""

    READ = "read"
    WRITE = "write"
    DELETE = "delete"


@dataclass(frozen=True)
class Principal:
    """The caller: a stable id (the token's ``oid``, else ``sub``), its client app, and what it may do."""

    id: str
    app: str | None
    permissions: frozenset[Permission]


ALL = frozenset(Permission)
#: The caller when authentication is disabled explicitly.
ANONYMOUS = Principal("anonymous", None, ALL)
#: The caller until its token is validated (what an audit record of a refused request names).
UNAUTHENTICATED = Principal("unauthenticated", None, frozenset())
#: The actor of work no request started (timers, the CLI's reindex and repair).
SYSTEM = Principal("system", None, ALL)
_current: ContextVar[Principal] = ContextVar("principal", default=SYSTEM)


def current() -> Principal:
    """The principal the running request (or the background work it started) acts for."""
    return _current.get()


def act_as(principal: Principal) -> Token[Principal]:
    """Make ``principal`` the actor of this task and of the tasks it starts."""
    return _current.set(principal)


def reset(token: Token[Principal]) -> None:
    """Undo :func:`act_as` (the tasks started meanwhile keep the principal they were started with)."""
    _current.reset(token)


def grants(settings: Settings) -> dict[Permission, tuple[str, ...]]:
    """For each permission, the role and scope names that grant it (an owner holds all three)."""
    return {
        Permission.READ: settings.reader_roles + settings.owner_roles,
        Permission.WRITE: settings.writer_roles + settings.owner_roles,
        Permission.DELETE: settings.owner_roles,
    }


def principal_from_claims(claims: Mapping[str, Any], granted_by: Mapping[Permission, tuple[str, ...]]) -> Principal:
    """The principal a validated token names; 401 when it names no subject."""
    subject = claims.get("oid") or claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Unauthorized("the bearer token names no subject (oid or sub)")
    roles = claims.get("roles")
    names = {r for r in roles if isinstance(r, str)} if isinstance(roles, list) else set()
    scopes = claims.get("scp")
    if isinstance(scopes, str):
        names.update(scopes.split())
    permissions = frozenset(p for p, granting in granted_by.items() if names.intersection(granting))
    app = claims.get("azp") or claims.get("appid")
    return Principal(subject, app if isinstance(app, str) else None, permissions)


def configuration_problem(settings: Settings) -> str | None:
    """Why the settings leave the service unable to serve data, or None."""
    if settings.auth_issuer and settings.auth_disabled:
        return "DICOMWEB_AUTH_ISSUER is set and DICOMWEB_AUTH_DISABLED=true: choose one"
    if settings.auth_issuer and not settings.auth_audiences:
        return "DICOMWEB_AUTH_AUDIENCE must name the accepted audiences when DICOMWEB_AUTH_ISSUER is set"
    if not settings.auth_issuer and not settings.auth_disabled:
        return ("authentication is not configured: set DICOMWEB_AUTH_ISSUER and DICOMWEB_AUTH_AUDIENCE, "
                "or DICOMWEB_AUTH_DISABLED=true to serve without authentication")
    return None


class TokenValidator:
    """Validates access tokens of one issuer for a set of audiences."""

    def __init__(self, issuer: str, audiences: tuple[str, ...], refetch_seconds: float = REFETCH_SECONDS) -> None:
        self.issuer = issuer
        self.audiences = audiences
        self.refetch_seconds = refetch_seconds
        self._discovery = f"{issuer.rstrip('/')}/.well-known/openid-configuration"
        #: Signing keys by id, with the algorithm each is published for (None: any of its type).
        self._keys: dict[str, tuple[jwt.PyJWK, str | None]] = {}
        self._fetched = -KEYS_LIFETIME
        self._unreachable: StorageFailure | None = None
        self._lock = asyncio.Lock()

    async def _fetch(self) -> None:
        self._fetched = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=10)
        try:
            async with aiohttp.ClientSession(timeout=timeout, trust_env=True) as http:
                async with http.get(self._discovery) as response:
                    response.raise_for_status()
                    discovery = await response.json(content_type=None)
                # OpenID Connect Discovery 1.0 §4.3: the document must name the issuer it was fetched for.
                if discovery.get("issuer") != self.issuer:
                    raise NotConfigured(f"the discovery document of {self.issuer} names another issuer, "
                                        f"{str(discovery.get('issuer'))[:200]!r}")
                async with http.get(discovery["jwks_uri"]) as response:
                    response.raise_for_status()
                    document = await response.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StorageFailure(f"the token issuer's keys could not be read: {exc.__class__.__name__}") from exc
        keys = {}
        for entry in document.get("keys", []) if isinstance(document, dict) else []:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue  # an encryption key never verifies a signature (RFC 7517 §4.2)
            algorithm = entry.get("alg")
            if algorithm is not None and algorithm not in ALGORITHMS:
                continue
            try:
                keys[str(entry.get("kid", ""))] = (jwt.PyJWK(entry), algorithm)
            except jwt.PyJWTError:
                continue
        self._keys = keys

    async def _key(self, kid: str) -> tuple[jwt.PyJWK, str | None]:
        async with self._lock:
            age = time.monotonic() - self._fetched
            if age > KEYS_LIFETIME or (kid not in self._keys and age > self.refetch_seconds):
                try:
                    await self._fetch()
                    self._unreachable = None
                except StorageFailure as failure:
                    # Try again soon; meanwhile a cached key still verifies (the issuer only rotates slowly).
                    self._fetched = time.monotonic() - self.refetch_seconds + RETRY_SECONDS
                    self._unreachable = failure
        key = self._keys.get(kid)
        if key is None:
            if self._unreachable is not None:
                raise self._unreachable  # 503: the key may well exist, the issuer could not say
            raise Unauthorized("the token is signed with a key the issuer does not publish")
        return key

    async def validate(self, authorization: str | None) -> dict[str, Any]:
        """The claims of the bearer token in an ``Authorization`` header; 401 for anything else."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("send an access token: Authorization: Bearer <token>")
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthorized(f"the bearer token is longer than {MAX_TOKEN_CHARS} characters")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"the bearer token is not a JWT: {exc}") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise Unauthorized(f"tokens signed with {str(algorithm)[:20]!r} are not accepted")
        key, published_for = await self._key(str(header.get("kid", "")))
        if published_for is not None and published_for != algorithm:
            raise Unauthorized("the token's algorithm is not the one its key is published for")
        try:
            return jwt.decode(token, key=key.key, algorithms=[algorithm], audience=list(self.audiences),
                              issuer=self.issuer, leeway=LEEWAY_SECONDS,
                              options={"require": ["exp", "iss", "aud"]})
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"the bearer token is not valid here: {exc}") from None


class Authenticator:
    """Turns a request's ``Authorization`` header into a :class:`Principal`, failing closed."""

    def __init__(self, settings: Settings) -> None:
        self.problem = configuration_problem(settings)
        self.granted_by = grants(settings)
        self.validator = (TokenValidator(settings.auth_issuer, settings.auth_audiences)
                          if settings.auth_issuer and self.problem is None else None)

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller; 503 when authentication is not configured, 401 for a missing or bad token."""
        if self.problem is not None:
            raise NotConfigured(self.problem)
        if self.validator is None:
            return ANONYMOUS
        claims = await self.validator.validate(authorization)
        return principal_from_claims(claims, self.granted_by)

    def authorize(self, principal: Principal, permission: Permission) -> None:
        """403 unless ``principal`` holds ``permission``."""
        if permission not in principal.permissions:
            names = ", ".join(self.granted_by[permission]) or "none configured"
            raise Forbidden(f"this request needs the {permission.value} permission: "
                            f"an app role or scope among {names}")
