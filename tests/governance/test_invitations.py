"""Issue 17 point 5: people join a tenant by invitation, never by naming a user of the
installation.

An invitation (by e-mail address or IdP issuer + subject) answers the same whoever exists
elsewhere, takes effect at the invitee's next sign-in (local password and OIDC), is single-use,
expires, and can be revoked; its errors are on the field.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from governance.audit.models import AuditEvent
from governance.audit.services import Actor
from governance.tenancy import invitations, services
from governance.tenancy.models import ExternalIdentity, Invitation, Membership
from governance.tenancy.oidc import TollgateOIDCBackend
from governance.tenancy.roles import Role
from tests.factories import UserFactory

PASSWORD = "correct horse battery staple"
ISSUER = "https://idp.example"
API = "/api/v1/t/alpha/invitations/"


def _invite(tenant, alice, **kwargs) -> Invitation:
    kwargs.setdefault("role", Role.DEVELOPER)
    return invitations.invitation_create(tenant=tenant, actor=Actor.user(alice),
                                         invited_by=alice, **kwargs)


def _actions(tenant) -> list[str]:
    return list(AuditEvent.objects.filter(tenant=tenant).order_by("seq")
                .values_list("action", flat=True))


# --- No oracle -----------------------------------------------------------------------------


def test_the_answer_is_the_same_whoever_exists_elsewhere(api, token_for, alice, oscar, tenant_a):
    """oscar exists (in tenant B); nobody has ghost@example.com: both answers are the invitation,
    the same fields, nothing about the user."""
    client = api(token_for(alice, tenant_a))
    known = client.post(API, {"email": "oscar@example.com", "role": "viewer"}, format="json")
    unknown = client.post(API, {"email": "ghost@example.com", "role": "viewer"}, format="json")
    assert known.status_code == unknown.status_code == 201
    differing = {"id", "email", "created_at", "expires_at"}
    assert ({k: v for k, v in known.json().items() if k not in differing}
            == {k: v for k, v in unknown.json().items() if k not in differing}
            == {"issuer": "", "subject": "", "role": "viewer", "state": "pending",
                "invited_by": "alice", "accepted_at": None, "accepted_by": None,
                "revoked_at": None})
    assert known.json()["email"] == "oscar@example.com"
    # Nobody was added: oscar becomes a member only if he signs in.
    assert not Membership.objects.filter(tenant=tenant_a, user=oscar).exists()


def test_adding_a_member_by_login_is_gone(api, token_for, login, alice, oscar, tenant_a):
    response = api(token_for(alice, tenant_a)).post(
        "/api/v1/t/alpha/members/", {"login": "oscar", "role": "admin"}, format="json")
    assert response.status_code == 405
    response = login(alice).post("/t/alpha/members/", {"login": "oscar", "role": "admin"})
    assert response.status_code == 400
    assert not Membership.objects.filter(tenant=tenant_a, user=oscar).exists()
    assert "oscar" not in response.content.decode()


# --- API: create, list, revoke, errors -----------------------------------------------------


def test_invitations_through_the_api(api, token_for, alice, tenant_a, settings):
    settings.INVITATION_EXPIRY_DAYS = 3
    client = api(token_for(alice, tenant_a))
    created = client.post(API, {"issuer": ISSUER, "subject": "sub-42", "role": "approver"},
                          format="json")
    assert created.status_code == 201
    body = created.json()
    invitation = Invitation.objects.get(pk=body["id"])
    assert (invitation.email, invitation.issuer, invitation.subject) == ("", ISSUER, "sub-42")
    assert invitation.expires_at - invitation.created_at == timedelta(days=3)
    listed = client.get(API).json()
    assert [i["id"] for i in listed["results"]] == [invitation.pk]
    assert client.get(f"{API}{invitation.pk}/").json()["subject"] == "sub-42"
    assert client.get(f"{API}?state=pending").json()["count"] == 1
    assert client.get(f"{API}?state=accepted").json()["count"] == 0
    assert client.get(f"{API}?state=later").json()["errors"] == {
        "state": ['"later" is not a valid choice.']}
    assert client.delete(f"{API}{invitation.pk}/").status_code == 204
    assert client.get(f"{API}{invitation.pk}/").json()["state"] == "revoked"
    assert [i["id"] for i in client.get(f"{API}?state=revoked").json()["results"]] == [
        invitation.pk]
    assert client.get(f"{API}?state=pending").json()["count"] == 0
    assert client.delete(f"{API}{invitation.pk}/").status_code == 204  # harmless twice
    events = AuditEvent.objects.filter(tenant=tenant_a, action__startswith="invitation.")
    assert [(e.action, e.actor_type) for e in events.order_by("seq")] == [
        ("invitation.created", "token"), ("invitation.revoked", "token")]
    assert events.order_by("seq")[0].after["invitee"] == f"sub-42 @ {ISSUER}"


@pytest.mark.parametrize(("body", "field", "message"), [
    ({"email": "not-an-address", "role": "viewer"}, "email", "Enter a valid e-mail address."),
    ({"role": "viewer"}, "email", "Enter an e-mail address, or an IdP issuer and subject."),
    ({"email": "", "issuer": "", "subject": "", "role": "viewer"}, "email",
     "Enter an e-mail address, or an IdP issuer and subject."),
    ({"email": "x@example.com", "subject": "s", "role": "viewer"}, "email",
     "Invite by e-mail address or by IdP subject, not both."),
    ({"subject": "s", "role": "viewer"}, "issuer",
     "Enter the IdP's issuer (the iss of its ID tokens)."),
    ({"issuer": ISSUER, "role": "viewer"}, "subject",
     "Enter the person's subject (the sub the IdP sends)."),
    ({"email": "victor@example.com", "role": "admin"}, "email",
     "A member of this tenant already has this e-mail address."),
    ({"email": "x@example.com", "role": "boss"}, "role", '"boss" is not a valid choice.'),
    ({"email": "x@example.com", "role": "viewer", "login": "x"}, "login",
     "Unknown field; this takes email, issuer, subject, role."),
    ({"email": "a" * 250 + "@example.com", "role": "viewer"}, "email",
     "Ensure this field has no more than 254 characters."),
])
def test_bad_input_is_refused_on_the_field(api, token_for, alice, victor, tenant_a, body, field,
                                           message):
    response = api(token_for(alice, tenant_a)).post(API, body, format="json")
    assert response.status_code == 400
    assert response.json() == {"code": "invalid", "message": message,
                               "errors": {field: [message]}}
    assert not Invitation.objects.exists()


def test_a_second_pending_invitation_of_the_same_person_is_refused(api, token_for, alice,
                                                                   tenant_a, tenant_b, oscar):
    client = api(token_for(alice, tenant_a))
    assert client.post(API, {"email": "Zoe@Example.com", "role": "viewer"},
                       format="json").status_code == 201
    again = client.post(API, {"email": "zoe@example.com", "role": "admin"}, format="json")
    assert again.status_code == 400
    assert again.json()["errors"] == {"email": [
        "A pending invitation for this person already exists; revoke it first to invite them "
        "with another role."]}
    # Another tenant's invitation of the same address is none of alpha's business.
    _invite(tenant_b, oscar, email="zoe@example.com")
    assert Invitation.objects.filter(email="zoe@example.com").count() == 2
    # Once revoked (or expired), they can be invited again.
    pending = Invitation.objects.get(tenant=tenant_a)
    assert client.delete(f"{API}{pending.pk}/").status_code == 204
    assert client.post(API, {"email": "zoe@example.com", "role": "admin"},
                       format="json").status_code == 201
    Invitation.objects.filter(tenant=tenant_a, role="admin").update(
        expires_at=timezone.now() - timedelta(seconds=1))
    assert client.post(API, {"email": "zoe@example.com", "role": "viewer"},
                       format="json").status_code == 201


def test_an_idp_subject_already_in_the_tenant_is_refused(tenant_a, alice, victor):
    ExternalIdentity.objects.create(user=victor, issuer=ISSUER, subject="victor-sub")
    with pytest.raises(ValidationError) as caught:
        _invite(tenant_a, alice, issuer=ISSUER, subject="victor-sub")
    assert caught.value.message_dict == {
        "subject": ["A member of this tenant already has this IdP subject."]}


def test_an_invitation_taken_up_cannot_be_revoked(tenant_a, alice):
    invitation = _invite(tenant_a, alice, email="new@example.com")
    invitations.invitations_accept(user=UserFactory(username="new"), email="new@example.com",
                                   identities=[])
    with pytest.raises(ValidationError, match="taken up already; remove the member instead"):
        invitations.invitation_revoke(tenant=tenant_a, actor=Actor.user(alice),
                                      invitation=invitation)


# --- API and pages: outsider 404, non-admin 403 --------------------------------------------


def test_outsiders_get_404_and_non_admins_403(api, token_for, login, alice, victor, bob, oscar,
                                             tenant_a, tenant_b):
    invitation = _invite(tenant_a, alice, email="new@example.com")
    body = {"email": "x@example.com", "role": "admin"}
    for client in (api(token_for(oscar, tenant_b)), login(oscar)):
        assert client.get(API).status_code == 404
        assert client.post(API, body, format="json").status_code == 404
        assert client.delete(f"{API}{invitation.pk}/").status_code == 404
    assert login(oscar).get(f"/t/alpha/invitations/{invitation.pk}/revoke/").status_code == 404
    assert login(oscar).post(f"/t/alpha/invitations/{invitation.pk}/revoke/").status_code == 404
    # alpha's invitation under bravo's slug: 404 for bravo's admin.
    assert api(token_for(oscar, tenant_b)).get(
        f"/api/v1/t/bravo/invitations/{invitation.pk}/").status_code == 404
    assert login(oscar).post(
        f"/t/bravo/invitations/{invitation.pk}/revoke/").status_code == 404
    for user in (victor, bob):
        client = api(token_for(user, tenant_a))
        assert client.get(API).status_code == 403
        assert client.post(API, body, format="json").status_code == 403
        assert client.delete(f"{API}{invitation.pk}/").status_code == 403
        page = login(user)
        assert page.post("/t/alpha/members/", body).status_code == 403
        assert page.post(f"/t/alpha/invitations/{invitation.pk}/revoke/").status_code == 403
    invitation.refresh_from_db()
    assert invitation.state == "pending"
    assert Invitation.objects.count() == 1


# --- Web UI --------------------------------------------------------------------------------


def test_admin_invites_on_the_members_page(login, alice, tenant_a):
    client = login(alice)
    page = client.get("/t/alpha/members/").content.decode()
    assert "Invite someone" in page and "No pending invitation." in page
    assert 'name="subject"' not in page  # password sign-in: only addresses take one up
    response = client.post("/t/alpha/members/", {"email": "new@example.com", "role": "auditor"})
    assert response.status_code == 302
    page = client.get("/t/alpha/members/").content.decode()
    assert ("Invited new@example.com as auditor: they become a member at their next sign-in."
            in page)
    invitation = Invitation.objects.get(tenant=tenant_a)
    assert 'id="invitations"' in page and "new@example.com" in page
    assert f"/t/alpha/invitations/{invitation.pk}/revoke/" in page
    assert _actions(tenant_a)[-1] == "invitation.created"


def test_invite_form_errors_are_on_the_field(login, alice, victor, tenant_a):
    response = login(alice).post("/t/alpha/members/", {"email": "nope", "role": "viewer"})
    assert response.status_code == 400
    assert "Enter a valid e-mail address." in response.content.decode()
    response = login(alice).post("/t/alpha/members/",
                                 {"email": "victor@example.com", "role": "viewer"})
    assert response.status_code == 400
    assert ("A member of this tenant already has this e-mail address."
            in response.content.decode())
    assert not Invitation.objects.exists()


def test_with_sso_the_form_offers_the_idp_subject(login, alice, tenant_a, settings):
    settings.OIDC_ENABLED = True
    settings.OIDC_OP_ISSUER = ISSUER
    client = login(alice)
    page = client.get("/t/alpha/members/").content.decode()
    assert 'name="subject"' in page and f'value="{ISSUER}"' in page
    # The pre-filled issuer does not turn an address into "both".
    assert client.post("/t/alpha/members/", {"email": "new@example.com", "issuer": ISSUER,
                                             "subject": "", "role": "viewer"}).status_code == 302
    assert client.post("/t/alpha/members/", {"email": "", "issuer": ISSUER, "subject": "s-9",
                                             "role": "viewer"}).status_code == 302
    assert sorted(Invitation.objects.values_list("email", "issuer", "subject")) == [
        ("", ISSUER, "s-9"), ("new@example.com", "", "")]


def test_revoking_in_the_ui_asks_first(login, alice, tenant_a):
    invitation = _invite(tenant_a, alice, email="new@example.com")
    client = login(alice)
    confirm = client.get(f"/t/alpha/invitations/{invitation.pk}/revoke/")
    assert confirm.status_code == 200
    assert "Revoke the invitation of new@example.com?" in confirm.content.decode()
    invitation.refresh_from_db()
    assert invitation.state == "pending"
    response = client.post(f"/t/alpha/invitations/{invitation.pk}/revoke/")
    assert response.status_code == 302
    invitation.refresh_from_db()
    assert invitation.state == "revoked"
    page = client.get("/t/alpha/members/").content.decode()
    assert "Revoked the invitation of new@example.com." in page
    assert "No pending invitation." in page


# --- Taking effect at sign-in --------------------------------------------------------------


def test_a_password_sign_in_takes_up_the_invitation_once(client, alice, tenant_a):
    invitation = _invite(tenant_a, alice, email="New@Example.com", role=Role.DEVELOPER)
    newcomer = UserFactory(username="newcomer", email="new@example.com")
    assert client.post("/login/", {"username": "newcomer", "password": PASSWORD}
                       ).status_code == 302
    membership = Membership.objects.get(tenant=tenant_a, user=newcomer)
    assert (membership.role, membership.source) == (Role.DEVELOPER, Membership.Source.INVITATION)
    invitation.refresh_from_db()
    assert (invitation.state, invitation.accepted_by) == ("accepted", newcomer)
    accepted = AuditEvent.objects.get(tenant=tenant_a, action="invitation.accepted")
    assert (accepted.actor_type, accepted.actor_id) == ("user", str(newcomer.pk))
    assert accepted.after["outcome"] == "member added"
    assert _actions(tenant_a)[-3:] == ["membership.created", "invitation.accepted",
                                       "auth.login"]
    # Single use: removed, they do not come back at the next sign-in.
    services.membership_delete(tenant=tenant_a, actor=Actor.user(alice), membership=membership)
    client.post("/logout/")
    assert client.post("/login/", {"username": "newcomer", "password": PASSWORD}
                       ).status_code == 302
    assert not Membership.objects.filter(tenant=tenant_a, user=newcomer).exists()


def test_expired_and_revoked_invitations_do_nothing(client, alice, tenant_a):
    expired = _invite(tenant_a, alice, email="late@example.com")
    Invitation.objects.filter(pk=expired.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1))
    revoked = _invite(tenant_a, alice, email="gone@example.com")
    invitations.invitation_revoke(tenant=tenant_a, actor=Actor.user(alice), invitation=revoked)
    for name in ("late", "gone"):
        user = UserFactory(username=name, email=f"{name}@example.com")
        assert client.post("/login/", {"username": name, "password": PASSWORD}
                           ).status_code == 302
        assert not Membership.objects.filter(user=user).exists()
    expired.refresh_from_db()
    assert expired.state == "expired"


def test_the_strongest_invitation_wins_and_an_existing_member_keeps_their_role(tenant_a,
                                                                               alice, victor):
    ExternalIdentity.objects.create(user=victor, issuer=ISSUER, subject="v")
    newcomer = UserFactory(username="nina", email="nina@example.com")
    ExternalIdentity.objects.create(user=newcomer, issuer=ISSUER, subject="n")
    _invite(tenant_a, alice, email="nina@example.com", role=Role.VIEWER)
    _invite(tenant_a, alice, issuer=ISSUER, subject="n", role=Role.APPROVER)
    Membership.objects.filter(user=victor).delete()  # not a member when invited …
    late = _invite(tenant_a, alice, issuer=ISSUER, subject="v", role=Role.ADMIN)
    services.membership_create(tenant=tenant_a, actor=Actor.system("test"), user=victor,
                               role=Role.VIEWER)  # … but one by the time he signs in
    invitations.invitations_accept(user=newcomer, email="nina@example.com",
                                   identities=[(ISSUER, "n")])
    invitations.invitations_accept(user=victor, email="", identities=[(ISSUER, "v")])
    assert Membership.objects.get(tenant=tenant_a, user=newcomer).role == Role.APPROVER
    assert Membership.objects.get(tenant=tenant_a, user=victor).role == Role.VIEWER
    assert not invitations.pending_invitations().exists()
    late.refresh_from_db()
    assert late.accepted_by == victor
    outcomes = sorted(AuditEvent.objects.filter(action="invitation.accepted")
                      .values_list("after__outcome", flat=True))
    assert outcomes == ["already a member", "member added", "member added"]


@pytest.fixture
def oidc_backend(settings, monkeypatch):
    """The real backend; only the userinfo call to the IdP answers from ``claims``."""
    settings.OIDC_RP_CLIENT_ID = "tollgate"
    settings.OIDC_RP_CLIENT_SECRET = "s3cret"
    settings.OIDC_OP_ISSUER = ISSUER
    settings.OIDC_OP_TOKEN_ENDPOINT = f"{ISSUER}/token"
    settings.OIDC_OP_USER_ENDPOINT = f"{ISSUER}/me"
    settings.OIDC_OP_JWKS_ENDPOINT = f"{ISSUER}/jwks"
    backend = TollgateOIDCBackend()
    claims: dict = {}
    monkeypatch.setattr(backend, "get_userinfo", lambda *args: claims)

    def sign_in(**userinfo):
        claims.clear()
        claims.update(userinfo)
        return backend.get_or_create_user("access", "id", {"iss": ISSUER,
                                                           "sub": userinfo["sub"]})

    return sign_in


def test_an_oidc_sign_in_takes_up_invitations_by_subject_or_verified_address(
        oidc_backend, tenant_a, alice):
    _invite(tenant_a, alice, issuer=ISSUER, subject="sub-carol", role=Role.APPROVER)
    _invite(tenant_a, alice, email="dan@example.com", role=Role.AUDITOR)
    carol = oidc_backend(sub="sub-carol", preferred_username="carol", groups=[])
    assert Membership.objects.get(tenant=tenant_a, user=carol).role == Role.APPROVER
    # An address the IdP has not verified, or does not say it verified, takes up nothing …
    dan = oidc_backend(sub="sub-dan", preferred_username="dan", email="dan@example.com",
                       email_verified=False, groups=[])
    assert not Membership.objects.filter(user=dan).exists()
    oidc_backend(sub="sub-dan", preferred_username="dan", email="dan@example.com", groups=[])
    assert not Membership.objects.filter(user=dan).exists()
    # … a verified one does.
    oidc_backend(sub="sub-dan", preferred_username="dan", email="dan@example.com",
                 email_verified=True, groups=[])
    assert Membership.objects.get(tenant=tenant_a, user=dan).role == Role.AUDITOR
    assert AuditEvent.objects.filter(tenant=tenant_a, action="invitation.accepted").count() == 2
    # The invited membership is the invitation's, not the IdP's: a later sign-in with no mapped
    # group leaves it alone.
    oidc_backend(sub="sub-carol", preferred_username="carol", groups=[])
    assert Membership.objects.get(tenant=tenant_a, user=carol).source == "invitation"
