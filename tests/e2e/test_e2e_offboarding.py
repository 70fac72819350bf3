"""End to end: offboarding at the IdP reaches a running Tollgate session, in a real browser
against the real OpenID provider (``node tests/idp/server.js``, oidc-provider).

- Back-channel logout: the IdP's session ends (here the user signs out at the IdP itself, not
  through Tollgate) and oidc-provider POSTs a logout token to Tollgate: the Tollgate session
  is dead at the next request.
- Re-validation, for an IdP that sends neither SCIM nor back-channel logouts: the user is
  deleted at the IdP (or loses every mapped group); once ``OIDC_RECHECK_SECONDS`` have passed,
  the next request finds that out from the IdP and the session ends.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page

from governance.audit.models import AuditEvent
from governance.tenancy.models import Membership, UserSession
from tests.e2e.test_e2e_oidc import (  # noqa: F401 - fixtures used by name
    CLIENT_ID,
    CLIENT_SECRET,
    acme,
    base_url,
    browser,
    carol,
    oidc_settings,
    sso_login,
)
from tests.e2e_support import TestIdp, require_e2e_tools

pytestmark = pytest.mark.e2e

WAIT_SECONDS = 60


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds (generous timeout: never a wall-clock assertion)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_SECONDS} s: {what}")
        time.sleep(0.25)


@pytest.fixture
def idp(request, base_url, tmp_path) -> Iterator[TestIdp]:  # noqa: F811
    """The test IdP with back-channel logout to Tollgate; issuing refresh tokens when the test
    is parametrized with "refresh-token"."""
    require_e2e_tools()
    server = TestIdp(
        workdir=tmp_path, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
        redirect_uris=[f"{base_url}/oidc/callback/"],
        post_logout_redirect_uris=[f"{base_url}/login/"],
        backchannel_logout_uri=f"{base_url}/oidc/backchannel-logout/",
        refresh_tokens=getattr(request, "param", "") == "refresh-token",
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def signed_out(page: Page, base_url: str) -> bool:  # noqa: F811
    page.goto(f"{base_url}/t/acme/")
    return urlsplit(page.url).path == "/login/"


def ended_reasons(tenant) -> list[str]:
    return [e.after["reason"] for e in AuditEvent.objects.filter(
        tenant=tenant, action="auth.session_ended")]


def test_a_back_channel_logout_from_the_idp_ends_the_tollgate_session(
    oidc_settings, acme, idp, browser, base_url  # noqa: F811
):
    idp.set_users(carol(["acme-approvers"]))
    page = sso_login(browser, base_url, idp, landing="/t/acme/")
    row = UserSession.objects.get(user__username="carol")
    assert (row.issuer, row.subject) == (idp.issuer, "carol-sub-1")
    assert row.sid, "the ID token carried the IdP's session id"
    assert not signed_out(page, base_url)

    # The person signs out at the IdP itself (another application's sign-out, or the IdP's
    # admin ending the session): oidc-provider POSTs a logout token to Tollgate.
    page.goto(f"{idp.issuer}/session/end?client_id={CLIENT_ID}")
    page.wait_for_url(re.compile(re.escape(f"{idp.issuer}/session/end/success")))
    wait_until(lambda: not UserSession.objects.filter(pk=row.pk).exists(),
               f"the back-channel logout reached Tollgate\n{idp.stderr()}")
    assert signed_out(page, base_url)
    assert ended_reasons(acme) == ["the IdP ended the sign-in (back-channel logout)"]
    assert Membership.objects.filter(tenant=acme, user=row.user).exists()  # only the session
    page.context.close()


@pytest.mark.parametrize("idp", ["userinfo", "refresh-token"], indirect=True)
def test_revalidation_ends_the_session_of_a_user_deleted_at_the_idp(
    oidc_settings, acme, idp, browser, base_url, settings  # noqa: F811
):
    settings.OIDC_RECHECK_SECONDS = 1
    idp.set_users(carol(["acme-approvers"]))
    page = sso_login(browser, base_url, idp, landing="/t/acme/")
    row = UserSession.objects.get(user__username="carol")
    # While the IdP still knows her, re-checks keep the session (and confirm the membership).
    wait_until(lambda: not signed_out(page, base_url)
               and UserSession.objects.get(pk=row.pk).last_checked_at > row.last_checked_at,
               "a re-check confirmed the session")

    idp.set_users({})  # deleted at the IdP; nothing is sent to Tollgate
    wait_until(lambda: signed_out(page, base_url), "re-validation ended the session")
    expected = ("re-validation: the IdP refused the session's refresh token (invalid_grant)"
                if idp.refresh_tokens else
                "re-validation: the IdP's userinfo endpoint refused the session's access token "
                "(401)")
    assert ended_reasons(acme) == [expected]
    assert not UserSession.objects.filter(user=row.user).exists()
    page.context.close()


def test_revalidation_ends_the_session_when_no_group_maps_any_more(
    oidc_settings, acme, idp, browser, base_url, settings  # noqa: F811
):
    settings.OIDC_RECHECK_SECONDS = 1
    idp.set_users(carol(["acme-approvers"]))
    page = sso_login(browser, base_url, idp, landing="/t/acme/")
    user = UserSession.objects.get(user__username="carol").user

    idp.set_users(carol(["nothing-mapped"]))
    wait_until(lambda: signed_out(page, base_url), "re-validation ended the session")
    assert not Membership.objects.filter(tenant=acme, user=user).exists()
    assert ended_reasons(acme) == [
        "re-validation: the IdP's groups map to no role any more"]
    page.context.close()
