"""REST API: bearer tokens (personal and service), members, group mappings, tokens, audit."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from governance.audit.models import AuditEvent
from governance.audit.services import Actor
from governance.tenancy import services
from governance.tenancy.models import ApiToken, IdpGroupMapping, Membership
from governance.tenancy.roles import Role
from tests.factories import UserFactory, make_token

# --- Bearer authentication -------------------------------------------------------------------


def test_a_valid_token_authenticates(api, token_for, victor, tenant_a):
    response = api(token_for(victor, tenant_a)).get("/api/v1/me/")
    assert response.status_code == 200
    assert response.json()["principal"] == "victor"
    assert response.json()["tenants"] == [{"slug": "alpha", "role": "viewer"}]


def test_no_or_unknown_token_is_401_with_a_json_error(api, db):
    response = api().get("/api/v1/me/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="tollgate"'
    assert response.json()["code"] == "not_authenticated"
    response = api("tgp_not-a-real-token").get("/api/v1/me/")
    assert response.status_code == 401
    assert response.json() == {"code": "authentication_failed", "message": "Invalid token."}


def test_a_revoked_token_is_refused(api, alice, tenant_a):
    token, plaintext = make_token(tenant_a, user=alice, role=Role.ADMIN)
    services.api_token_revoke(tenant=tenant_a, actor=Actor.user(alice), token=token)
    response = api(plaintext).get("/api/v1/t/alpha/members/")
    assert response.status_code == 401
    assert response.json()["message"] == "This token has been revoked."


def test_an_expired_token_is_refused(api, alice, tenant_a):
    token, plaintext = make_token(tenant_a, user=alice, role=Role.ADMIN)
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = api(plaintext).get("/api/v1/t/alpha/members/")
    assert response.status_code == 401
    assert response.json()["message"] == "This token has expired."


def test_a_token_never_exceeds_its_owners_current_role(api, alice, tenant_a):
    second = UserFactory(username="second-admin")
    services.membership_create(tenant=tenant_a, actor=Actor.system(), user=second,
                               role=Role.ADMIN)
    token, plaintext = make_token(tenant_a, user=second, role=Role.ADMIN)
    # Demote behind the token's back (as a direct change would): the token stops working.
    Membership.objects.filter(tenant=tenant_a, user=second).update(role=Role.VIEWER)
    response = api(plaintext).get("/api/v1/t/alpha/members/")
    assert response.status_code == 401
    assert "exceeds its owner's current role" in response.json()["message"]


def test_a_token_acts_with_its_own_role_not_the_owners(api, alice, tenant_a):
    _, plaintext = make_token(tenant_a, user=alice, role=Role.VIEWER)
    response = api(plaintext).get("/api/v1/t/alpha/members/")
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"


def test_a_token_only_opens_its_own_tenant(api, token_for, alice, tenant_a, tenant_b):
    services.membership_create(tenant=tenant_b, actor=Actor.system(), user=alice,
                               role=Role.ADMIN)
    plaintext = token_for(alice, tenant_a)
    assert api(plaintext).get("/api/v1/t/alpha/members/").status_code == 200
    assert api(plaintext).get("/api/v1/t/bravo/members/").status_code == 404


def test_service_tokens_act_as_themselves(api, alice, tenant_a):
    _, plaintext = make_token(tenant_a, kind="service", role=Role.AUDITOR, name="siem")
    response = api(plaintext).get("/api/v1/t/alpha/audit-events/")
    assert response.status_code == 200
    assert api(plaintext).get("/api/v1/t/alpha/members/").status_code == 403
    me = api(plaintext).get("/api/v1/me/").json()
    assert me["principal"] == "service:siem"


def test_last_used_is_recorded(api, victor, tenant_a):
    token, plaintext = make_token(tenant_a, user=victor)
    api(plaintext).get("/api/v1/me/")
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_session_users_can_use_the_api_too(login, alice):
    response = login(alice).get("/api/v1/t/alpha/members/")
    assert response.status_code == 200


# --- Members ----------------------------------------------------------------------------------


def test_members_crud(api, token_for, alice, victor, tenant_a):
    client = api(token_for(alice, tenant_a))
    listing = client.get("/api/v1/t/alpha/members/").json()
    assert [m["username"] for m in listing["results"]] == ["alice", "victor"]
    # Nobody is added by login any more (that answered for every user of the installation):
    # people join by invitation (tests/governance/test_invitations.py).
    refused = client.post("/api/v1/t/alpha/members/", {"login": "victor", "role": "developer"},
                          format="json")
    assert refused.status_code == 405
    pk = services.membership_create(tenant=tenant_a, actor=Actor.system("test"),
                                    user=UserFactory(username="zed"), role="developer").pk
    changed = client.patch(f"/api/v1/t/alpha/members/{pk}/", {"role": "auditor"},
                           format="json")
    assert changed.json()["role"] == "auditor"
    assert client.delete(f"/api/v1/t/alpha/members/{pk}/").status_code == 204
    actions = list(AuditEvent.objects.filter(tenant=tenant_a).order_by("-seq")
                   .values_list("action", "actor_type")[:3])
    assert actions == [("membership.deleted", "token"), ("membership.role_changed", "token"),
                       ("membership.created", "system")]


def test_member_errors_are_json_with_the_field(api, token_for, alice, tenant_a):
    client = api(token_for(alice, tenant_a))
    me = Membership.objects.get(tenant=tenant_a, user=alice)
    response = client.patch(f"/api/v1/t/alpha/members/{me.pk}/", {"role": "boss"},
                            format="json")
    assert response.status_code == 400
    assert response.json() == {
        "code": "invalid",
        "message": '"boss" is not a valid choice.',
        "errors": {"role": ['"boss" is not a valid choice.']},
    }
    response = client.delete(f"/api/v1/t/alpha/members/{me.pk}/")
    assert response.status_code == 400
    assert "last admin" in response.json()["message"]


# --- Group mappings ------------------------------------------------------------------------


def test_group_mappings_crud(api, token_for, alice, tenant_a):
    client = api(token_for(alice, tenant_a))
    created = client.post("/api/v1/t/alpha/group-mappings/", {"group": "ops", "role": "viewer"},
                          format="json")
    assert created.status_code == 201
    pk = created.json()["id"]
    assert client.patch(f"/api/v1/t/alpha/group-mappings/{pk}/", {"role": "admin"},
                        format="json").json()["role"] == "admin"
    dup = client.post("/api/v1/t/alpha/group-mappings/", {"group": "ops", "role": "viewer"},
                      format="json")
    assert dup.status_code == 400 and dup.json()["errors"]["group"]
    assert client.delete(f"/api/v1/t/alpha/group-mappings/{pk}/").status_code == 204
    assert not IdpGroupMapping.objects.filter(pk=pk).exists()


# --- Tokens ------------------------------------------------------------------------------------


def test_create_a_token_through_the_api(api, token_for, victor, tenant_a):
    client = api(token_for(victor, tenant_a))
    expires = (timezone.now() + timedelta(days=10)).isoformat()
    response = client.post("/api/v1/t/alpha/tokens/", {"name": "ci", "role": "viewer",
                                                       "expires_at": expires}, format="json")
    assert response.status_code == 201
    assert response["Cache-Control"] == "no-store"
    new = response.json()["token"]
    assert api(new).get("/api/v1/me/").status_code == 200
    listed = client.get("/api/v1/t/alpha/tokens/").json()["results"]
    assert all("token" not in t for t in listed)


def test_a_viewer_cannot_create_service_tokens(api, token_for, victor, tenant_a):
    expires = (timezone.now() + timedelta(days=10)).isoformat()
    response = api(token_for(victor, tenant_a)).post(
        "/api/v1/t/alpha/tokens/", {"name": "x", "kind": "service", "role": "viewer",
                                    "expires_at": expires}, format="json")
    assert response.status_code == 403


def test_revoke_through_the_api(api, token_for, alice, victor, tenant_a):
    token, plaintext = make_token(tenant_a, user=victor)
    assert api(token_for(victor, tenant_a)).delete(
        f"/api/v1/t/alpha/tokens/{token.pk}/").status_code == 204
    assert api(plaintext).get("/api/v1/me/").status_code == 401


def test_others_tokens_are_invisible_without_the_capability(api, token_for, alice, victor,
                                                           tenant_a):
    token, _ = make_token(tenant_a, user=alice, role=Role.ADMIN)
    client = api(token_for(victor, tenant_a))
    assert client.get(f"/api/v1/t/alpha/tokens/{token.pk}/").status_code == 404
    assert client.delete(f"/api/v1/t/alpha/tokens/{token.pk}/").status_code == 404


# --- Audit -------------------------------------------------------------------------------------


def test_audit_events_api_filters(api, token_for, audrey, tenant_a):
    client = api(token_for(audrey, tenant_a))
    body = client.get("/api/v1/t/alpha/audit-events/?action=membership.").json()
    assert body["count"] >= 1
    assert {e["action"] for e in body["results"]} == {"membership.created"}
    assert client.get("/api/v1/t/alpha/audit-events/?since=nope").status_code == 400


def test_schema_is_served(api, token_for, alice, tenant_a):
    response = api(token_for(alice, tenant_a)).get("/api/v1/schema/")
    assert response.status_code == 200
    assert b"/api/v1/t/{tenant_slug}/members/" in response.content
    assert b"/api/v1/t/{tenant_slug}/invitations/{id}/" in response.content


def test_unknown_api_paths_are_json_404(client, db):
    response = client.get("/api/v1/nope/")
    assert response.status_code == 404
    assert response.json() == {"code": "not_found", "message": "Not found."}
    assert client.get("/nope/")["Content-Type"].startswith("text/html")


def test_the_openapi_schema_validates_without_warnings(tmp_path):
    from django.core.management import call_command

    call_command("spectacular", "--validate", "--fail-on-warn", "--file",
                 str(tmp_path / "schema.yml"))
    assert "/api/v1/t/{tenant_slug}/audit-events/" in (tmp_path / "schema.yml").read_text()


# --- Unknown fields ----------------------------------------------------------------------------


def _unknown(field: str, takes: str) -> dict:
    """The error every API endpoint answers a body field it does not take with (TenantViewSet
    .parse(), as the registry endpoints: tests/registry/test_registry_api.py)."""
    message = f"Unknown field; this takes {takes}."
    return {"code": "invalid", "message": message, "errors": {field: [message]}}


def test_changing_a_role_refuses_a_field_it_does_not_take(api, token_for, alice, tenant_a):
    client = api(token_for(alice, tenant_a))
    pk = services.membership_create(tenant=tenant_a, actor=Actor.system("test"),
                                    user=UserFactory(username="zed"), role="developer").pk
    response = client.patch(f"/api/v1/t/alpha/members/{pk}/",
                            {"role": "auditor", "user": "alice"}, format="json")
    assert response.status_code == 400
    assert response.json() == _unknown("user", "role")
    assert Membership.objects.get(pk=pk).role == "developer"
    assert not AuditEvent.objects.filter(action="membership.role_changed").exists()


def test_group_mappings_refuse_fields_they_do_not_take(api, token_for, alice, tenant_a):
    client = api(token_for(alice, tenant_a))
    response = client.post("/api/v1/t/alpha/group-mappings/",
                           {"group": "ops", "role": "viewer", "tenant": "bravo"}, format="json")
    assert response.status_code == 400
    assert response.json() == _unknown("tenant", "group, role")
    assert not IdpGroupMapping.objects.exists()
    mapping = services.group_mapping_create(tenant=tenant_a, actor=Actor.system("test"),
                                            group="ops", role="viewer")
    response = client.patch(f"/api/v1/t/alpha/group-mappings/{mapping.pk}/",
                            {"role": "admin", "group": "everyone"}, format="json")
    assert response.status_code == 400
    assert response.json() == _unknown("group", "role")
    mapping.refresh_from_db()
    assert (mapping.group, mapping.role) == ("ops", "viewer")


def test_creating_a_token_refuses_a_field_it_does_not_take(api, token_for, victor, tenant_a):
    client = api(token_for(victor, tenant_a))
    before = ApiToken.objects.count()
    expires = (timezone.now() + timedelta(days=10)).isoformat()
    response = client.post("/api/v1/t/alpha/tokens/", {
        "name": "ci", "role": "viewer", "expires_at": expires, "owner": "alice",
    }, format="json")
    assert response.status_code == 400
    assert response.json() == _unknown("owner", "name, kind, role, expires_at")
    assert ApiToken.objects.count() == before
