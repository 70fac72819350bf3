"""The session registry and ``user_access_end``: a person's sessions and personal tokens end in
the request that offboards them, audited, and a token whose owner left its tenant stops at once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from governance.audit.models import AuditEvent
from governance.audit.services import Actor
from governance.tenancy import invitations, services
from governance.tenancy.models import ApiToken, Membership, UserSession
from governance.tenancy.offboarding import user_access_end, user_sessions_end
from governance.tenancy.roles import Role
from governance.tenancy.tasks import clear_expired_sessions
from tests.factories import GroupMappingFactory, MembershipFactory, UserFactory, make_token

SCIM = Actor.system("scim")
ISSUER = "https://idp.example"


def _events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("pk"))


def _signed_in(client: Client) -> bool:
    return client.get("/t/alpha/").status_code == 200


# --- The registry -----------------------------------------------------------------------------


def test_a_sign_in_registers_the_session_and_signing_out_forgets_it(login, victor):
    client = login(victor)
    row = UserSession.objects.get(user=victor)
    assert row.session_key == client.session.session_key
    assert (row.issuer, row.subject, row.sid) == ("", "", "")
    client.post("/logout/")
    assert not UserSession.objects.filter(user=victor).exists()


def test_signing_in_over_another_users_session_registers_the_new_one(login, victor, bob):
    client = login(victor)
    client.force_login(bob, backend="django.contrib.auth.backends.ModelBackend")
    # (victor's row points at his flushed session until the hourly prune: harmless.)
    assert UserSession.objects.get(user=bob).session_key == client.session.session_key
    assert client.get("/t/alpha/").status_code == 200
    user_access_end(user=bob, actor=SCIM, reason="x")
    assert client.get("/t/alpha/").status_code == 302


def test_the_password_form_registers_the_session(victor):
    client = Client()
    response = client.post("/login/", {"username": "victor",
                                       "password": "correct horse battery staple"})
    assert response.status_code == 302
    assert UserSession.objects.get(user=victor).session_key == client.session.session_key


def test_the_hourly_task_drops_rows_of_sessions_that_are_gone(login, victor, bob):
    kept, expired = login(victor), login(bob)
    Session.objects.filter(session_key=expired.session.session_key).update(
        expire_date=timezone.now() - timedelta(seconds=1))
    clear_expired_sessions.apply().get()
    assert list(UserSession.objects.values_list("session_key", flat=True)) == [
        kept.session.session_key]


# --- user_access_end --------------------------------------------------------------------------


def test_it_ends_every_session_and_revokes_personal_tokens_in_every_tenant(
    login, api, tenant_a, tenant_b, victor, alice
):
    MembershipFactory(tenant=tenant_b, user=victor, role=Role.VIEWER)
    browser_1, browser_2, other = login(victor), login(victor), login(alice)
    token_a, plain_a = make_token(tenant_a, user=victor)
    token_b, _ = make_token(tenant_b, user=victor)
    service, _ = make_token(tenant_a, kind=ApiToken.Kind.SERVICE)

    counts = user_access_end(user=victor, actor=SCIM, reason="deactivated by SCIM")

    assert counts == {"sessions": 2, "tokens": 2}
    assert not _signed_in(browser_1) and not _signed_in(browser_2)
    assert browser_1.get("/t/alpha/")["Location"].startswith("/login/")
    assert _signed_in(other)  # nobody else's
    assert not Session.objects.filter(
        session_key__in=[browser_1.session.session_key, browser_2.session.session_key]).exists()
    assert not UserSession.objects.filter(user=victor).exists()
    for token in (token_a, token_b):
        token.refresh_from_db()
        assert token.revoked_at is not None
    service.refresh_from_db()
    assert service.revoked_at is None
    assert api(plain_a).get("/api/v1/t/alpha/tokens/").status_code == 401
    ended = _events("user.access_ended")
    assert [(e.tenant, e.actor_label, e.after) for e in ended] == [
        (tenant_a, "scim", {"reason": "deactivated by SCIM", "sessions_ended": 2,
                            "tokens_revoked": 1}),
        (tenant_b, "scim", {"reason": "deactivated by SCIM", "sessions_ended": 2,
                            "tokens_revoked": 1}),
    ]
    assert [e.after["reason"] for e in _events("api_token.revoked")] == [
        "deactivated by SCIM", "deactivated by SCIM"]


def test_it_is_idempotent(login, tenant_a, victor):
    login(victor)
    make_token(tenant_a, user=victor)
    assert user_access_end(user=victor, actor=SCIM, reason="x") == {"sessions": 1, "tokens": 1}
    before = AuditEvent.objects.count()
    assert user_access_end(user=victor, actor=SCIM, reason="x") == {"sessions": 0, "tokens": 0}
    assert AuditEvent.objects.count() == before


def test_with_a_tenant_only_that_tenants_tokens_go(login, tenant_a, tenant_b, victor):
    MembershipFactory(tenant=tenant_b, user=victor, role=Role.VIEWER)
    client = login(victor)
    token_a, _ = make_token(tenant_a, user=victor)
    token_b, _ = make_token(tenant_b, user=victor)

    counts = user_access_end(user=victor, actor=SCIM, reason="SCIM", tenant=tenant_a)

    assert counts == {"sessions": 1, "tokens": 1}
    assert not _signed_in(client)
    token_a.refresh_from_db()
    token_b.refresh_from_db()
    assert token_a.revoked_at is not None and token_b.revoked_at is None
    assert [e.tenant for e in _events("user.access_ended")] == [tenant_a]


def test_a_user_without_memberships_is_recorded_on_the_platform_chain(login, db):
    loner = UserFactory(username="loner")
    login(loner)
    assert user_access_end(user=loner, actor=SCIM, reason="gone")["sessions"] == 1
    [event] = _events("user.access_ended")
    assert event.tenant is None and event.object_repr == "loner"


def test_it_rolls_back_with_the_callers_transaction(login, tenant_a, victor):
    from django.db import transaction

    client = login(victor)
    token, _ = make_token(tenant_a, user=victor)
    with pytest.raises(RuntimeError), transaction.atomic():
        user_access_end(user=victor, actor=SCIM, reason="x")
        raise RuntimeError("the SCIM request failed later")
    assert _signed_in(client)
    token.refresh_from_db()
    assert token.revoked_at is None
    assert not _events("user.access_ended")


def test_ending_sessions_leaves_tokens_alone(login, tenant_a, victor):
    client = login(victor)
    token, _ = make_token(tenant_a, user=victor)
    assert user_sessions_end(user=victor, actor=SCIM, reason="IdP logout") == 1
    assert not _signed_in(client)
    token.refresh_from_db()
    assert token.revoked_at is None
    [event] = _events("auth.session_ended")
    assert event.after == {"reason": "IdP logout", "sessions_ended": 1}


# --- Tokens of a user who left the tenant -----------------------------------------------------


def test_a_token_stops_at_once_when_its_owners_membership_goes_by_any_path(
    api, tenant_a, victor
):
    _, plain = make_token(tenant_a, user=victor)
    assert api(plain).get("/api/v1/t/alpha/tokens/").status_code == 200
    Membership.objects.filter(user=victor).delete()  # not through a service: no revocation
    response = api(plain).get("/api/v1/t/alpha/tokens/")
    assert response.status_code == 401
    assert response.json()["message"] == (
        "The token's owner is no longer a member of the token's tenant.")


def test_an_idp_removal_revokes_the_tokens_in_the_same_transaction(tenant_a):
    GroupMappingFactory(tenant=tenant_a, group="staff", role=Role.VIEWER)
    user = services.identity_login(issuer=ISSUER, subject="s", username="carol", email="",
                                   full_name="", groups=["staff"])
    token, _ = make_token(tenant_a, user=user)
    services.memberships_sync_from_groups(user=user, groups=[])
    token.refresh_from_db()
    assert token.revoked_at is not None


# --- Membership source and confirmation -------------------------------------------------------


def test_an_idp_login_confirms_idp_memberships_and_leaves_manual_ones(tenant_a, tenant_b):
    GroupMappingFactory(tenant=tenant_a, group="staff", role=Role.VIEWER)
    user = services.identity_login(issuer=ISSUER, subject="s", username="carol", email="",
                                   full_name="", groups=["staff"])
    manual = MembershipFactory(tenant=tenant_b, user=user, role=Role.VIEWER)
    idp = Membership.objects.get(tenant=tenant_a, user=user)
    assert idp.source == Membership.Source.IDP and idp.last_confirmed_at is not None
    assert manual.last_confirmed_at is None
    first = idp.last_confirmed_at
    services.identity_login(issuer=ISSUER, subject="s", username="carol", email="",
                            full_name="", groups=["staff"])
    idp.refresh_from_db()
    manual.refresh_from_db()
    assert idp.last_confirmed_at > first and manual.last_confirmed_at is None


def test_a_scim_sync_touches_only_its_tenant_and_marks_the_source(tenant_a, tenant_b):
    GroupMappingFactory(tenant=tenant_a, group="staff", role=Role.APPROVER)
    GroupMappingFactory(tenant=tenant_b, group="staff", role=Role.VIEWER)
    user = UserFactory(username="sam")
    services.memberships_sync_from_groups(user=user, groups=["staff"], tenant=tenant_a,
                                          source=Membership.Source.SCIM, actor=SCIM)
    [membership] = Membership.objects.filter(user=user)
    assert (membership.tenant, membership.role, membership.source) == (
        tenant_a, Role.APPROVER, Membership.Source.SCIM)
    assert membership.last_confirmed_at is not None
    created = AuditEvent.objects.get(tenant=tenant_a, action="membership.created",
                                     object_id=str(membership.pk))
    assert created.actor_label == "scim"
    # An IdP login later manages the SCIM membership too (both follow the IdP's groups).
    services.memberships_sync_from_groups(user=user, groups=[])
    assert not Membership.objects.filter(user=user).exists()


def test_an_invitation_makes_an_invitation_membership(tenant_a, alice):
    invitations.invitation_create(tenant=tenant_a, actor=Actor.user(alice), invited_by=alice,
                                  role=Role.VIEWER, email="nina@example.com")
    nina = UserFactory(username="nina", email="nina@example.com")
    [membership] = invitations.invitations_accept(user=nina, email="nina@example.com",
                                                  identities=[])
    assert membership.source == Membership.Source.INVITATION
    assert membership.last_confirmed_at is not None


# --- The members page -------------------------------------------------------------------------


def test_the_members_page_shows_each_source_and_when_it_was_last_confirmed(
    login, tenant_a, alice
):
    GroupMappingFactory(tenant=tenant_a, group="staff", role=Role.VIEWER)
    services.identity_login(issuer=ISSUER, subject="s", username="carol", email="",
                            full_name="", groups=["staff"])
    services.memberships_sync_from_groups(user=UserFactory(username="sam"), groups=["staff"],
                                          tenant=tenant_a, source=Membership.Source.SCIM)
    invitations.invitation_create(tenant=tenant_a, actor=Actor.user(alice), invited_by=alice,
                                  role=Role.VIEWER, email="nina@example.com")
    invitations.invitations_accept(user=UserFactory(username="nina", email="nina@example.com"),
                                   email="nina@example.com", identities=[])
    html = login(alice).get("/t/alpha/members/").content.decode()
    rows = {m.user.username: m for m in Membership.objects.filter(tenant=tenant_a)}
    for username, label in [("carol", "IdP login"), ("sam", "SCIM"), ("nina", "Invitation"),
                            ("alice", "Added by an admin")]:
        confirmed = rows[username].last_confirmed_at
        cell = (f'<time datetime="{confirmed.isoformat()}">' if confirmed else "—")
        assert f'<td class="source source-{rows[username].source}">{label}</td>' in html
        assert (confirmed is None) == (username == "alice")
        assert cell.split(".")[0] in html


def test_sessions_from_before_the_registry_are_registered_by_the_migration(victor, tenant_a):
    import importlib

    from django.apps import apps
    from django.contrib.sessions.backends.db import SessionStore

    migration = importlib.import_module(
        "governance.tenancy.migrations.0007_register_existing_sessions")
    old, anonymous = SessionStore(), SessionStore()
    old["_auth_user_id"], anonymous["cart"] = str(victor.pk), "x"
    old.create()
    anonymous.create()
    migration.register(apps, None)
    migration.register(apps, None)  # runs once in real life; twice changes nothing
    assert list(UserSession.objects.values_list("session_key", "user_id")) == [
        (old.session_key, victor.pk)]
    assert user_access_end(user=victor, actor=SCIM, reason="x")["sessions"] == 1
    assert not Session.objects.filter(session_key=old.session_key).exists()
