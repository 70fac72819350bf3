"""MCP authorization in the reference gateway: gateway/oauth.py and gateway/jwks.py.

Tokens come from a small authorization server served over real HTTP (tests/oauth_support.py),
whose keys a test rotates; the protected-resource metadata and the 401 challenge are read from
the ASGI application as an MCP client would. The whole flow with the real ``oidc-provider`` and
the SDK's OAuth client is tests/e2e/test_gateway_oauth_e2e.py.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import anyio
import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from gateway.__main__ import ConfigError, _parser, settings_from
from gateway.identity import FirstOf, Principal, StaticIdentities
from gateway.jwks import JwksCache, cache_seconds, key_fits, metadata_urls
from gateway.oauth import OAuthIdentities, ProtectedResource, metadata_url
from gateway.proxy import BearerAuth
from tests.oauth_support import FakeIssuer

RESOURCE = "https://gw.example/mcp"


@pytest.fixture
def issuer() -> Iterator[FakeIssuer]:
    with FakeIssuer() as served:
        yield served


def identities(issuer: FakeIssuer, **options: Any) -> OAuthIdentities:
    jwks = JwksCache(issuer=issuer.issuer, min_refetch=options.pop("min_refetch", 0.0))
    return OAuthIdentities(issuer=issuer.issuer, resource=RESOURCE, jwks=jwks, **options)


def identify(source: Any, token: str) -> Principal | None:
    return anyio.run(source.identify, token)


# --- Tokens ------------------------------------------------------------------------------------


def test_a_token_for_this_resource_gives_the_principal_with_client_and_groups(issuer):
    source = identities(issuer)
    token = issuer.token(audience=[RESOURCE, "other"], subject="alice", azp="payroll-bot",
                         groups=["hr-staff", "all", 7])
    assert identify(source, token) == Principal(issuer.issuer, "alice", client_id="payroll-bot",
                                                groups=("all", "hr-staff"))


def test_client_id_stands_for_azp_and_act_names_the_actor(issuer):
    source = identities(issuer, groups_claim="roles")
    token = issuer.token(audience=RESOURCE, subject="alice", client_id="c-1",
                         act={"sub": "payroll-bot", "act": {"sub": "earlier"}},
                         roles="hr-staff")
    assert identify(source, token) == Principal(issuer.issuer, "alice", client_id="c-1",
                                                actor="payroll-bot", groups=("hr-staff",))


@pytest.mark.parametrize("case", [
    "another audience", "no audience", "expired", "not yet valid", "issued in the future",
    "another issuer", "no exp", "unknown key", "act without sub", "an id token",
    "scope missing",
])
def test_tokens_that_are_not_for_this_resource_or_not_valid_are_refused(issuer, case):
    source = identities(issuer, leeway_seconds=5, required_scopes=["mcp"])
    stranger = issuer.rotate()
    issuer.keys = issuer.keys[:1]  # the stranger's key is not published
    later = {"seconds": 3600}
    token = {
        "another audience": lambda: issuer.token(audience="https://other.example/mcp",
                                                 scope="mcp"),
        "no audience": lambda: issuer.token(audience=None, scope="mcp"),
        "expired": lambda: issuer.token(audience=RESOURCE, scope="mcp",
                                        lifetime=timedelta(seconds=-60)),
        "not yet valid": lambda: issuer.token(audience=RESOURCE, scope="mcp",
                                              nbf=_now_plus(**later)),
        "issued in the future": lambda: issuer.token(audience=RESOURCE, scope="mcp",
                                                     iat=_now_plus(**later)),
        "another issuer": lambda: issuer.token(audience=RESOURCE, scope="mcp",
                                               iss="https://evil.example"),
        "no exp": lambda: issuer.token(audience=RESOURCE, scope="mcp", exp=None),
        "unknown key": lambda: issuer.token(audience=RESOURCE, scope="mcp", kid=stranger),
        "act without sub": lambda: issuer.token(audience=RESOURCE, scope="mcp",
                                                act={"client_id": "x"}),
        "an id token": lambda: issuer.token(audience=RESOURCE, scope="mcp",
                                            headers={"typ": "id_token+jwt"}),
        "scope missing": lambda: issuer.token(audience=RESOURCE, scope="openid"),
    }[case]
    assert identify(source, token()) is None


def _now_plus(seconds: int) -> Any:
    from datetime import UTC, datetime
    return datetime.now(UTC) + timedelta(seconds=seconds)


def test_alg_none_and_hmac_with_the_public_key_are_refused(issuer):
    source = identities(issuer)
    good = issuer.token(audience=RESOURCE)
    header, payload, _ = good.split(".")
    unsigned = _b64(json.dumps({"alg": "none", "kid": issuer.keys[0][0]})) + f".{payload}."
    assert identify(source, unsigned) is None
    # HS256 "signed" with the issuer's public key, the classic key-confusion attack.
    public_pem = issuer.keys[0][1].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{_b64(json.dumps({'alg': 'HS256', 'kid': issuer.keys[0][0]}))}.{payload}"
    import hashlib
    import hmac
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    assert identify(source, forged) is None
    assert identify(source, good) is not None
    with pytest.raises(ValueError, match="algorithms must be among"):
        OAuthIdentities(issuer=issuer.issuer, resource=RESOURCE, jwks=source.jwks,
                        algorithms=["RS256", "HS256"])
    with pytest.raises(ValueError, match="algorithms must be among"):
        OAuthIdentities(issuer=issuer.issuer, resource=RESOURCE, jwks=source.jwks,
                        algorithms=["none"])


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def test_a_key_is_used_only_for_the_algorithm_it_fits():
    rsa_key = {"kty": "RSA", "kid": "a", "n": "x", "e": "AQAB"}
    assert key_fits(rsa_key, "RS256") and key_fits(rsa_key, "PS512")
    assert not key_fits(rsa_key, "ES256") and not key_fits(rsa_key, "HS256")
    assert not key_fits(rsa_key | {"alg": "RS512"}, "RS256")
    assert not key_fits(rsa_key | {"use": "enc"}, "RS256")
    ec_key = {"kty": "EC", "crv": "P-384"}
    assert key_fits(ec_key, "ES384") and not key_fits(ec_key, "ES256")
    assert key_fits({"kty": "OKP", "crv": "Ed25519"}, "EdDSA")


# --- The JWKS: discovery, caching, rotation ----------------------------------------------------


def test_the_jwks_is_found_through_the_issuers_metadata_and_cached(issuer):
    source = identities(issuer, min_refetch=60.0)
    for _ in range(3):
        assert identify(source, issuer.token(audience=RESOURCE)) is not None
    assert issuer.jwks_fetches == 1
    assert source.jwks.jwks_url == f"{issuer.issuer}/jwks"


def test_a_new_key_at_the_issuer_is_fetched_once_and_unknown_kids_are_rate_limited(issuer):
    source = identities(issuer, min_refetch=60.0)
    assert identify(source, issuer.token(audience=RESOURCE)) is not None
    # A made-up key id asks the issuer once…
    rotated_early = issuer.token(audience=RESOURCE, kid="made-up", key=issuer.keys[0][1])
    assert identify(source, rotated_early) is None
    assert issuer.jwks_fetches == 2
    # …and for the next minute an unknown kid (even a real new one) does not hit it again.
    issuer.rotate(drop_old=True)
    assert identify(source, issuer.token(audience=RESOURCE)) is None
    assert issuer.jwks_fetches == 2
    # Without the rate limit in the way, rotation is picked up at the first token of the key.
    fresh = identities(issuer, min_refetch=0.0)
    assert identify(fresh, issuer.token(audience=RESOURCE)) is not None
    unpublished = issuer.rotate()
    issuer.keys = issuer.keys[:1]
    assert identify(fresh, issuer.token(audience=RESOURCE, kid=unpublished)) is None


def test_the_cache_follows_cache_control():
    assert cache_seconds("public, max-age=600", default=300, floor=30, ceiling=86400) == 600
    assert cache_seconds("max-age=5", default=300, floor=30, ceiling=86400) == 30
    assert cache_seconds("max-age=999999", default=300, floor=30, ceiling=86400) == 86400
    assert cache_seconds("no-store", default=300, floor=30, ceiling=86400) == 30
    assert cache_seconds(None, default=300, floor=30, ceiling=86400) == 300
    assert metadata_urls("https://as.example/tenant1") == [
        "https://as.example/.well-known/oauth-authorization-server/tenant1",
        "https://as.example/tenant1/.well-known/openid-configuration"]


def test_an_issuer_whose_metadata_names_another_issuer_is_refused(issuer):
    source = OAuthIdentities(issuer=issuer.issuer + "/", resource=RESOURCE,
                             jwks=JwksCache(issuer=issuer.issuer + "/", min_refetch=0.0))
    assert identify(source, issuer.token(audience=RESOURCE, iss=issuer.issuer + "/")) is None


# --- Protected-resource metadata and the 401 challenge -----------------------------------------


def _app(issuer: FakeIssuer, *, scopes: tuple[str, ...] = ()) -> Any:
    async def mcp(scope: dict[str, Any], receive: Any, send: Any) -> None:
        principal = scope["state"]["tollgate_principal"]
        body = json.dumps({"subject": principal.subject}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    sources = FirstOf(StaticIdentities({"static-token": ("https://static", "bot")}),
                      identities(issuer))
    return ProtectedResource(BearerAuth(mcp, sources), resource=RESOURCE,
                             authorization_servers=[issuer.issuer], scopes=scopes)


def _get(app: Any, path: str, **headers: str) -> httpx2.Response:
    async def go() -> httpx2.Response:
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app),
                                      base_url="https://gw.example") as client:
            return await client.get(path, headers=headers)
    return anyio.run(go)


def test_the_protected_resource_metadata_is_served_at_both_well_known_paths(issuer):
    app = _app(issuer, scopes=("mcp",))
    for path in ("/.well-known/oauth-protected-resource",
                 "/.well-known/oauth-protected-resource/mcp"):
        response = _get(app, path)
        assert response.status_code == 200
        assert response.json() == {"resource": RESOURCE,
                                   "authorization_servers": [issuer.issuer],
                                   "bearer_methods_supported": ["header"],
                                   "scopes_supported": ["mcp"]}
        assert response.headers["access-control-allow-origin"] == "*"
    assert metadata_url(RESOURCE) == \
        "https://gw.example/.well-known/oauth-protected-resource/mcp"


def test_a_401_points_at_the_metadata_and_says_invalid_token_only_when_one_was_sent(issuer):
    app = _app(issuer)
    bare = _get(app, "/mcp")
    assert bare.status_code == 401
    assert bare.headers["www-authenticate"] == (
        'Bearer resource_metadata="https://gw.example/.well-known/oauth-protected-resource/mcp"')
    wrong = _get(app, "/mcp", Authorization=f"Bearer {issuer.token(audience='https://x/mcp')}")
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert 'resource_metadata="https://gw.example/.well-known/oauth-protected-resource/mcp"' \
        in wrong.headers["www-authenticate"]
    assert len(wrong.headers.get_list("www-authenticate")) == 1


def test_oauth_tokens_and_static_tokens_both_get_through(issuer):
    app = _app(issuer)
    ok = _get(app, "/mcp", Authorization=f"Bearer {issuer.token(audience=RESOURCE)}")
    assert (ok.status_code, ok.json()) == (200, {"subject": "bot"})
    static = _get(app, "/mcp", Authorization="Bearer static-token")
    assert (static.status_code, static.json()) == (200, {"subject": "bot"})


# --- Command line ------------------------------------------------------------------------------


def _settings(*flags: str):
    base = ["run", "--control-plane", "http://cp", "--tenant", "acme", "--server-name", "s",
            "--upstream", "http://up/mcp"]
    args = _parser().parse_args([*base, *flags])
    args.token = "t"
    return settings_from(args)


def test_the_oauth_flags_are_checked_and_named_in_errors(tmp_path):
    (tmp_path / "token").write_text("t")
    good = _settings("--token-file", str(tmp_path / "token"), "--oauth-issuer",
                     "https://as.example", "--resource-uri", RESOURCE, "--oauth-scopes",
                     "mcp tools", "--oauth-algorithms", "RS256,ES256",
                     "--jwks-refetch-interval", "5")
    assert (good.oauth_issuer, good.resource_uri, good.oauth_scopes, good.oauth_algorithms,
            good.jwks_refetch_interval) == ("https://as.example", RESOURCE, ["mcp", "tools"],
                                            ["RS256", "ES256"], 5.0)
    for flags, message in [
        (["--oauth-issuer", "https://as.example"], "--resource-uri is required"),
        (["--oauth-issuer", "https://as.example", "--resource-uri", "https://gw/mcp#x"],
         "--resource-uri: the resource URI must be an absolute"),
        (["--oauth-issuer", "https://as.example", "--resource-uri", RESOURCE,
          "--oauth-algorithms", "HS256"], "--oauth-algorithms"),
        (["--oauth-issuer", "https://as.example", "--resource-uri", RESOURCE,
          "--oauth-leeway", "9999"], "--oauth-leeway: between 0 and 300"),
        (["--jwt-issuer", "https://j", "--jwt-jwks-url", "https://j/jwks", "--resource-uri",
          RESOURCE], "--resource-uri is used with --oauth-issuer"),
    ]:
        with pytest.raises(ConfigError, match=message):
            _settings("--token-file", str(tmp_path / "token"), *flags)


def test_jwt_decode_rejects_what_the_allow_list_lets_through_only_with_the_right_key(issuer):
    """PyJWT binds the key to its algorithm: a PS256 header on an RS256-only key is refused."""
    source = identities(issuer, algorithms=["PS256"])
    assert identify(source, issuer.token(audience=RESOURCE)) is None  # RS256 not allowed
    token = issuer.token(audience=RESOURCE, algorithm="PS256")
    assert identify(source, token) is None  # the published key says alg RS256
    with pytest.raises(jwt.InvalidAlgorithmError):
        anyio.run(source.verify, issuer.token(audience=RESOURCE))
