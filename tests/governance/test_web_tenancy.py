"""Web UI: tenant picker, members, group mappings (with the guardian example), tokens, audit."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from governance.audit.models import AuditEvent
from governance.audit.services import Actor
from governance.tenancy import services
from governance.tenancy.models import ApiToken, IdpGroupMapping, Membership
from governance.tenancy.roles import Role
from tests.factories import GroupMappingFactory, MembershipFactory, UserFactory, make_token


def _last_event(tenant) -> AuditEvent:
    return AuditEvent.objects.filter(tenant=tenant).order_by("-seq").first()


# --- Picker -----------------------------------------------------------------------------------


def test_one_membership_goes_straight_to_the_tenant(login, victor):
    response = login(victor).get("/")
    assert response.status_code == 302
    assert response["Location"] == "/t/alpha/"


def test_several_memberships_get_a_picker(login, alice, tenant_b):
    MembershipFactory(tenant=tenant_b, user=alice, role=Role.VIEWER)
    response = login(alice).get("/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "Choose a tenant" in body
    assert 'href="/t/alpha/"' in body and 'href="/t/bravo/"' in body


def test_no_membership_gets_a_clear_no_access_page(login, db):
    loner = UserFactory(username="loner")
    services.identity_login(issuer="https://idp", subject="s", username="loner2",
                            email="", full_name="", groups=["sales"])
    response = login(loner).get("/")
    assert response.status_code == 200
    assert "You have no access to any tenant yet" in response.content.decode()


def test_no_access_page_lists_the_groups_the_idp_sent(login, db):
    user = services.identity_login(issuer="https://idp", subject="s", username="nogroups",
                                   email="", full_name="", groups=["sales", "emea"])
    body = login(user).get("/").content.decode()
    assert "<code>emea</code>, <code>sales</code>" in body


def test_anonymous_home_goes_to_login(client, db):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_tenant_home_shows_role_and_navigation_by_capability(login, alice, victor):
    admin_page = login(alice).get("/t/alpha/").content.decode()
    viewer_page = login(victor).get("/t/alpha/").content.decode()
    assert "/t/alpha/members/" in admin_page and "/t/alpha/audit/" in admin_page
    assert "/t/alpha/members/" not in viewer_page and "/t/alpha/audit/" not in viewer_page
    assert 'role-viewer">viewer' in viewer_page


# --- Members ---------------------------------------------------------------------------------


def test_member_list_is_searchable_and_paginated(login, alice, tenant_a):
    for i in range(30):
        MembershipFactory(tenant=tenant_a, user=UserFactory(username=f"m{i:02d}"))
    client = login(alice)
    first = client.get("/t/alpha/members/").content.decode()
    assert "Page 1 of 2" in first
    found = client.get("/t/alpha/members/?q=m07").content.decode()
    assert "m07" in found and "m08" not in found
    empty = client.get("/t/alpha/members/?q=zzz").content.decode()
    assert "No member matches “zzz”" in empty


def test_admin_changes_a_role(login, alice, victor, tenant_a):
    m = Membership.objects.get(tenant=tenant_a, user=victor)
    response = login(alice).post(f"/t/alpha/members/{m.pk}/", {"role": "auditor"})
    assert response.status_code == 302
    m.refresh_from_db()
    assert m.role == "auditor"
    event = _last_event(tenant_a)
    assert event.action == "membership.role_changed"
    assert (event.before["role"], event.after["role"]) == ("viewer", "auditor")


def test_demoting_the_last_admin_is_a_form_error(login, alice, tenant_a):
    m = Membership.objects.get(tenant=tenant_a, user=alice)
    response = login(alice).post(f"/t/alpha/members/{m.pk}/", {"role": "viewer"})
    assert response.status_code == 400
    assert "last admin" in response.content.decode()


def test_removing_a_member_asks_first(login, alice, victor, tenant_a):
    m = Membership.objects.get(tenant=tenant_a, user=victor)
    client = login(alice)
    confirm = client.get(f"/t/alpha/members/{m.pk}/remove/")
    assert confirm.status_code == 200 and "Remove victor?" in confirm.content.decode()
    assert Membership.objects.filter(pk=m.pk).exists()
    assert client.post(f"/t/alpha/members/{m.pk}/remove/").status_code == 302
    assert not Membership.objects.filter(pk=m.pk).exists()


# --- Group mappings and the django-guardian example -------------------------------------------


def test_admin_maps_a_group(login, alice, tenant_a):
    response = login(alice).post("/t/alpha/group-mappings/", {"group": " eng-leads ",
                                                             "role": "approver"})
    assert response.status_code == 302
    assert IdpGroupMapping.objects.get(tenant=tenant_a).group == "eng-leads"
    assert _last_event(tenant_a).action == "group_mapping.created"


def test_a_duplicate_group_is_a_field_error(login, alice, tenant_a):
    GroupMappingFactory(tenant=tenant_a, group="dup")
    response = login(alice).post("/t/alpha/group-mappings/", {"group": "dup", "role": "viewer"})
    assert response.status_code == 400
    assert "Group &#x27;dup&#x27; is already mapped" in response.content.decode()


def test_changing_and_deleting_a_mapping(login, alice, tenant_a):
    mapping = GroupMappingFactory(tenant=tenant_a, group="g1")
    client = login(alice)
    assert client.post(f"/t/alpha/group-mappings/{mapping.pk}/", {"role": "auditor"}
                       ).status_code == 302
    mapping.refresh_from_db()
    assert mapping.role == "auditor"
    assert "Delete the mapping" in client.get(
        f"/t/alpha/group-mappings/{mapping.pk}/delete/").content.decode()
    assert client.post(f"/t/alpha/group-mappings/{mapping.pk}/delete/").status_code == 302
    assert not IdpGroupMapping.objects.filter(pk=mapping.pk).exists()
    assert _last_event(tenant_a).action == "group_mapping.deleted"


def test_object_permission_lets_a_viewer_manage_mappings_of_that_tenant_only(
    login, alice, victor, tenant_a, tenant_b
):
    """The worked django-guardian example: a permission on one Tenant object."""
    MembershipFactory(tenant=tenant_b, user=victor, role=Role.VIEWER)
    client = login(victor)
    assert client.get("/t/alpha/group-mappings/").status_code == 403

    m = Membership.objects.get(tenant=tenant_a, user=victor)
    response = login(alice).post(f"/t/alpha/members/{m.pk}/", {
        "role": "viewer", "may_manage_group_mappings": "on"})
    assert response.status_code == 302
    assert victor.has_perm("tenancy.manage_group_mappings", tenant_a)
    assert _last_event(tenant_a).action == "membership.delegation_granted"

    assert client.get("/t/alpha/group-mappings/").status_code == 200
    assert client.post("/t/alpha/group-mappings/", {"group": "x", "role": "viewer"}
                       ).status_code == 302
    # Only for that tenant, and it grants nothing else.
    assert client.get("/t/bravo/group-mappings/").status_code == 403
    assert client.get("/t/alpha/members/").status_code == 403

    response = login(alice).post(f"/t/alpha/members/{m.pk}/", {"role": "viewer"})
    assert response.status_code == 302
    assert login(victor).get("/t/alpha/group-mappings/").status_code == 403


# --- Tokens ----------------------------------------------------------------------------------


def test_a_new_token_is_shown_once(login, victor, tenant_a):
    client = login(victor)
    response = client.post("/t/alpha/tokens/", {"name": "laptop", "kind": "personal",
                                                "role": "viewer", "expires_in_days": "30"})
    assert response.status_code == 303 and response["Location"] == "/t/alpha/tokens/"
    response = client.get("/t/alpha/tokens/")
    assert response["Cache-Control"] == "no-store"
    body = response.content.decode()
    token = ApiToken.objects.get(tenant=tenant_a, name="laptop")
    start = body.index('id="token-value">') + len('id="token-value">')
    plaintext = body[start:body.index("</code>", start)]
    assert plaintext.startswith(token.prefix)
    assert "shown only this once" in body
    assert plaintext not in client.get("/t/alpha/tokens/").content.decode()
    assert token.expires_at - timezone.now() > timedelta(days=29)
    assert ApiToken.objects.filter(tenant=tenant_a).count() == 1


def test_a_viewer_cannot_issue_service_tokens_or_stronger_roles(login, victor):
    client = login(victor)
    page = client.get("/t/alpha/tokens/").content.decode()
    assert 'value="service"' not in page and 'value="admin"' not in page
    response = client.post("/t/alpha/tokens/", {"name": "x", "kind": "service",
                                                "role": "viewer", "expires_in_days": "30"})
    assert response.status_code == 400
    response = client.post("/t/alpha/tokens/", {"name": "x", "kind": "personal",
                                                "role": "admin", "expires_in_days": "30"})
    assert response.status_code == 400


def test_members_see_only_their_own_tokens_admins_see_all(login, alice, victor, tenant_a):
    make_token(tenant_a, user=alice, role=Role.ADMIN, name="alice-token")
    make_token(tenant_a, user=victor, name="victor-token")
    victor_page = login(victor).get("/t/alpha/tokens/").content.decode()
    alice_page = login(alice).get("/t/alpha/tokens/").content.decode()
    assert "victor-token" in victor_page and "alice-token" not in victor_page
    assert "victor-token" in alice_page and "alice-token" in alice_page


def test_revoking_someone_elses_token_needs_the_capability(login, alice, victor, bob, tenant_a):
    token, _ = make_token(tenant_a, user=bob)
    assert login(victor).post(f"/t/alpha/tokens/{token.pk}/revoke/").status_code == 403
    client = login(alice)
    assert "Revoke token" in client.get(f"/t/alpha/tokens/{token.pk}/revoke/").content.decode()
    assert client.post(f"/t/alpha/tokens/{token.pk}/revoke/").status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_own_token_can_be_revoked(login, victor, tenant_a):
    token, _ = make_token(tenant_a, user=victor)
    assert login(victor).post(f"/t/alpha/tokens/{token.pk}/revoke/").status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None


# --- Audit log page --------------------------------------------------------------------------


@pytest.fixture
def busy_tenant(tenant_a, alice, bob):
    for i in range(60):
        services.group_mapping_create(tenant=tenant_a, actor=Actor.user(bob if i % 2 else alice),
                                      group=f"g{i:02d}", role=Role.VIEWER)
    return tenant_a


def test_audit_log_is_paginated(login, audrey, busy_tenant):
    body = login(audrey).get("/t/alpha/audit/").content.decode()
    assert "Page 1 of 2" in body


def test_audit_log_filters_by_actor_action_object_and_time(login, audrey, busy_tenant):
    client = login(audrey)
    body = client.get("/t/alpha/audit/?actor=bob&action=group_mapping.created").content.decode()
    assert body.count("<code>group_mapping.created</code>") == 30
    body = client.get("/t/alpha/audit/?object=g07").content.decode()
    assert body.count("<code>group_mapping.created</code>") == 1
    body = client.get("/t/alpha/audit/?action=membership.").content.decode()
    assert "<code>membership.created</code>" in body and "group_mapping" not in body.split(
        "audit-table")[1]
    tomorrow = (timezone.now() + timedelta(days=1)).date().isoformat()
    body = client.get(f"/t/alpha/audit/?since={tomorrow}").content.decode()
    assert "No audit events match these filters" in body


def test_audit_log_rejects_a_reversed_range(login, audrey, tenant_a):
    response = login(audrey).get("/t/alpha/audit/?since=2026-02-01&until=2026-01-01")
    assert response.status_code == 400
    assert "“From” must be on or before “To”" in response.content.decode()


def test_htmx_filtering_returns_only_the_table(login, audrey, busy_tenant):
    response = login(audrey).get("/t/alpha/audit/?actor=bob", HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert 'id="audit-table"' in body and "<html" not in body


def test_audit_event_detail_and_chain_check(login, audrey, tenant_a):
    event = _last_event(tenant_a)
    client = login(audrey)
    body = client.get(f"/t/alpha/audit/{event.pk}/").content.decode()
    assert event.hash in body and event.prev_hash in body
    result = client.post("/t/alpha/audit/verify/").content.decode()
    assert "tenant alpha: OK" in result


# --- Tenant settings ------------------------------------------------------------------------------


def test_an_admin_sets_the_resync_interval(login, alice, tenant_a):
    client = login(alice)
    page = client.get(f"/t/{tenant_a.slug}/settings/")
    assert page.status_code == 200
    assert b'value="60"' in page.content

    assert b'value="90"' in page.content

    response = client.post(f"/t/{tenant_a.slug}/settings/", {
        "registry_resync_minutes": "15", "decision_log_retention_days": "30"})

    assert response.status_code == 302
    tenant_a.refresh_from_db()
    assert (tenant_a.registry_resync_minutes, tenant_a.decision_log_retention_days) == (15, 30)
    event = AuditEvent.objects.get(tenant=tenant_a, action="tenant.settings_changed")
    assert (event.before, event.after) == (
        {"registry_resync_minutes": 60, "decision_log_retention_days": 90},
        {"registry_resync_minutes": 15, "decision_log_retention_days": 30})


def test_a_bad_interval_is_refused_with_the_input_kept(login, alice, tenant_a):
    response = login(alice).post(f"/t/{tenant_a.slug}/settings/",
                                 {"registry_resync_minutes": "-5",
                                  "decision_log_retention_days": "0"})
    assert response.status_code == 400
    assert "Ensure this value is greater than or equal to 0." in response.content.decode()
    assert "Ensure this value is greater than or equal to 1." in response.content.decode()
    assert b'value="-5"' in response.content
    tenant_a.refresh_from_db()
    assert (tenant_a.registry_resync_minutes, tenant_a.decision_log_retention_days) == (60, 90)


def test_the_settings_service_checks_its_bounds(tenant_a):
    with pytest.raises(Exception, match="whole number from 0 to 10080"):
        services.tenant_update_settings(tenant=tenant_a, actor=Actor.system(),
                                        registry_resync_minutes=10081)
