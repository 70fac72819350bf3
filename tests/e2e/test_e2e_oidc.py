"""End to end: single sign-on against a real OIDC provider, in a real browser.

Tollgate runs in-process (pytest-django's live server), the IdP is `node tests/idp/server.js`
(oidc-provider), and headless Chromium is driven by Playwright. The IdP's users file is rewritten
between logins to prove that every login re-applies the IdP group → role mappings: a membership is
created, its role changed, and it is removed when no group maps any more; signing out also ends
the IdP session (RP-initiated logout).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from governance.audit.models import AuditEvent
from governance.audit.services import Actor
from governance.tenancy import invitations, services
from governance.tenancy.models import ExternalIdentity, Membership
from governance.tenancy.roles import Role
from tests.e2e_support import (
    ARTIFACTS_DIR,
    TestIdp,
    chromium_browser,
    require_e2e_tools,
)

pytestmark = pytest.mark.e2e

CLIENT_ID = "tollgate-e2e"
CLIENT_SECRET = "e2e-client-secret-not-for-production"
BROWSER_TIMEOUT_MS = 30_000


# --- Fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def base_url(live_server) -> str:
    """The live server as the browser reaches it: 127.0.0.1, the host the IdP also uses."""
    return f"http://127.0.0.1:{urlsplit(live_server.url).port}"


@pytest.fixture
def idp(base_url, tmp_path) -> Iterator[TestIdp]:
    require_e2e_tools()
    server = TestIdp(
        workdir=tmp_path, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
        redirect_uris=[f"{base_url}/oidc/callback/"],
        post_logout_redirect_uris=[f"{base_url}/login/"],
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def oidc_settings(settings, idp) -> None:
    """OIDC configured as an operator would, read by Tollgate at request time."""
    issuer = idp.issuer
    settings.OIDC_ENABLED = True
    settings.OIDC_RP_CLIENT_ID = CLIENT_ID
    settings.OIDC_RP_CLIENT_SECRET = CLIENT_SECRET
    settings.OIDC_OP_ISSUER = issuer
    settings.OIDC_OP_AUTHORIZATION_ENDPOINT = f"{issuer}/auth"
    settings.OIDC_OP_TOKEN_ENDPOINT = f"{issuer}/token"
    settings.OIDC_OP_USER_ENDPOINT = f"{issuer}/me"
    settings.OIDC_OP_JWKS_ENDPOINT = f"{issuer}/jwks"
    settings.OIDC_OP_LOGOUT_ENDPOINT = f"{issuer}/session/end"
    settings.AUTHENTICATION_BACKENDS = [
        "governance.tenancy.oidc.TollgateOIDCBackend",
        "guardian.backends.ObjectPermissionBackend",
    ]
    # What settings.py derives from the OIDC_OP_* environment variables at start-up.
    settings.CSP_FORM_ACTION_EXTRA = [issuer]
    # Plain HTTP: secure (and so __Host-) cookies would never come back from the browser.
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    settings.SESSION_COOKIE_NAME = "tollgate_session"
    settings.CSRF_COOKIE_NAME = "tollgate_csrf"
    settings.STATIC_URL = "/static/"


@pytest.fixture
def browser() -> Iterator[Browser]:
    require_e2e_tools()
    with chromium_browser() as chromium:
        yield chromium


@pytest.fixture
def acme(transactional_db):
    system = Actor.system("e2e")
    tenant = services.tenant_create(actor=system, slug="acme", name="Acme Corp")
    services.group_mapping_create(
        tenant=tenant, actor=system, group="acme-approvers", role=Role.APPROVER
    )
    services.group_mapping_create(tenant=tenant, actor=system, group="acme-admins", role=Role.ADMIN)
    return tenant


# --- Steps -------------------------------------------------------------------------------------


def carol(groups: list[str]) -> dict[str, dict]:
    return {
        "carol": {
            "sub": "carol-sub-1", "email": "carol@example.com", "name": "Carol Example",
            "groups": groups, "password": "carol-password",
        }
    }


def new_page(browser: Browser) -> Page:
    """A page in a fresh context: no Tollgate session and no IdP session."""
    context = browser.new_context()
    context.set_default_timeout(BROWSER_TIMEOUT_MS)
    # Tollgate has no favicon. Chromium's automatic request for one would reach the live server
    # while the test reads the database (on SQLite both share one in-memory connection).
    context.route("**/favicon.ico", lambda route: route.fulfill(status=204))
    return context.new_page()


def login_page_url(base_url: str) -> re.Pattern[str]:
    return re.compile(re.escape(f"{base_url}/login/") + r"(\?.*)?$")


def sso_login(browser: Browser, base_url: str, idp: TestIdp, landing: str) -> Page:
    """Sign in as carol in a fresh browser context (the IdP keeps its own session cookie)."""
    page = new_page(browser)
    page.goto(f"{base_url}/login/")
    expect_sso_only_login_page(page)
    page.locator("#sso-login").click()

    page.wait_for_url(re.compile(re.escape(f"{idp.issuer}/interaction/")))
    page.locator('input[name="login"]').fill("carol")
    page.locator('input[name="password"]').fill("carol-password")
    page.get_by_role("button", name="Sign-in").click()

    try:
        page.wait_for_url(f"{base_url}{landing}")
    except PlaywrightTimeout as exc:
        cookies = sorted(c["name"] for c in page.context.cookies(base_url))
        query = urlsplit(page.url).query
        hint = (
            "the OIDC callback failed (see the captured Django log)"
            if "error=sso" in query or urlsplit(page.url).path == "/oidc/callback/"
            else "the callback logged carol in, but the next request was anonymous"
            if "next=" in query else "unexpected page"
        )
        raise AssertionError(
            f"after the IdP sign-in the browser is at {page.url}, not {base_url}{landing}: "
            f"{hint}\n"
            f"Tollgate cookies in the browser: {cookies}\n"
            f"--- page ---\n{page.locator('body').inner_text()}\n"
            f"--- IdP stderr ---\n{idp.stderr()}"
        ) from exc
    return page


def sign_out(page: Page, base_url: str, idp: TestIdp) -> None:
    """Click "Sign out", pass the IdP's end-session confirmation, arrive at Tollgate's login."""
    page.get_by_role("button", name="Sign out").click()
    try:
        # The IdP's confirmation page submits itself with JavaScript.
        page.wait_for_url(login_page_url(base_url), timeout=5_000)
    except PlaywrightTimeout:
        confirm = page.get_by_role("button", name="Yes, sign me out")
        assert page.url.startswith(f"{idp.issuer}/session/end") and confirm.count(), (
            f"signing out ended at {page.url}\n--- IdP stderr ---\n{idp.stderr()}"
        )
        confirm.click()
        page.wait_for_url(login_page_url(base_url))
    expect_sso_only_login_page(page)


def expect_sso_only_login_page(page: Page) -> None:
    assert page.locator("#sso-login").is_visible(), page.content()
    assert page.locator('input[type="password"]').count() == 0, "no password form with OIDC"
    assert page.locator('input[name="username"]').count() == 0


def shown_role(page: Page) -> str:
    return page.locator("main .role").first.inner_text().strip()


def carol_membership(tenant, issuer: str) -> Membership | None:
    identity = ExternalIdentity.objects.get(issuer=issuer, subject="carol-sub-1")
    return Membership.objects.for_tenant(tenant).filter(user=identity.user).first()


def actions(tenant) -> list[str]:
    return list(AuditEvent.objects.filter(tenant=tenant).values_list("action", flat=True))


# --- The scenario ------------------------------------------------------------------------------


def test_sso_login_applies_group_mappings_at_every_login(
    oidc_settings, acme, idp, browser, base_url
):
    # (a) First login: approver through acme-approvers; "unrelated" maps to nothing.
    idp.set_users(carol(["acme-approvers", "unrelated"]))
    page = sso_login(browser, base_url, idp, landing="/t/acme/")
    assert shown_role(page) == Role.APPROVER
    assert page.locator(".session .who").inner_text().startswith("carol")
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS_DIR / "e2e-oidc-approver.png", full_page=True)

    membership = carol_membership(acme, idp.issuer)
    assert membership is not None
    assert (membership.role, membership.source) == (Role.APPROVER, Membership.Source.IDP)
    user = membership.user
    assert (user.username, user.email, user.first_name) == ("carol", "carol@example.com", "Carol")
    assert not user.has_usable_password()
    created = AuditEvent.objects.get(tenant=acme, action="membership.created")
    assert created.after == {"user": "carol", "role": "approver", "source": "idp"}
    assert AuditEvent.objects.filter(
        tenant=acme, action="auth.login", actor_id=str(user.pk)
    ).exists()
    page.context.close()

    # (b) The IdP now puts carol in acme-admins only: same user, role changed to admin.
    idp.set_users(carol(["acme-admins"]))
    page = sso_login(browser, base_url, idp, landing="/t/acme/")
    assert shown_role(page) == Role.ADMIN
    membership.refresh_from_db()
    assert membership.role == Role.ADMIN
    assert ExternalIdentity.objects.filter(subject="carol-sub-1").count() == 1
    changed = AuditEvent.objects.get(tenant=acme, action="membership.role_changed")
    assert (changed.before["role"], changed.after["role"]) == ("approver", "admin")
    assert actions(acme).count("auth.login") == 2

    # (d) Sign out: Tollgate, then the IdP's end-session (its confirmation page submits itself),
    # then back to Tollgate's login page.
    sign_out(page, base_url, idp)
    assert "auth.logout" in actions(acme)
    page.goto(f"{base_url}/t/acme/")
    assert urlsplit(page.url).path == "/login/", page.url
    # The IdP session ended too: SSO asks for credentials again instead of signing in silently.
    page.locator("#sso-login").click()
    page.wait_for_url(re.compile(re.escape(f"{idp.issuer}/interaction/")))
    assert page.locator('input[name="login"]').is_visible()
    page.context.close()

    # (c) No group maps any more: the IdP-managed membership goes, "no access" shows the groups.
    idp.set_users(carol(["nothing-mapped"]))
    page = sso_login(browser, base_url, idp, landing="/")
    no_access = page.locator("#no-access")
    assert "You have no access" in no_access.inner_text()
    assert no_access.locator("code").all_inner_texts() == ["nothing-mapped"]
    assert carol_membership(acme, idp.issuer) is None
    deleted = AuditEvent.objects.get(tenant=acme, action="membership.deleted")
    assert deleted.before == {"user": "carol", "role": "admin", "source": "idp"}
    outsider = page.goto(f"{base_url}/t/acme/")
    assert outsider is not None and outsider.status == 404  # not a member any more

    # Signing out from the no-access page works as well.
    no_access_page = page.goto(f"{base_url}/")
    assert no_access_page is not None and no_access_page.ok
    page.locator("#no-access").get_by_role("button", name="Sign out").click()
    page.wait_for_url(login_page_url(base_url))
    page.context.close()

    # (e) An admin invites carol's IdP subject as a viewer: her next sign-in takes it up, though
    # no group maps her; the membership is the invitation's, not the IdP's.
    invitation = invitations.invitation_create(
        tenant=acme, actor=Actor.system("test"), invited_by=None, issuer=idp.issuer,
        subject="carol-sub-1", role=Role.VIEWER)
    page = sso_login(browser, base_url, idp, landing="/t/acme/")
    assert shown_role(page) == Role.VIEWER
    membership = carol_membership(acme, idp.issuer)
    assert (membership.role, membership.source) == (Role.VIEWER, Membership.Source.INVITATION)
    invitation.refresh_from_db()
    assert (invitation.state, invitation.accepted_by) == ("accepted", membership.user)
    assert actions(acme)[:2] == ["auth.login", "invitation.accepted"]  # newest first
    page.context.close()
