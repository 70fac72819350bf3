"""Session re-validation with the IdP (governance/tenancy/revalidation.py), the IdP's answers
stubbed at the HTTP boundary (the end-to-end test in tests/e2e/test_e2e_offboarding.py asks the
real oidc-provider)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import requests
from django.test import Client

from governance.audit.models import AuditEvent
from governance.tenancy import revalidation
from governance.tenancy.models import ExternalIdentity, Membership, UserSession
from governance.tenancy.roles import Role
from governance.tenancy.user_sessions import OIDC_TOKENS_KEY, RECHECK_AT_KEY
from tests.factories import GroupMappingFactory

ISSUER = "https://idp.example"


class Answer:
    """A stand-in for requests' Response: a status and a JSON body."""

    def __init__(self, status: int, body: dict | None = None) -> None:
        self.status_code = status
        self._body = body or {}
        self.headers = {"content-type": "application/json"}

    def json(self):
        return self._body

    def raise_for_status(self):
        if self.status_code >= 400:
            raise requests.HTTPError(f"HTTP {self.status_code}", response=self)


@pytest.fixture
def idp(settings, monkeypatch):
    """OIDC on; ``idp.userinfo`` / ``idp.token`` say what the IdP answers (an Answer or an
    exception); ``idp.calls`` counts the requests."""
    settings.OIDC_ENABLED = True
    settings.OIDC_RP_CLIENT_ID = "tollgate"
    settings.OIDC_RP_CLIENT_SECRET = "s3cret"
    settings.OIDC_OP_ISSUER = ISSUER
    settings.OIDC_OP_TOKEN_ENDPOINT = f"{ISSUER}/token"
    settings.OIDC_OP_USER_ENDPOINT = f"{ISSUER}/me"
    settings.OIDC_OP_JWKS_ENDPOINT = f"{ISSUER}/jwks"
    settings.OIDC_OP_AUTHORIZATION_ENDPOINT = f"{ISSUER}/auth"
    settings.OIDC_RECHECK_SECONDS = 300
    settings.OIDC_RECHECK_GRACE_SECONDS = 3600

    class Idp:
        userinfo: object = Answer(200, {"sub": "carol-sub", "groups": ["staff"]})
        token: object = Answer(200, {"access_token": "at-2", "refresh_token": "rt-2"})
        calls: list[str] = []

    def answer(kind):
        def call(url, *args, **kwargs):
            Idp.calls.append(kind)
            result = getattr(Idp, kind)
            if isinstance(result, Exception):
                raise result
            return result
        return call

    monkeypatch.setattr(requests, "get", answer("userinfo"))
    monkeypatch.setattr(revalidation.requests, "post", answer("token"))
    Idp.calls = []
    return Idp


@pytest.fixture
def carol(tenant_a, login):
    """carol, a viewer of tenant A through IdP group "staff", with one OIDC session."""
    from governance.tenancy import services

    GroupMappingFactory(tenant=tenant_a, group="staff", role=Role.VIEWER)
    user = services.identity_login(issuer=ISSUER, subject="carol-sub", username="carol",
                                   email="", full_name="", groups=["staff"])
    client = login(user)
    UserSession.objects.filter(user=user).update(issuer=ISSUER, subject="carol-sub", sid="s1")
    session = client.session
    session[OIDC_TOKENS_KEY] = {"access_token": "at-1", "refresh_token": ""}
    session[RECHECK_AT_KEY] = time.time() - 1  # due
    session.save()
    client.user = user
    return client


def page(client: Client) -> int:
    return client.get("/t/alpha/").status_code


def due(client: Client) -> float:
    return client.session.get(RECHECK_AT_KEY, 0)


def test_a_confirmed_session_goes_on_and_is_not_checked_again_before_it_is_due(idp, carol):
    assert page(carol) == 200
    assert idp.calls == ["userinfo"]
    assert due(carol) > time.time() + 200
    assert page(carol) == 200
    assert idp.calls == ["userinfo"]  # not due yet
    assert Membership.objects.get(user=carol.user).last_confirmed_at is not None


def test_a_user_the_idp_no_longer_knows_loses_the_session(idp, carol):
    idp.userinfo = Answer(401, {"error": "invalid_token"})
    response = carol.get("/t/alpha/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert not UserSession.objects.filter(user=carol.user).exists()
    event = AuditEvent.objects.get(action="auth.session_ended")
    assert event.actor_label == "oidc-revalidation"
    assert event.after["reason"] == ("re-validation: the IdP's userinfo endpoint refused the "
                                     "session's access token (401)")
    assert page(carol) == 302  # and it stays signed out


def test_groups_that_no_longer_map_remove_the_membership_and_the_session(idp, carol, tenant_a):
    idp.userinfo = Answer(200, {"sub": "carol-sub", "groups": ["unmapped"]})
    assert page(carol) == 302
    assert not Membership.objects.filter(user=carol.user).exists()
    assert ExternalIdentity.objects.get(subject="carol-sub").last_groups == ["unmapped"]
    assert list(AuditEvent.objects.filter(tenant=tenant_a, action__in=[
        "membership.deleted", "auth.session_ended"]).order_by("seq").values_list(
        "action", flat=True)) == ["membership.deleted", "auth.session_ended"]


def test_changed_groups_change_the_role_and_keep_the_session(idp, carol, tenant_a):
    GroupMappingFactory(tenant=tenant_a, group="approvers", role=Role.APPROVER)
    idp.userinfo = Answer(200, {"sub": "carol-sub", "groups": ["approvers"]})
    assert page(carol) == 200
    assert Membership.objects.get(user=carol.user).role == Role.APPROVER


def test_another_subject_in_the_answer_ends_the_session(idp, carol):
    idp.userinfo = Answer(200, {"sub": "mallory", "groups": ["staff"]})
    assert page(carol) == 302


def test_a_refresh_token_is_used_first_and_the_rotated_one_kept(idp, carol):
    session = carol.session
    session[OIDC_TOKENS_KEY] = {"access_token": "at-1", "refresh_token": "rt-1"}
    session.save()
    assert page(carol) == 200
    assert idp.calls == ["token", "userinfo"]
    assert carol.session[OIDC_TOKENS_KEY] == {"access_token": "at-2", "refresh_token": "rt-2"}


def test_a_refused_refresh_token_ends_the_session(idp, carol):
    session = carol.session
    session[OIDC_TOKENS_KEY] = {"access_token": "at-1", "refresh_token": "rt-1"}
    session.save()
    idp.token = Answer(400, {"error": "invalid_grant"})
    assert page(carol) == 302
    assert AuditEvent.objects.get(action="auth.session_ended").after["reason"] == (
        "re-validation: the IdP refused the session's refresh token (invalid_grant)")


@pytest.mark.parametrize("failure", [
    requests.ConnectionError("connection refused"),
    Answer(503),
])
def test_an_unreachable_idp_keeps_the_session_within_the_grace_then_ends_it(
    idp, carol, failure, caplog
):
    idp.userinfo = failure
    assert page(carol) == 200  # kept: fail open within the grace …
    assert "could not confirm a session of carol; kept" in caplog.text
    assert UserSession.objects.filter(user=carol.user).exists()
    assert time.time() < due(carol) <= time.time() + revalidation.RETRY_SECONDS
    # … until the IdP has not vouched for it for longer than recheck + grace: fail closed.
    UserSession.objects.filter(user=carol.user).update(
        last_checked_at=UserSession.objects.get(user=carol.user).last_checked_at
        - timedelta(seconds=300 + 3600 + 1))
    session = carol.session
    session[RECHECK_AT_KEY] = time.time() - 1
    session.save()
    assert page(carol) == 302
    assert "has not confirmed it" in caplog.text


def test_a_session_no_longer_in_the_registry_is_ended(idp, carol):
    UserSession.objects.filter(user=carol.user).delete()
    assert page(carol) == 302
    assert idp.calls == []


def test_with_rechecks_off_nothing_is_asked(idp, carol, settings):
    settings.OIDC_RECHECK_SECONDS = 0
    idp.userinfo = Answer(401)
    assert page(carol) == 200
    assert idp.calls == []


def test_a_password_session_is_never_rechecked(idp, login, victor):
    client = login(victor)
    assert page(client) == 200
    assert idp.calls == []
