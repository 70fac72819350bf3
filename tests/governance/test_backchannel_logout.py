"""POST /oidc/backchannel-logout/ (OpenID Connect Back-Channel Logout 1.0): a verified logout
token ends the sessions it names; any other answer is 400 ``invalid_request`` (503 while the
IdP's keys cannot be fetched), never a 500, and a refused token ends and records nothing."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from django.core.cache import cache
from django.test import Client

from governance.audit.models import AuditEvent
from governance.tenancy import backchannel
from governance.tenancy.models import UserSession

ISSUER = "https://idp.example"
CLIENT_ID = "tollgate"
URL = "/oidc/backchannel-logout/"
EVENT = "http://schemas.openid.net/event/backchannel-logout"
KID = "key-1"

PRIVATE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwk(private_key, kid: str) -> dict:
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}


@pytest.fixture
def oidc(settings, monkeypatch):
    settings.OIDC_ENABLED = True
    settings.OIDC_RP_CLIENT_ID = CLIENT_ID
    settings.OIDC_RP_CLIENT_SECRET = "s3cret"
    settings.OIDC_OP_ISSUER = ISSUER
    settings.OIDC_OP_JWKS_ENDPOINT = f"{ISSUER}/jwks"
    settings.OIDC_LOGOUT_TOKEN_MAX_AGE = 300
    cache.clear()
    fetches = []

    def fetch():
        fetches.append(1)
        keys = [_jwk(PRIVATE_KEY, KID)]
        cache.set(backchannel.JWKS_CACHE_KEY, keys)
        return keys

    monkeypatch.setattr(backchannel, "_fetch_jwks", fetch)
    return fetches


def logout_token(*, key=PRIVATE_KEY, kid: str | None = KID, alg: str = "RS256", drop=(),
                 **overrides) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": CLIENT_ID, "iat": now, "exp": now + 120,
              "jti": uuid.uuid4().hex, "sub": "carol-sub", "sid": "sid-1",
              "events": {EVENT: {}}} | overrides
    for name in drop:
        claims.pop(name)
    headers = {"kid": kid} if kid is not None else {}
    if alg == "HS256":
        return jwt.encode(claims, "a-shared-secret-of-enough-length-000000", algorithm=alg,
                          headers=headers)
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


@pytest.fixture
def carol_sessions(login, victor):
    """Two OIDC sessions of one person (victor, subject carol-sub): IdP sessions sid-1, sid-2."""
    clients = [login(victor), login(victor)]
    for client, sid in zip(clients, ("sid-1", "sid-2"), strict=True):
        UserSession.objects.filter(session_key=client.session.session_key).update(
            issuer=ISSUER, subject="carol-sub", sid=sid)
    return clients


def post(token: str | None):
    client = Client(enforce_csrf_checks=True)  # the IdP has no CSRF token, and needs none
    return client.post(URL, {} if token is None else {"logout_token": token})


def signed_in(client) -> bool:
    return client.get("/t/alpha/").status_code == 200


def test_a_token_naming_a_sid_ends_that_session_only(oidc, carol_sessions):
    response = post(logout_token())
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    assert [signed_in(c) for c in carol_sessions] == [False, True]
    [event] = AuditEvent.objects.filter(action="auth.session_ended")
    assert event.actor_label == "oidc-backchannel-logout"
    assert event.after == {"reason": "the IdP ended the sign-in (back-channel logout)",
                           "sessions_ended": 1}


def test_a_token_naming_only_a_sub_ends_every_session_of_that_subject(
    oidc, carol_sessions, login, alice
):
    other = login(alice)
    assert post(logout_token(drop=("sid",))).status_code == 200
    assert [signed_in(c) for c in carol_sessions] == [False, False]
    assert signed_in(other)


def test_sessions_whose_id_token_had_no_sid_end_by_subject(oidc, carol_sessions):
    UserSession.objects.filter(sid="sid-2").update(sid="")
    assert post(logout_token(sid="sid-9")).status_code == 200
    assert [signed_in(c) for c in carol_sessions] == [True, False]


def test_a_token_for_no_known_session_is_still_acknowledged(oidc, db):
    assert post(logout_token(sid="unknown")).status_code == 200
    assert not AuditEvent.objects.filter(action="auth.session_ended").exists()


def test_a_replayed_token_is_refused(oidc, carol_sessions):
    token = logout_token()
    assert post(token).status_code == 200
    response = post(token)
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_request", "error_description":
                               "logout_token was used already (jti replayed)"}



@pytest.mark.parametrize(("token", "message"), [
    (None, "logout_token is missing"),
    ("", "logout_token is missing"),
    ("not-a-jwt", "logout_token is not a signed JWT"),
    ("x" * 20000, "logout_token is too long"),
    (lambda: logout_token(alg="HS256"), "logout_token must be signed with RS256, not 'HS256'"),
    (lambda: logout_token(kid=None), "logout_token names no signing key (no kid)"),
    (lambda: logout_token(kid="other"), "is not in the IdP's JWKS"),
    (lambda: logout_token(key=OTHER_KEY), "Signature verification failed"),
    (lambda: logout_token(iss="https://evil.example"), "Invalid issuer"),
    (lambda: logout_token(aud="someone-else"), "Audience doesn't match"),
    (lambda: logout_token(drop=("iat",)), 'Token is missing the "iat" claim'),
    (lambda: logout_token(drop=("jti",)), 'Token is missing the "jti" claim'),
    (lambda: logout_token(iat=int(time.time()) - 3600, exp=int(time.time()) + 60),
     "iat is more than 300 s away from now"),
    (lambda: logout_token(exp=int(time.time()) - 3600), "Signature has expired"),
    (lambda: logout_token(drop=("events",)), 'Token is missing the "events" claim'),
    (lambda: logout_token(events={"http://example/other": {}}),
     "events has no http://schemas.openid.net/event/backchannel-logout member"),
    (lambda: logout_token(events={EVENT: "yes"}), "events has no"),
    (lambda: logout_token(nonce="n-1"), "logout_token must not contain a nonce"),
    (lambda: logout_token(drop=("sid", "sub")), "logout_token names neither sid nor sub"),
    (lambda: logout_token(sid=""), "logout_token's sid is not a non-empty string"),
    (lambda: logout_token(sub=42), "Subject must be a string"),
    (lambda: logout_token(jti=7), "JWT ID must be a string"),
    (lambda: logout_token(sub=""), "logout_token's sub is not a non-empty string"),
])
def test_a_bad_token_is_refused_and_changes_nothing(oidc, carol_sessions, token, message):
    token = token() if callable(token) else token
    before = AuditEvent.objects.count()
    response = post(token)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_request"
    assert message in body["error_description"]
    assert all(signed_in(c) for c in carol_sessions)
    assert UserSession.objects.count() == 2
    assert AuditEvent.objects.count() == before


def test_a_refused_token_does_not_use_up_its_jti(oidc, carol_sessions):
    jti = uuid.uuid4().hex
    assert post(logout_token(jti=jti, nonce="n")).status_code == 400
    assert post(logout_token(jti=jti)).status_code == 200


def test_the_jwks_is_cached_and_an_unknown_kid_refetches_it_at_most_now_and_then(oidc, db):
    assert post(logout_token(sid="a")).status_code == 200
    assert post(logout_token(sid="b")).status_code == 200
    assert len(oidc) == 1
    for _ in range(3):
        assert post(logout_token(kid="rotated")).status_code == 400
    assert len(oidc) == 2


def test_unreachable_idp_keys_answer_503(oidc, carol_sessions, monkeypatch):
    def down():
        raise backchannel.IdpKeysUnavailable("the IdP's JWKS could not be fetched: refused")

    monkeypatch.setattr(backchannel, "_fetch_jwks", down)
    response = post(logout_token())
    assert response.status_code == 503
    assert response.json()["error"] == "temporarily_unavailable"
    assert all(signed_in(c) for c in carol_sessions)


def test_only_post_is_allowed(oidc, db):
    assert Client().get(URL).status_code == 405


def test_without_oidc_the_endpoint_does_not_exist(db):
    assert post(logout_token()).status_code == 404
