"""Tenancy services: memberships, IdP group sync, tokens — each with its audit event."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from governance.audit.models import AuditEvent
from governance.audit.services import Actor
from governance.tenancy import services
from governance.tenancy.models import ApiToken, ExternalIdentity, Membership, hash_token
from governance.tenancy.roles import Role, role_covers
from tests.factories import GroupMappingFactory, TenantFactory, UserFactory, make_token

ISSUER = "https://idp.example"


def _actions(tenant) -> list[str]:
    return list(AuditEvent.objects.filter(tenant=tenant).order_by("seq")
                .values_list("action", flat=True))


def _login(groups, sub="sub-1", username="carol"):
    return services.identity_login(issuer=ISSUER, subject=sub, username=username,
                                   email=f"{username}@example.com", full_name="Carol Jones",
                                   groups=groups)


def test_membership_create_records_an_event(tenant_a, alice):
    user = UserFactory(username="newbie")
    m = services.membership_create(tenant=tenant_a, actor=Actor.user(alice), user=user,
                                   role=Role.DEVELOPER)
    event = AuditEvent.objects.filter(tenant=tenant_a).order_by("-seq").first()
    assert event.action == "membership.created"
    assert event.actor_label == "alice"
    assert event.object_id == str(m.pk)
    assert event.after == {"user": "newbie", "role": "developer", "source": "manual"}


def test_a_user_cannot_be_added_twice(tenant_a, victor):
    with pytest.raises(ValidationError, match="already a member"):
        services.membership_create(tenant=tenant_a, actor=Actor.system(), user=victor,
                                   role=Role.ADMIN)


def test_the_last_admin_cannot_be_removed_or_demoted(tenant_a, alice):
    m = Membership.objects.get(tenant=tenant_a, user=alice)
    with pytest.raises(ValidationError, match="last admin"):
        services.membership_delete(tenant=tenant_a, actor=Actor.user(alice), membership=m)
    with pytest.raises(ValidationError, match="last admin"):
        services.membership_change_role(tenant=tenant_a, actor=Actor.user(alice), membership=m,
                                        role=Role.VIEWER)


def test_removing_a_member_revokes_their_tokens(tenant_a, alice, victor):
    token, _ = make_token(tenant_a, user=victor)
    m = Membership.objects.get(tenant=tenant_a, user=victor)
    services.membership_delete(tenant=tenant_a, actor=Actor.user(alice), membership=m)
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert _actions(tenant_a)[-2:] == ["membership.deleted", "api_token.revoked"]


def test_lowering_a_role_revokes_tokens_that_now_exceed_it(tenant_a, alice, bob):
    strong, _ = make_token(tenant_a, user=bob, role=Role.APPROVER)
    weak, _ = make_token(tenant_a, user=bob, role=Role.VIEWER)
    m = Membership.objects.get(tenant=tenant_a, user=bob)
    services.membership_change_role(tenant=tenant_a, actor=Actor.user(alice), membership=m,
                                    role=Role.VIEWER)
    strong.refresh_from_db()
    weak.refresh_from_db()
    assert strong.revoked_at is not None
    assert weak.revoked_at is None


# --- IdP group sync ------------------------------------------------------------------------


def test_first_login_creates_user_identity_and_mapped_membership(tenant_a, tenant_b):
    GroupMappingFactory(tenant=tenant_a, group="a-approvers", role=Role.APPROVER)
    GroupMappingFactory(tenant=tenant_b, group="b-viewers", role=Role.VIEWER)
    user = _login(["a-approvers", "other"])
    assert ExternalIdentity.objects.get(user=user).subject == "sub-1"
    assert user.email == "carol@example.com" and user.first_name == "Carol"
    assert not user.has_usable_password()
    m = Membership.objects.get(user=user)
    assert (m.tenant, m.role, m.source) == (tenant_a, Role.APPROVER, "idp")
    assert _actions(tenant_a)[-1] == "membership.created"
    assert AuditEvent.objects.filter(tenant=None, action="user.created").exists()


def test_groups_are_matched_on_subject_not_email(tenant_a):
    GroupMappingFactory(tenant=tenant_a, group="g", role=Role.VIEWER)
    first = _login(["g"], sub="sub-1")
    other = _login(["g"], sub="sub-2")  # same e-mail, another subject → another user
    assert first != other
    assert other.username == "carol-2"


def test_every_login_adds_changes_and_removes_memberships(tenant_a, tenant_b):
    GroupMappingFactory(tenant=tenant_a, group="a-viewers", role=Role.VIEWER)
    GroupMappingFactory(tenant=tenant_a, group="a-admins", role=Role.ADMIN)
    GroupMappingFactory(tenant=tenant_b, group="b-devs", role=Role.DEVELOPER)
    user = _login(["a-viewers"])
    assert {m.tenant.slug: m.role for m in user.memberships.all()} == {"alpha": "viewer"}
    _login(["a-viewers", "a-admins", "b-devs"])
    assert {m.tenant.slug: m.role for m in user.memberships.all()} == {
        "alpha": "admin", "bravo": "developer"}
    _login(["b-devs"])
    assert {m.tenant.slug: m.role for m in user.memberships.all()} == {"bravo": "developer"}
    _login([])
    assert not user.memberships.exists()
    assert _actions(tenant_a)[-3:] == [
        "membership.created", "membership.role_changed", "membership.deleted"]


def test_the_strongest_mapped_role_wins(tenant_a):
    GroupMappingFactory(tenant=tenant_a, group="devs", role=Role.DEVELOPER)
    GroupMappingFactory(tenant=tenant_a, group="auditors", role=Role.AUDITOR)
    user = _login(["devs", "auditors"])
    assert Membership.objects.get(user=user).role == Role.AUDITOR


def test_manual_memberships_are_left_alone_by_the_sync(tenant_a):
    user = _login([])
    services.membership_create(tenant=tenant_a, actor=Actor.system(), user=user,
                               role=Role.DEVELOPER)
    _login(["unmapped"])
    assert Membership.objects.get(user=user).role == Role.DEVELOPER


def test_an_idp_removal_revokes_the_users_tokens(tenant_a):
    GroupMappingFactory(tenant=tenant_a, group="g", role=Role.ADMIN)
    user = _login(["g"])
    token, _ = make_token(tenant_a, user=user, role=Role.ADMIN)
    _login([])
    token.refresh_from_db()
    assert token.revoked_at is not None


# --- API tokens ------------------------------------------------------------------------------


def test_token_plaintext_is_returned_once_and_stored_hashed(tenant_a, alice):
    token, plaintext = make_token(tenant_a, user=alice, role=Role.ADMIN)
    assert plaintext.startswith("tgp_") and len(plaintext) >= 40
    assert token.token_hash == hash_token(plaintext)
    assert plaintext not in str(list(ApiToken.objects.values()))
    event = AuditEvent.objects.filter(tenant=tenant_a, action="api_token.created").get()
    assert plaintext not in str(event.after)
    assert event.after["prefix"] == plaintext[:12]


def test_a_personal_token_cannot_exceed_its_owners_role(tenant_a, victor):
    with pytest.raises(ValidationError, match="more rights than your own role"):
        make_token(tenant_a, user=victor, role=Role.ADMIN)


def test_a_token_must_expire_within_the_limit(tenant_a, alice, settings):
    settings.API_TOKEN_MAX_DAYS = 30
    with pytest.raises(ValidationError, match="within 30 days"):
        make_token(tenant_a, user=alice, days=31)
    with pytest.raises(ValidationError, match="in the future"):
        make_token(tenant_a, user=alice, days=-1)


def test_service_tokens_have_no_owner(tenant_a, alice):
    token, plaintext = make_token(tenant_a, user=None, kind="service", role=Role.AUDITOR)
    assert plaintext.startswith("tgs_") and token.user is None


def test_revoking_twice_is_harmless(tenant_a, alice):
    token, _ = make_token(tenant_a, user=alice)
    services.api_token_revoke(tenant=tenant_a, actor=Actor.user(alice), token=token)
    services.api_token_revoke(tenant=tenant_a, actor=Actor.user(alice), token=token)
    assert _actions(tenant_a).count("api_token.revoked") == 1


def test_token_state(tenant_a, alice):
    token, _ = make_token(tenant_a, user=alice)
    assert token.state == "active"
    token.expires_at = timezone.now() - timedelta(seconds=1)
    assert token.state == "expired"
    token.revoked_at = timezone.now()
    assert token.state == "revoked"


def test_role_coverage():
    assert role_covers(Role.ADMIN, Role.AUDITOR)
    assert role_covers(Role.APPROVER, Role.VIEWER)
    assert not role_covers(Role.APPROVER, Role.AUDITOR)
    assert not role_covers(Role.VIEWER, Role.DEVELOPER)


def test_tenant_slugs_are_validated(db):
    with pytest.raises(ValidationError):
        TenantFactory(slug="Bad Slug!")


def test_losing_the_membership_also_withdraws_delegations(tenant_a):
    GroupMappingFactory(tenant=tenant_a, group="g", role=Role.VIEWER)
    user = _login(["g"])
    membership = Membership.objects.get(user=user)
    services.membership_set_mapping_delegate(tenant=tenant_a, actor=Actor.system(),
                                             membership=membership, allowed=True)
    assert user.has_perm("tenancy.manage_group_mappings", tenant_a)
    _login([])
    assert not user.has_perm("tenancy.manage_group_mappings", tenant_a)
