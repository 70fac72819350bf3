"""Issue 17 point 4: a token never outlives the person who made it.

Service tokens never administer identity (members, invitations, IdP group mappings, API tokens)
whatever their role; removing or demoting a member revokes the service tokens they created that
carry a role above what they now hold, in the same transaction, audited. Personal tokens and
sessions administer identity as before.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from governance.audit.models import AuditEvent
from governance.audit.services import Actor
from governance.tenancy import services
from governance.tenancy.models import ApiToken, Membership
from governance.tenancy.roles import Role
from tests.factories import MembershipFactory, UserFactory, make_token

SERVICE_403 = ("A service token cannot administer members, invitations, group mappings or "
               "tokens; sign in as a person (or use a personal token).")


def _expiry() -> str:
    return (timezone.now() + timedelta(days=10)).isoformat()


@pytest.fixture
def mallory(tenant_a, alice):
    """A second admin of tenant A (alice stays, so mallory can be removed)."""
    return MembershipFactory(tenant=tenant_a, user=UserFactory(username="mallory"),
                             role=Role.ADMIN).user


def _mint_service_token(api, token_for, user, tenant, role="admin", name="automation"):
    """As the issue did it: an admin mints a service token through the API."""
    response = api(token_for(user, tenant)).post(
        "/api/v1/t/alpha/tokens/",
        {"name": name, "kind": "service", "role": role, "expires_at": _expiry()},
        format="json")
    assert response.status_code == 201, response.json()
    return ApiToken.objects.get(pk=response.json()["id"]), response.json()["token"]


def test_a_removed_admins_service_token_can_neither_list_members_nor_mint_nor_re_add(
        api, token_for, alice, mallory, tenant_a):
    token, plaintext = _mint_service_token(api, token_for, mallory, tenant_a)
    mallory_membership = Membership.objects.get(tenant=tenant_a, user=mallory)
    assert api(token_for(alice, tenant_a)).delete(
        f"/api/v1/t/alpha/members/{mallory_membership.pk}/").status_code == 204

    service = api(plaintext)
    listing = service.get("/api/v1/t/alpha/members/")
    assert listing.status_code == 401
    assert listing.json()["message"] == "This token has been revoked."
    minted = service.post("/api/v1/t/alpha/tokens/", {
        "name": "again", "kind": "service", "role": "admin", "expires_at": _expiry()},
        format="json")
    assert minted.status_code == 401
    re_added = service.post("/api/v1/t/alpha/invitations/",
                            {"email": "mallory@example.com", "role": "admin"}, format="json")
    assert re_added.status_code == 401
    assert not Membership.objects.filter(tenant=tenant_a, user=mallory).exists()
    # Nothing was minted: mallory's personal token, alice's and the revoked service token.
    assert ApiToken.objects.filter(tenant=tenant_a, kind="service").get() == token
    assert ApiToken.objects.filter(tenant=tenant_a).count() == 3
    # Revoked in the removal's own request and transaction, after it, saying why.
    events = list(AuditEvent.objects.filter(tenant=tenant_a).order_by("-seq")[:3])
    assert [e.action for e in events] == [
        "api_token.revoked", "api_token.revoked", "membership.deleted"]
    assert events[2].object_id == str(mallory_membership.pk)
    assert events[1].after["reason"] == "membership removed"  # her personal token
    assert (events[0].object_id, events[0].after) == (str(token.pk), {
        "prefix": token.prefix, "reason": "its creator was removed from the tenant"})
    assert events[0].request_id == events[2].request_id != ""


def test_demoting_a_member_revokes_the_service_tokens_they_made_above_their_new_role(
        api, token_for, alice, mallory, tenant_a):
    admin_token, admin_plaintext = _mint_service_token(api, token_for, mallory, tenant_a)
    viewer_token, viewer_plaintext = _mint_service_token(
        api, token_for, mallory, tenant_a, role="viewer", name="dashboard")
    alices_token, _ = make_token(tenant_a, user=alice, kind="service", role=Role.ADMIN,
                                 name="alice's")
    membership = Membership.objects.get(tenant=tenant_a, user=mallory)
    response = api(token_for(alice, tenant_a)).patch(
        f"/api/v1/t/alpha/members/{membership.pk}/", {"role": "approver"}, format="json")
    assert response.status_code == 200

    assert api(admin_plaintext).get("/api/v1/t/alpha/servers/").status_code == 401
    assert api(viewer_plaintext).get("/api/v1/t/alpha/servers/").status_code == 200
    for token in (admin_token, viewer_token, alices_token):
        token.refresh_from_db()
    assert admin_token.state == "revoked"
    assert viewer_token.state == "active" and alices_token.state == "active"
    revoked = AuditEvent.objects.get(tenant=tenant_a, action="api_token.revoked",
                                     object_id=str(admin_token.pk))
    assert revoked.after["reason"] == "its creator's role was lowered"


def test_the_idp_removing_a_member_revokes_their_service_tokens(tenant_a, alice):
    services.group_mapping_create(tenant=tenant_a, actor=Actor.system("test"), group="ops",
                                  role=Role.ADMIN)
    user = services.identity_login(issuer="https://idp.example", subject="s-1", username="ivy",
                                   email="", full_name="", groups=["ops"])
    token, _ = make_token(tenant_a, user=user, kind="service", role=Role.ADMIN)
    services.identity_login(issuer="https://idp.example", subject="s-1", username="ivy",
                            email="", full_name="", groups=[])
    token.refresh_from_db()
    assert token.state == "revoked"


IDENTITY_CALLS = [
    ("get", "/api/v1/t/alpha/members/", None),
    ("patch", "/api/v1/t/alpha/members/{member}/", {"role": "admin"}),
    ("delete", "/api/v1/t/alpha/members/{member}/", None),
    ("get", "/api/v1/t/alpha/invitations/", None),
    ("post", "/api/v1/t/alpha/invitations/", {"email": "new@example.com", "role": "admin"}),
    ("get", "/api/v1/t/alpha/group-mappings/", None),
    ("post", "/api/v1/t/alpha/group-mappings/", {"group": "ops", "role": "admin"}),
    ("get", "/api/v1/t/alpha/tokens/", None),
    ("get", "/api/v1/t/alpha/tokens/{token}/", None),
    ("delete", "/api/v1/t/alpha/tokens/{token}/", None),
    ("post", "/api/v1/t/alpha/tokens/", {"name": "x", "kind": "service", "role": "admin"}),
]


@pytest.mark.parametrize("role", list(Role))
def test_a_service_token_of_any_role_gets_403_on_identity_endpoints(
        api, alice, victor, tenant_a, role):
    token, plaintext = make_token(tenant_a, user=alice, kind="service", role=role)
    other, _ = make_token(tenant_a, user=alice, kind="service", role=Role.VIEWER, name="o")
    member = Membership.objects.get(tenant=tenant_a, user=victor)
    client = api(plaintext)
    for method, path, body in IDENTITY_CALLS:
        if body is not None and "kind" in body:
            body = body | {"expires_at": _expiry()}
        url = path.format(member=member.pk, token=other.pk)
        response = getattr(client, method)(url, body, format="json")
        assert response.status_code == 403, (method, url, response.status_code)
        assert response.json() == {"code": "permission_denied", "message": SERVICE_403}
    assert Membership.objects.get(pk=member.pk).role == Role.VIEWER
    assert ApiToken.objects.filter(tenant=tenant_a).count() == 2
    other.refresh_from_db()
    assert other.state == "active"


def test_an_admin_service_token_still_does_the_rest_of_an_admins_work(api, alice, tenant_a):
    _, plaintext = make_token(tenant_a, user=alice, kind="service", role=Role.ADMIN)
    assert api(plaintext).get("/api/v1/t/alpha/servers/").status_code == 200
    assert api(plaintext).get("/api/v1/t/alpha/audit-events/").status_code == 200


def test_personal_tokens_and_sessions_still_administer_identity(
        api, token_for, login, alice, tenant_a):
    personal = api(token_for(alice, tenant_a))
    assert personal.get("/api/v1/t/alpha/members/").status_code == 200
    assert personal.get("/api/v1/t/alpha/tokens/").status_code == 200
    assert personal.post("/api/v1/t/alpha/invitations/",
                         {"email": "new@example.com", "role": "viewer"},
                         format="json").status_code == 201
    created = personal.post("/api/v1/t/alpha/tokens/", {
        "name": "ci", "kind": "service", "role": "admin", "expires_at": _expiry()},
        format="json")
    assert created.status_code == 201
    assert ApiToken.objects.get(pk=created.json()["id"]).created_by == alice
    session = login(alice)
    assert session.get("/api/v1/t/alpha/group-mappings/").status_code == 200
    assert session.get("/t/alpha/members/").status_code == 200
