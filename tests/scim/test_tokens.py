"""SCIM tokens: created and revoked by admins in the web UI and the admin API, hashed at rest,
shown once, audited; 403 for other roles and service tokens, 404 for other tenants."""

from __future__ import annotations

import re

import pytest

from governance.audit.models import AuditEvent
from governance.tenancy.models import hash_token
from governance.tenancy.roles import Role
from scim.models import ScimToken
from tests.factories import make_token
from tests.scim.conftest import ScimClient


def _actions(tenant) -> list[str]:
    return list(AuditEvent.objects.filter(tenant=tenant, action__startswith="scim_token.")
                .order_by("seq").values_list("action", flat=True))


def test_an_admin_creates_a_token_in_the_web_ui_and_sees_it_once(login, alice, tenant_a):
    client = login(alice)
    response = client.post("/t/alpha/identity/scim/", {"name": "Okta production"})
    assert response.status_code == 303
    page = client.get("/t/alpha/identity/scim/").content.decode()
    plaintext = re.search(r'id="token-value">(tgscim_[^<]+)<', page).group(1)
    token = ScimToken.objects.get(tenant=tenant_a)
    assert token.token_hash == hash_token(plaintext) and plaintext not in str(token.__dict__)
    assert "/scim/v2/alpha" in page
    again = client.get("/t/alpha/identity/scim/").content.decode()
    assert plaintext not in again and token.prefix in again
    assert _actions(tenant_a) == ["scim_token.created"]
    assert ScimClient("alpha", plaintext).get("/Users").status_code == 200


def test_a_nameless_token_is_refused_with_a_field_error(login, alice, tenant_a):
    response = login(alice).post("/t/alpha/identity/scim/", {"name": "  "})
    assert response.status_code == 400
    assert "This field is required." in response.content.decode()
    assert not ScimToken.objects.exists()


def test_revoking_in_the_web_ui_makes_the_token_answer_401(login, alice, tenant_a, scim_token,
                                                           scim):
    token, _ = scim_token
    client = login(alice)
    assert client.get(f"/t/alpha/identity/scim/tokens/{token.pk}/revoke/").status_code == 200
    response = client.post(f"/t/alpha/identity/scim/tokens/{token.pk}/revoke/")
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert _actions(tenant_a) == ["scim_token.created", "scim_token.revoked"]
    answer = scim.get("/Users")
    assert answer.status_code == 401
    assert answer.body["detail"] == "This SCIM token was revoked."


@pytest.mark.parametrize("name", ["bob", "audrey", "dave", "victor"])
def test_other_roles_get_403_on_the_page(login, cast, name, scim_token):
    token, _ = scim_token
    client = login(cast[name])
    assert client.get("/t/alpha/identity/scim/").status_code == 403
    assert client.post("/t/alpha/identity/scim/", {"name": "x"}).status_code == 403
    assert client.post(f"/t/alpha/identity/scim/tokens/{token.pk}/revoke/").status_code == 403
    assert ScimToken.objects.count() == 1


def test_an_outsider_gets_404(login, cast, scim_token):
    token, _ = scim_token
    client = login(cast["oscar"])
    assert client.get("/t/alpha/identity/scim/").status_code == 404
    assert client.post(f"/t/alpha/identity/scim/tokens/{token.pk}/revoke/").status_code == 404
    # Under their own tenant, tenant A's token is not found either.
    assert client.post(f"/t/bravo/identity/scim/tokens/{token.pk}/revoke/").status_code == 404


def test_the_api_creates_lists_and_revokes(admin, tenant_a):
    response = admin.post("/api/v1/t/alpha/scim-tokens/", {"name": "Entra"}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["token"].startswith("tgscim_") and body["endpoint"].endswith("/scim/v2/alpha")
    assert response["Cache-Control"] == "no-store"
    listed = admin.get("/api/v1/t/alpha/scim-tokens/").json()["results"]
    assert [t["name"] for t in listed] == ["Entra"] and "token" not in listed[0]
    assert admin.delete(f"/api/v1/t/alpha/scim-tokens/{body['id']}/").status_code == 204
    assert admin.get(f"/api/v1/t/alpha/scim-tokens/{body['id']}/").json()["active"] is False
    assert _actions(tenant_a) == ["scim_token.created", "scim_token.revoked"]


def test_the_api_refuses_a_bad_name_and_stores_nothing(admin):
    response = admin.post("/api/v1/t/alpha/scim-tokens/", {"name": ""}, format="json")
    assert response.status_code == 400
    assert not ScimToken.objects.exists()


def test_the_api_is_403_for_other_roles_and_service_tokens(as_user, api, cast, tenant_a):
    for name in ("bob", "audrey", "dave", "victor"):
        response = as_user(cast[name]).post("/api/v1/t/alpha/scim-tokens/", {"name": "x"},
                                            format="json")
        assert response.status_code == 403, name
    _, service = make_token(tenant_a, user=cast["alice"], kind="service", role=Role.ADMIN)
    assert api(service).get("/api/v1/t/alpha/scim-tokens/").status_code == 403
    assert not ScimToken.objects.exists()


def test_the_first_use_is_audited_and_last_used_recorded(scim, scim_token, tenant_a):
    token, _ = scim_token
    assert scim.get("/Users").status_code == 200
    assert scim.get("/Groups").status_code == 200
    token.refresh_from_db()
    assert token.last_used_at is not None
    assert _actions(tenant_a) == ["scim_token.created", "scim_token.first_used"]
