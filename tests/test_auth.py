"""Authentication and data roles against a real OpenID Connect issuer (``tests/oidc.py``) and real emulators.

The route tables come from ``function_app.app``'s registrations, so a new route is in
every table at once: it must declare its permission, refuse every bad token, and open
exactly to the roles the README documents.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest
from azure.functions.decorators.http import HttpTrigger
from cryptography.hazmat.primitives import serialization

import function_app  # noqa: E402
from dicomweb.api import unknown
from dicomweb.api.http import REQUIREMENTS
from dicomweb.api.local_host import registered
from dicomweb.auth import (
    ANONYMOUS,
    Authenticator,
    Permission,
    TokenValidator,
    configuration_problem,
    grants,
    principal_from_claims,
)
from dicomweb.config import Settings
from dicomweb.errors import NotConfigured, StorageFailure, Unauthorized
from dicomweb.local.emulators import free_port
from tests.conftest import ROOT, Server, fresh_settings, start_server
from tests.oidc import AUDIENCE, Key, Provider
from tests.wsi_factory import make_slide

#: Stand-ins for path parameters: well-formed, naming nothing stored.
PATH_VALUES = {"study": "1.2.826.0.1.3680043.10.1", "series": "1.2.826.0.1.3680043.10.2",
               "instance": "1.2.826.0.1.3680043.10.3", "frames": "1", "path": "00282000", "id": "0" * 32}


def registered_routes() -> list[tuple[str, str, str]]:
    """(function name, method, path below the base URL) of every HTTP function ``function_app.app`` registers."""
    routes = []
    for function in registered(function_app.app):
        trigger = function.get_trigger()
        if not isinstance(trigger, HttpTrigger) or function.get_function_name() == unknown.NAME:
            continue  # what the service does not have answers any caller 401, then 404 (tests/api/test_unknown.py)
        for method in (str(getattr(m, "value", m)) for m in trigger.methods):
            if method != "OPTIONS":
                routes.append((function.get_function_name(), method, trigger.route.format(**PATH_VALUES)))
    return routes


ROUTES = registered_routes()
ROUTE_IDS = [f"{method} {name}" for name, method, _ in ROUTES]

#: Who may do what, as the README documents it.
ROLE_TOKENS = {
    "no role": {},
    "reader": {"roles": ["DICOM.Reader"]},
    "reader by scope": {"scp": "dicom.read openid"},
    "reader and read scope": {"scp": "dicom.read", "roles": ["DICOM.Reader"]},
    "writer": {"roles": ["DICOM.Writer"]},
    "owner": {"roles": ["DICOM.Owner"]},
}
ALLOWED = {
    "no role": set(),
    "reader": {Permission.READ},
    "reader by scope": {Permission.READ},
    "reader and read scope": {Permission.READ},
    "writer": {Permission.WRITE},
    "owner": {Permission.READ, Permission.WRITE, Permission.DELETE},
}


def bad_tokens(provider: Provider) -> dict[str, str | None]:
    """Authorization header values that must all be refused with 401."""
    now = int(time.time())
    public_pem = provider.signing.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    valid = provider.token(roles=["DICOM.Owner"])
    head, payload, signature = valid.split(".")
    forged_payload = jwt.utils.base64url_encode(json.dumps(provider.claims(oid="someone-else")).encode()).decode()
    hs256 = jwt.api_jws.PyJWS().encode(json.dumps(provider.claims(roles=["DICOM.Owner"])).encode(), key=b"0" * 32,
                                       algorithm="HS256", headers={"kid": provider.signing.kid})
    # The alg-confusion attack: HS256 keyed with the published RSA public key (PyJWT itself refuses to sign it).
    confused_head = jwt.utils.base64url_encode(json.dumps(
        {"alg": "HS256", "typ": "JWT", "kid": provider.signing.kid}).encode()).decode()
    confused_body = jwt.utils.base64url_encode(json.dumps(provider.claims(roles=["DICOM.Owner"])).encode()).decode()
    confused_mac = hmac.new(public_pem, f"{confused_head}.{confused_body}".encode(), hashlib.sha256).digest()
    confused = f"{confused_head}.{confused_body}.{jwt.utils.base64url_encode(confused_mac).decode()}"
    return {
        "missing": None,
        "empty bearer": "Bearer",
        "basic": "Basic dXNlcjpwYXNz",
        "garbage": "Bearer not-a-jwt",
        "unsigned (alg none)": "Bearer " + jwt.encode(provider.claims(roles=["DICOM.Owner"]), None, algorithm="none",
                                                    headers={"kid": provider.signing.kid}),
        "HS256 with a shared secret": f"Bearer {hs256}",
        "HS256 keyed with the public key": f"Bearer {confused}",
        "other audience": f"Bearer {provider.token(aud='api://elsewhere', roles=['DICOM.Owner'])}",
        "other issuer": f"Bearer {provider.token(iss='https://evil.example/v2.0', roles=['DICOM.Owner'])}",
        "expired": f"Bearer {provider.token(exp=now - 3600, roles=['DICOM.Owner'])}",
        "not yet valid": f"Bearer {provider.token(nbf=now + 3600, roles=['DICOM.Owner'])}",
        "no exp": f"Bearer {provider.token(exp=None, roles=['DICOM.Owner'])}",
        "no aud": f"Bearer {provider.token(aud=None, roles=['DICOM.Owner'])}",
        "no iss": f"Bearer {provider.token(iss=None, roles=['DICOM.Owner'])}",
        "no subject": f"Bearer {provider.token(oid=None, sub=None, roles=['DICOM.Owner'])}",
        "unknown key id": f"Bearer {provider.token(Key(provider.stranger, kid='unpublished'), roles=['DICOM.Owner'])}",
        "foreign key, published kid": f"Bearer {provider.token(Key(provider.stranger, kid=provider.signing.kid), roles=['DICOM.Owner'])}",
        "encryption key": f"Bearer {provider.token(provider.encryption, algorithm='RS256', roles=['DICOM.Owner'])}",
        "algorithm other than the key's": f"Bearer {provider.token(algorithm='PS256', roles=['DICOM.Owner'])}",
        "tampered payload": f"Bearer {head}.{forged_payload}.{signature}",
        "oversized": f"Bearer {valid}{'A' * 20000}",
    }


def _validate(provider: Provider, header: str | None, validator: TokenValidator | None = None) -> dict:
    return asyncio.run((validator or TokenValidator(provider.issuer, (AUDIENCE,))).validate(header))


# --- the token validator, against the issuer ------------------------------------------------------------


def test_a_valid_token_yields_its_claims(provider: Provider) -> None:
    claims = _validate(provider, f"Bearer {provider.token()}")
    assert claims["oid"] == "oid-pathologist" and claims["aud"] == AUDIENCE


def test_an_ec_key_signs_valid_tokens(provider: Provider) -> None:
    assert _validate(provider, f"Bearer {provider.token(provider.ec)}")["azp"] == "app-slim"


def test_every_bad_token_is_refused(provider: Provider) -> None:
    authenticator = Authenticator(Settings(auth_issuer=provider.issuer, auth_audiences=(AUDIENCE,)))

    async def scenario() -> None:
        for case, header in bad_tokens(provider).items():
            with pytest.raises(Unauthorized):
                await authenticator.authenticate(header)
                pytest.fail(f"{case} was accepted")
        principal = await authenticator.authenticate(f"Bearer {provider.token(roles=['DICOM.Writer'])}")
        assert (principal.id, principal.app, principal.permissions) == ("oid-pathologist", "app-slim",
                                                                        {Permission.WRITE})

    asyncio.run(scenario())


def test_a_small_clock_skew_is_tolerated(provider: Provider) -> None:
    now = int(time.time())
    assert _validate(provider, f"Bearer {provider.token(exp=now - 30)}")
    assert _validate(provider, f"Bearer {provider.token(nbf=now + 30)}")
    with pytest.raises(Unauthorized):
        _validate(provider, f"Bearer {provider.token(exp=now - 120)}")


def test_keys_are_fetched_again_for_a_new_key_id_but_rate_limited(provider: Provider) -> None:
    validator = TokenValidator(provider.issuer, (AUDIENCE,), refetch_seconds=1.0)

    async def scenario() -> None:
        await validator.validate(f"Bearer {provider.token()}")
        fetched = provider.key_fetches
        rotated = provider.rotate()
        fresh = f"Bearer {provider.token(rotated)}"
        with pytest.raises(Unauthorized):  # within the rate limit: the keys are not fetched again
            await validator.validate(fresh)
        for i in range(50):  # nor for a burst of unknown key ids
            with pytest.raises(Unauthorized):
                await validator.validate(f"Bearer {provider.token(Key(provider.stranger, kid=f'k{i}'))}")
        assert provider.key_fetches == fetched
        await asyncio.sleep(1.1)
        assert (await validator.validate(fresh))["oid"] == "oid-pathologist"  # fetched once more: the new key
        assert provider.key_fetches == fetched + 1

    asyncio.run(scenario())


def test_a_discovery_document_naming_another_issuer_is_refused(provider: Provider) -> None:
    provider.claimed_issuer = "https://login.example/other/v2.0"
    try:
        with pytest.raises(NotConfigured, match="names another issuer"):
            _validate(provider, f"Bearer {provider.token()}")
    finally:
        provider.claimed_issuer = None


def test_an_unreachable_issuer_is_a_503_not_a_401(provider: Provider) -> None:
    validator = TokenValidator(f"http://127.0.0.1:{free_port()}/tenant/v2.0", (AUDIENCE,))
    with pytest.raises(StorageFailure):
        _validate(provider, f"Bearer {provider.token()}", validator)


# --- principals and configuration ----------------------------------------------------------------------


def test_roles_and_scopes_grant_permissions_by_the_configured_names() -> None:
    granted_by = grants(Settings())
    for case, claims in ROLE_TOKENS.items():
        principal = principal_from_claims({"oid": "o", **claims}, granted_by)
        assert principal.permissions == ALLOWED[case], case
    renamed = grants(Settings.from_env({"DICOMWEB_READER_ROLES": "Slides.View"}))
    assert principal_from_claims({"sub": "s", "roles": ["Slides.View"]}, renamed).permissions == {Permission.READ}
    assert principal_from_claims({"sub": "s", "roles": ["DICOM.Reader"]}, renamed).permissions == frozenset()
    assert principal_from_claims({"sub": "s", "oid": "o", "appid": "a"}, granted_by).id == "o"


def test_authentication_fails_closed_unless_disabled_explicitly() -> None:
    assert "DICOMWEB_AUTH_DISABLED=true" in (configuration_problem(Settings()) or "")
    with pytest.raises(NotConfigured):
        asyncio.run(Authenticator(Settings()).authenticate(None))
    assert asyncio.run(Authenticator(Settings(auth_disabled=True)).authenticate(None)) is ANONYMOUS
    assert configuration_problem(Settings(auth_issuer="https://x", auth_disabled=True))
    assert configuration_problem(Settings(auth_issuer="https://x"))  # no audience
    assert configuration_problem(Settings(auth_issuer="https://x", auth_audiences=("a",))) is None
    with pytest.raises(ValueError):
        Settings.from_env({"DICOMWEB_AUTH_DISABLED": "yes"})


def test_every_registered_route_declares_its_permission() -> None:
    names = {name for name, _, _ in ROUTES}
    assert names <= set(REQUIREMENTS), f"routes without a declared permission: {names - set(REQUIREMENTS)}"
    assert len(names) >= 27
    for name, method, _ in ROUTES:
        expected = (Permission.DELETE if (method == "DELETE" and not name.startswith("upload"))
                    or name.startswith("reindex")  # rebuilding the index is the owner's
                    or name == "usage"  # so is what the store holds and costs
                    else Permission.WRITE if method in ("POST", "PUT") or name.startswith(("upload", "rehydrat", "inbox"))
                    else Permission.READ)
        assert REQUIREMENTS[name] is expected, name


# --- the running service -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "method", "path"), ROUTES, ids=ROUTE_IDS)
def test_every_route_refuses_every_bad_token(secured: Server, provider: Provider, name: str, method: str,
                                             path: str) -> None:
    with httpx.Client(base_url=secured.base_url, timeout=30) as client:
        for case, header in bad_tokens(provider).items():
            response = client.request(method, path, headers={"authorization": header} if header else {})
            assert response.status_code == 401, f"{case}: {response.status_code} {response.text[:200]}"
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.headers["content-type"] == "application/dicom+json"


@pytest.mark.parametrize("role", list(ROLE_TOKENS))
def test_each_role_reaches_exactly_its_routes(secured: Server, provider: Provider, role: str) -> None:
    headers = provider.bearer(**ROLE_TOKENS[role])
    with httpx.Client(base_url=secured.base_url, timeout=60) as client:
        for name, method, path in ROUTES:
            response = client.request(method, path, headers=headers)
            if REQUIREMENTS[name] in ALLOWED[role]:
                assert response.status_code not in (401, 403), f"{role} {method} {name}: {response.text[:200]}"
            else:
                assert response.status_code == 403, f"{role} {method} {name}: {response.status_code}"
                assert "permission" in response.json()["message"]
                assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


def test_roles_do_real_work(secured: Server, provider: Provider, tmp_path: Path) -> None:
    """A writer stores, a reader reads it, only the owner deletes it."""
    (file,) = make_slide(tmp_path, levels=1, associated=False, base_size=(256, 256))
    writer, reader = provider.bearer(roles=["DICOM.Writer"]), provider.bearer(scp="dicom.read")
    owner = provider.bearer(roles=["DICOM.Owner"])
    stored = httpx.post(f"{secured.base_url}/studies", content=file.path.read_bytes(),
                        headers={**writer, "content-type": "application/dicom"})
    assert stored.status_code == 200, stored.text
    instance = f"{secured.base_url}/studies/{file.study_uid}/series/{file.series_uid}/instances/{file.sop_uid}"
    assert httpx.get(f"{instance}/metadata", headers=reader).status_code == 200
    assert httpx.get(f"{instance}/metadata", headers=writer).status_code == 403
    assert httpx.delete(instance, headers=reader).status_code == 403
    assert httpx.delete(instance, headers=writer).status_code == 403
    assert httpx.delete(instance, headers=owner).status_code == 204
    assert httpx.get(f"{instance}/metadata", headers=reader).status_code == 404


def test_preflights_need_no_token(secured: Server) -> None:
    preflight = httpx.options(f"{secured.base_url}/studies", headers={
        "origin": "https://slim.example", "access-control-request-method": "GET",
        "access-control-request-headers": "accept, authorization"})
    assert preflight.status_code == 204 and "authorization" in preflight.headers["access-control-allow-headers"]


def test_without_an_issuer_every_route_refuses(emulators: dict[str, str], tmp_path: Path) -> None:
    """``DICOMWEB_AUTH_DISABLED=false`` and no issuer: ``serve`` keeps authentication required, so nothing is served."""
    server = start_server(fresh_settings(emulators), tmp_path, DICOMWEB_AUTH_DISABLED="false", DICOMWEB_AUTH_ISSUER="")
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            for name, method, path in ROUTES:
                response = client.request(method, path)
                assert response.status_code == 503, f"{method} {name}: {response.status_code}"
                assert "DICOMWEB_AUTH_DISABLED=true" in response.json()["message"]
                assert "retry-after" not in response.headers
    finally:
        server.stop()
    log = next(tmp_path.glob("serve-*.log")).read_text()
    assert "no data will be served: authentication is not configured" in log
    assert "authentication is off" not in log


def test_serve_turns_authentication_off_only_when_nothing_is_said(server: Server) -> None:
    log = Path(server.log).read_text()
    assert "authentication is off (DICOMWEB_AUTH_DISABLED=true)" in log
    assert httpx.get(f"{server.base_url}/studies").status_code == 200


def test_the_upload_cli_sends_its_token(secured: Server, provider: Provider, tmp_path: Path) -> None:
    instance = make_slide(tmp_path, levels=1, associated=False, base_size=(300, 300))[0]

    def upload(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dicomweb", "upload", str(instance.path), "--url", secured.base_url,
                               "--state", str(tmp_path / "state.json"), "--json", *extra],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)

    refused = upload()
    assert refused.returncode == 1 and "401" in json.loads(refused.stdout)["detail"]
    reader = upload("--token", provider.token(roles=["DICOM.Reader"]))
    assert reader.returncode == 1 and "403" in json.loads(reader.stdout)["detail"]
    stored = upload("--token", provider.token(roles=["DICOM.Writer"]))
    assert stored.returncode == 0 and json.loads(stored.stdout)["status"] == "stored"
