"""Sign-in and sign-out: local passwords only without OIDC, throttled; audit of each."""

from __future__ import annotations

import pytest
from django.test import Client

from governance.audit.models import AuditEvent
from tests.factories import UserFactory

PASSWORD = "correct horse battery staple"


@pytest.fixture
def oidc_on(settings):
    settings.OIDC_ENABLED = True
    settings.OIDC_RP_CLIENT_ID = "tollgate"
    settings.OIDC_RP_CLIENT_SECRET = "s3cret"
    settings.OIDC_OP_ISSUER = "https://idp.example"
    settings.OIDC_OP_AUTHORIZATION_ENDPOINT = "https://idp.example/auth"
    settings.OIDC_OP_TOKEN_ENDPOINT = "https://idp.example/token"
    settings.OIDC_OP_USER_ENDPOINT = "https://idp.example/me"
    settings.OIDC_OP_JWKS_ENDPOINT = "https://idp.example/jwks"
    settings.AUTHENTICATION_BACKENDS = ["governance.tenancy.oidc.TollgateOIDCBackend",
                                        "guardian.backends.ObjectPermissionBackend"]
    return settings


def test_password_login_lands_in_the_tenant_and_is_audited(client, victor, tenant_a):
    response = client.post("/login/", {"username": "victor", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/")["Location"] == "/t/alpha/"
    event = AuditEvent.objects.filter(tenant=tenant_a).order_by("-seq").first()
    assert (event.action, event.actor_label, event.after) == (
        "auth.login", "victor", {"method": "password"})
    assert event.request_id and event.ip == "127.0.0.1"


def test_login_honours_a_safe_next_only(client, victor):
    response = client.post("/login/", {"username": "victor", "password": PASSWORD,
                                       "next": "/t/alpha/tokens/"})
    assert response["Location"] == "/t/alpha/tokens/"
    client.post("/logout/")
    response = client.post("/login/", {"username": "victor", "password": PASSWORD,
                                       "next": "https://evil.example/"})
    assert response["Location"] == "/"


def test_a_wrong_password_is_a_clear_error_and_recorded(client, victor):
    response = client.post("/login/", {"username": "victor", "password": "nope"})
    assert response.status_code == 400
    assert "Please enter a correct username and password" in response.content.decode()
    event = AuditEvent.objects.filter(tenant=None, action="auth.login_failed").get()
    assert event.object_repr == "victor" and event.after == {"reason": "bad credentials"}


def test_repeated_failures_lock_the_account_from_that_address(client, victor, settings):
    settings.AXES_FAILURE_LIMIT = 3
    for _ in range(3):
        client.post("/login/", {"username": "victor", "password": "nope"})
    response = client.post("/login/", {"username": "victor", "password": PASSWORD})
    assert response.status_code == 429
    assert "Too many failed sign-ins" in response.content.decode()
    # Another address is not locked out by this one's failures.
    other = Client(REMOTE_ADDR="10.0.0.9")
    assert other.post("/login/", {"username": "victor", "password": PASSWORD}).status_code == 302


def test_logout_needs_post_and_ends_the_session(client, victor, tenant_a):
    client.post("/login/", {"username": "victor", "password": PASSWORD})
    assert client.get("/logout/").status_code == 405
    response = client.post("/logout/")
    assert response.status_code == 302 and response["Location"] == "/login/"
    assert client.get("/t/alpha/")["Location"].startswith("/login/")
    assert AuditEvent.objects.filter(tenant=tenant_a, action="auth.logout").exists()


def test_user_without_tenants_login_is_recorded_on_the_platform_chain(client, db):
    UserFactory(username="loner")
    client.post("/login/", {"username": "loner", "password": PASSWORD})
    assert AuditEvent.objects.filter(tenant=None, action="auth.login",
                                     actor_label="loner").exists()


def test_with_oidc_the_password_form_is_gone(client, oidc_on, victor):
    page = client.get("/login/").content.decode()
    assert 'id="sso-login"' in page
    assert 'type="password"' not in page
    assert client.post("/login/", {"username": "victor", "password": PASSWORD}
                       ).status_code == 405
    # Nor can the password backend be reached any other way.
    from django.contrib.auth import authenticate

    assert authenticate(username="victor", password=PASSWORD) is None


def test_sso_button_starts_pkce_with_the_groups_scope(client, oidc_on, db):
    response = client.get("/oidc/authenticate/?next=/t/alpha/")
    assert response.status_code == 302
    location = response["Location"]
    assert location.startswith("https://idp.example/auth?")
    assert "code_challenge_method=S256" in location and "code_challenge=" in location
    assert "scope=openid+email+profile+groups" in location


def test_sso_failure_says_so(client, oidc_on, db):
    assert "did not complete" in client.get("/login/?error=sso").content.decode()


def test_oidc_urls_are_404_without_oidc(client, db):
    assert client.get("/oidc/authenticate/").status_code == 404
    assert client.get("/oidc/callback/?code=x&state=y").status_code == 404


def test_pages_carry_security_headers(client, db):
    response = client.get("/login/")
    csp = response["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert len(response["X-Request-ID"]) == 32


def test_a_well_formed_request_id_is_kept_and_audited(client, victor, tenant_a):
    client.post("/login/", {"username": "victor", "password": PASSWORD},
                HTTP_X_REQUEST_ID="req-12345678")
    event = AuditEvent.objects.filter(tenant=tenant_a, action="auth.login").get()
    assert event.request_id == "req-12345678"
