"""Refused single sign-ins (a replayed or forged code, a used state, an ID token naming no key)
land on the sign-in error page with a 4xx and log one WARNING line: never a 500, never a
traceback that any anonymous visitor could cause.

The code and state come from the real test IdP (``node tests/idp/server.js``, oidc-provider):
the test walks its login form over HTTP and stops at the redirect back to Tollgate, whose
callback it then calls with Django's test client (which reaches the IdP's token endpoint itself).
The ID token without ``kid`` comes from a token endpoint served by the test, since a real
provider always names its key.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urljoin, urlsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from governance.tenancy.models import ExternalIdentity
from tests.e2e_support import TestIdp, require_e2e_tools

CLIENT_ID = "tollgate-refusals"
CLIENT_SECRET = "refusals-client-secret-not-for-production"
CALLBACK = "http://testserver/oidc/callback/"
HTTP_TIMEOUT = 30


def configure(settings, issuer: str, *, token_endpoint: str = "", jwks: str = "") -> None:
    settings.OIDC_ENABLED = True
    settings.OIDC_RP_CLIENT_ID = CLIENT_ID
    settings.OIDC_RP_CLIENT_SECRET = CLIENT_SECRET
    settings.OIDC_OP_ISSUER = issuer
    settings.OIDC_OP_AUTHORIZATION_ENDPOINT = f"{issuer}/auth"
    settings.OIDC_OP_TOKEN_ENDPOINT = token_endpoint or f"{issuer}/token"
    settings.OIDC_OP_USER_ENDPOINT = f"{issuer}/me"
    settings.OIDC_OP_JWKS_ENDPOINT = jwks or f"{issuer}/jwks"
    settings.AUTHENTICATION_BACKENDS = ["governance.tenancy.oidc.TollgateOIDCBackend",
                                        "guardian.backends.ObjectPermissionBackend"]


@pytest.fixture
def idp(tmp_path, settings) -> Iterator[TestIdp]:
    require_e2e_tools()
    server = TestIdp(workdir=tmp_path, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                     redirect_uris=[CALLBACK], post_logout_redirect_uris=[])
    server.start()
    server.set_users({"carol": {"sub": "carol-sub-1", "email": "carol@example.com",
                                "name": "Carol", "groups": [], "password": "pw"}})
    configure(settings, server.issuer)
    try:
        yield server
    finally:
        server.stop()


def start_sign_in(client) -> str:
    """Press "Sign in": the authorization URL this session's state and PKCE belong to."""
    response = client.get("/oidc/authenticate/?next=/")
    assert response.status_code == 302
    return response["Location"]


def idp_sign_in(authorize_url: str, idp: TestIdp) -> str:
    """Sign carol in at the IdP; the callback URL it sends the browser back to (not followed)."""
    browser = requests.Session()
    url = authorize_url
    for _ in range(10):
        response = browser.get(url, allow_redirects=False, timeout=HTTP_TIMEOUT)
        if response.status_code == 200 and "/interaction/" in url:
            response = browser.post(url, data={"prompt": "login", "login": "carol",
                                               "password": "pw"},
                                    allow_redirects=False, timeout=HTTP_TIMEOUT)
        assert response.is_redirect, (response.status_code, response.text, idp.stderr())
        url = urljoin(url, response.headers["Location"])
        if url.startswith(CALLBACK):
            return url
    raise AssertionError(f"the IdP never sent the browser back; last at {url}\n{idp.stderr()}")


def callback(client, url: str):
    parts = urlsplit(url)
    return client.get(parts.path + "?" + parts.query)


def expect_refused(response, caplog, reason: str) -> None:
    """The sign-in error page, 400, and exactly one log line at WARNING or above: the reason."""
    assert response.status_code == 400
    assert "did not complete" in response.content.decode()
    assert 'id="sso-login"' in response.content.decode()  # try again from here
    lines = [(r.name, r.levelname, r.getMessage(), r.exc_info) for r in caplog.records
             if r.levelno >= logging.WARNING]
    assert lines == [("governance.tenancy.oidc", "WARNING",
                      f"OIDC sign-in refused: {reason}", None)]


@pytest.mark.e2e
def test_a_sign_in_through_the_idp_works(idp, client, db):
    response = callback(client, idp_sign_in(start_sign_in(client), idp))
    assert response.status_code == 302 and response["Location"] == "/"
    assert ExternalIdentity.objects.filter(subject="carol-sub-1").exists()


@pytest.mark.e2e
def test_a_replayed_code_is_refused_with_one_warning(idp, client, db, caplog):
    used = idp_sign_in(start_sign_in(client), idp)
    assert callback(client, used).status_code == 302
    client.logout()

    # The attacker replays the code under a state of their own, so it reaches the IdP.
    state = parse_qs(urlsplit(start_sign_in(client)).query)["state"][0]
    code = parse_qs(urlsplit(used).query)["code"][0]
    caplog.clear()
    caplog.set_level(logging.INFO)
    response = client.get("/oidc/callback/", {"code": code, "state": state})
    expect_refused(response, caplog, "the token endpoint refused the code "
                                     "(invalid_grant: grant request is invalid)")
    assert "_auth_user_id" not in client.session


@pytest.mark.e2e
def test_a_forged_code_is_refused_with_one_warning(idp, client, db, caplog):
    state = parse_qs(urlsplit(start_sign_in(client)).query)["state"][0]
    caplog.set_level(logging.INFO)
    response = client.get("/oidc/callback/", {"code": "forged-code", "state": state})
    expect_refused(response, caplog, "the token endpoint refused the code "
                                     "(invalid_grant: grant request is invalid)")


@pytest.mark.e2e
def test_a_callback_whose_state_was_used_is_refused_with_one_warning(idp, client, db, caplog):
    # The browser's back button, or a callback URL leaked from someone's history.
    used = idp_sign_in(start_sign_in(client), idp)
    assert callback(client, used).status_code == 302
    start_sign_in(client)  # the session has states, only not this one any more
    caplog.clear()
    caplog.set_level(logging.INFO)
    expect_refused(callback(client, used), caplog,
                   "OIDC callback state not found in session `oidc_states`!")


# --- An ID token that names no key -------------------------------------------------------------


@pytest.fixture
def crafted_idp(settings) -> Iterator[dict]:
    """A token endpoint answering an RS256 ID token without ``kid``; its JWKS has the key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    issuer = "https://idp.example"
    served: dict = {"issuer": issuer, "key": key}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # the JWKS
            self._json({"keys": [{**public, "kid": "k1", "alg": "RS256", "use": "sig"}]})

        def do_POST(self):  # the token endpoint
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            id_token = jwt.encode({"iss": issuer, "aud": CLIENT_ID, "sub": "mallory",
                                   "nonce": served.get("nonce")}, key, algorithm="RS256")
            assert "kid" not in jwt.get_unverified_header(id_token)
            self._json({"id_token": id_token, "access_token": "a", "token_type": "Bearer"})

        def _json(self, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    configure(settings, issuer, token_endpoint=f"{base}/token", jwks=f"{base}/jwks")
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=HTTP_TIMEOUT)


def test_an_id_token_without_kid_is_refused_with_one_warning(crafted_idp, client, db, caplog):
    query = parse_qs(urlsplit(start_sign_in(client)).query)
    crafted_idp["nonce"] = query["nonce"][0]  # all else right: only the kid is missing
    caplog.set_level(logging.INFO)
    response = client.get("/oidc/callback/", {"code": "any", "state": query["state"][0]})
    expect_refused(response, caplog,
                   "the ID token was refused: the ID token names no signing key (no kid)")
    assert "_auth_user_id" not in client.session


def test_an_idp_that_cannot_be_reached_is_one_error_line_and_the_sign_in_page(
        client, db, caplog, settings):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    configure(settings, "https://idp.example", token_endpoint=f"{closed}/token")
    state = parse_qs(urlsplit(start_sign_in(client)).query)["state"][0]
    caplog.set_level(logging.INFO)
    response = client.get("/oidc/callback/", {"code": "any", "state": state})
    assert response.status_code == 502
    assert "did not complete" in response.content.decode()
    lines = [(r.name, r.levelname, r.getMessage().split(":")[0], r.exc_info)
             for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines == [("governance.tenancy.oidc", "ERROR", "OIDC sign-in refused", None)]
    refused = [r.getMessage() for r in caplog.records if r.name == "governance.tenancy.oidc"]
    assert refused[0].startswith("OIDC sign-in refused: the identity provider could not be "
                                 "reached: ")
