"""What SCIM does to access: groups give roles through the tenant's IdP group mappings;
deactivating or deleting a user ends their sessions and personal tokens in the same request
(audited); reactivating restores the membership from their groups."""

from __future__ import annotations

import pytest

from governance.audit.models import AuditEvent
from governance.tenancy.models import ExternalIdentity, Membership
from governance.tenancy.roles import Role
from tests.factories import GroupMappingFactory, MembershipFactory, UserFactory, make_token
from tests.scim.conftest import group_body, patch_body, user_body


@pytest.fixture
def barbara(settings, db):
    """A person who already signed in through OIDC once (the (issuer, subject) SCIM matches)."""
    person = UserFactory(username="barbara")
    ExternalIdentity.objects.create(user=person, issuer=settings.SCIM_IDENTITY_ISSUER,
                                    subject="00u1")
    return person


@pytest.fixture
def provisioned(scim, tenant_a, barbara):
    """barbara provisioned by SCIM and put in the group mapped to developer."""
    GroupMappingFactory(tenant=tenant_a, group="tollgate-developers", role=Role.DEVELOPER)
    user_id = scim.post("/Users", user_body("barbara@example.com", "00u1")).body["id"]
    group_id = scim.post("/Groups", group_body("tollgate-developers", user_id)).body["id"]
    return user_id, group_id


def _membership(tenant, user) -> Membership | None:
    return Membership.objects.for_tenant(tenant).filter(user=user).first()


def _actions_since(tenant, seq: int) -> list[str]:
    return list(AuditEvent.objects.filter(tenant=tenant, seq__gt=seq).order_by("seq")
                .values_list("action", flat=True))


def _last_seq(tenant) -> int:
    return AuditEvent.objects.filter(tenant=tenant).order_by("-seq").values_list(
        "seq", flat=True).first() or 0


def test_a_mapped_group_gives_the_role_with_source_scim(provisioned, tenant_a, barbara):
    membership = _membership(tenant_a, barbara)
    assert membership.role == Role.DEVELOPER
    assert membership.source == Membership.Source.SCIM
    assert membership.last_confirmed_at is not None


def test_the_strongest_mapped_group_wins_and_leaving_it_lowers_the_role(
        scim, provisioned, tenant_a, barbara):
    user_id, _ = provisioned
    GroupMappingFactory(tenant=tenant_a, group="tollgate-approvers", role=Role.APPROVER)
    approvers = scim.post("/Groups", group_body("tollgate-approvers", user_id)).body["id"]
    assert _membership(tenant_a, barbara).role == Role.APPROVER
    scim.patch(f"/Groups/{approvers}", patch_body(
        {"op": "remove", "path": f'members[value eq "{user_id}"]'}))
    assert _membership(tenant_a, barbara).role == Role.DEVELOPER


def test_a_group_without_mapping_gives_nothing_and_removing_the_last_group_removes_access(
        scim, provisioned, tenant_a, barbara):
    user_id, group_id = provisioned
    scim.post("/Groups", group_body("unmapped", user_id))
    assert _membership(tenant_a, barbara).role == Role.DEVELOPER
    scim.delete(f"/Groups/{group_id}")
    assert _membership(tenant_a, barbara) is None


def test_scim_never_touches_a_membership_an_admin_made(scim, tenant_a, barbara):
    MembershipFactory(tenant=tenant_a, user=barbara, role=Role.AUDITOR)
    GroupMappingFactory(tenant=tenant_a, group="tollgate-developers", role=Role.DEVELOPER)
    user_id = scim.post("/Users", user_body("barbara@example.com", "00u1")).body["id"]
    scim.post("/Groups", group_body("tollgate-developers", user_id))
    assert _membership(tenant_a, barbara).role == Role.AUDITOR
    assert _membership(tenant_a, barbara).source == Membership.Source.MANUAL


def test_deactivation_ends_the_session_and_the_personal_token_in_the_same_request(
        scim, provisioned, tenant_a, barbara, login, api):
    user_id, _ = provisioned
    browser = login(barbara)
    assert browser.get("/t/alpha/").status_code == 200
    _, plaintext = make_token(tenant_a, user=barbara, role=Role.DEVELOPER)
    assert api(plaintext).get("/api/v1/t/alpha/servers/").status_code == 200
    seq = _last_seq(tenant_a)

    # Okta's deactivation (a path-less replace).
    response = scim.patch(f"/Users/{user_id}", patch_body(
        {"op": "replace", "value": {"active": False}}))
    assert response.status_code == 200 and response.body["active"] is False

    after = browser.get("/t/alpha/")
    assert after.status_code == 302 and after["Location"].startswith("/login/")
    assert api(plaintext).get("/api/v1/t/alpha/servers/").status_code == 401
    assert _membership(tenant_a, barbara) is None
    actions = _actions_since(tenant_a, seq)
    assert actions[:2] == ["scim.user_updated", "scim.user_deactivated"]
    assert {"api_token.revoked", "user.access_ended", "membership.deleted"} <= set(actions)
    ended = AuditEvent.objects.get(tenant=tenant_a, action="user.access_ended", seq__gt=seq)
    assert ended.actor_label.startswith("SCIM token Okta")
    assert ended.after["sessions_ended"] == 1 and ended.after["tokens_revoked"] == 1


def test_reactivation_restores_the_membership_from_groups(scim, provisioned, tenant_a, barbara):
    user_id, _ = provisioned
    scim.patch(f"/Users/{user_id}", patch_body({"op": "replace", "path": "active",
                                                "value": False}))
    assert _membership(tenant_a, barbara) is None
    # While inactive, group changes give no access.
    GroupMappingFactory(tenant=tenant_a, group="tollgate-admins", role=Role.ADMIN)
    scim.post("/Groups", group_body("tollgate-admins", user_id))
    assert _membership(tenant_a, barbara) is None
    response = scim.patch(f"/Users/{user_id}", patch_body(
        {"op": "replace", "path": "active", "value": True}))
    assert response.body["active"] is True
    membership = _membership(tenant_a, barbara)
    assert membership.role == Role.ADMIN and membership.source == Membership.Source.SCIM
    assert AuditEvent.objects.filter(tenant=tenant_a, action="scim.user_reactivated").exists()


def test_deleting_a_user_ends_access_and_keeps_the_account(scim, provisioned, tenant_a, barbara,
                                                           login, api):
    user_id, group_id = provisioned
    browser = login(barbara)
    _, plaintext = make_token(tenant_a, user=barbara, role=Role.DEVELOPER)
    assert scim.delete(f"/Users/{user_id}").status_code == 204
    assert browser.get("/t/alpha/").status_code == 302
    assert api(plaintext).get("/api/v1/t/alpha/servers/").status_code == 401
    assert _membership(tenant_a, barbara) is None
    barbara.refresh_from_db()  # the person stays (audit trail, other tenants)
    assert scim.get(f"/Groups/{group_id}").body.get("members", []) == []
    assert AuditEvent.objects.filter(tenant=tenant_a, action="scim.user_deleted").exists()


def test_a_refused_deactivation_changes_nothing(scim, provisioned, tenant_a, barbara, login):
    user_id, _ = provisioned
    browser = login(barbara)
    response = scim.patch(f"/Users/{user_id}", patch_body(
        {"op": "replace", "value": {"active": False, "userName": ""}}))
    assert response.status_code == 400
    assert browser.get("/t/alpha/").status_code == 200
    assert _membership(tenant_a, barbara).role == Role.DEVELOPER


def test_one_tenants_scim_cannot_sign_a_member_of_another_tenant_out(
        scim, tenant_a, tenant_b, oscar, login, api, token_for, settings):
    """Tenant A's admin holds A's SCIM token and could name any subject: a person who is
    also a member elsewhere keeps their sessions (and their tokens there); their access to A
    alone ends."""
    ExternalIdentity.objects.create(user=oscar, issuer=settings.SCIM_IDENTITY_ISSUER,
                                    subject="00u-oscar")
    GroupMappingFactory(tenant=tenant_a, group="tollgate-developers", role=Role.DEVELOPER)
    user_id = scim.post("/Users", user_body("oscar@example.com", "00u-oscar")).body["id"]
    scim.post("/Groups", group_body("tollgate-developers", user_id))
    assert _membership(tenant_a, oscar).role == Role.DEVELOPER
    browser = login(oscar)
    token_b = token_for(oscar, tenant_b)
    _, token_a = make_token(tenant_a, user=oscar, role=Role.DEVELOPER)
    assert browser.get("/t/alpha/").status_code == 200

    scim.patch(f"/Users/{user_id}", patch_body({"op": "replace", "path": "active",
                                                "value": False}))

    assert browser.get("/t/bravo/").status_code == 200
    assert api(token_b).get("/api/v1/t/bravo/servers/").status_code == 200
    assert browser.get("/t/alpha/").status_code == 404
    assert api(token_a).get("/api/v1/t/alpha/servers/").status_code == 401
    assert AuditEvent.objects.filter(tenant=tenant_a, action="scim.sessions_kept").exists()
    assert not AuditEvent.objects.filter(action="user.access_ended").exists()
