"""RP-initiated logout: signing out of Tollgate sends the browser to the IdP's
end_session_endpoint (OIDC_OP_LOGOUT_ENDPOINT) with the ID token as hint, when configured."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from governance.audit.models import AuditEvent
from governance.tenancy.models import UserSession

ISSUER = "https://idp.example"


@pytest.fixture
def oidc(settings):
    settings.OIDC_ENABLED = True
    settings.OIDC_RP_CLIENT_ID = "tollgate"
    settings.OIDC_OP_ISSUER = ISSUER
    settings.OIDC_OP_LOGOUT_ENDPOINT = f"{ISSUER}/session/end"


def signed_in_with_id_token(login, user):
    client = login(user)
    session = client.session
    session["oidc_id_token"] = "header.payload.signature"
    session.save()
    return client


def test_signing_out_goes_to_the_idps_end_session_endpoint(oidc, login, victor):
    client = signed_in_with_id_token(login, victor)
    response = client.post("/logout/")
    assert response.status_code == 302
    target = urlsplit(response["Location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{ISSUER}/session/end"
    assert parse_qs(target.query) == {"id_token_hint": ["header.payload.signature"],
                                      "post_logout_redirect_uri": ["http://testserver/login/"]}
    assert not UserSession.objects.filter(user=victor).exists()
    assert AuditEvent.objects.filter(action="auth.logout").exists()
    assert client.get("/t/alpha/").status_code == 302


def test_without_an_end_session_endpoint_signing_out_stays_in_tollgate(
    oidc, settings, login, victor
):
    settings.OIDC_OP_LOGOUT_ENDPOINT = ""
    response = signed_in_with_id_token(login, victor).post("/logout/")
    assert response["Location"] == "/login/"
