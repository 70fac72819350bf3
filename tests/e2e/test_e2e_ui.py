"""End to end: the web UI in a real browser, under the product's strict Content-Security-Policy.

Tollgate runs in-process (pytest-django's live server) with OIDC off, so the password form is
used; headless Chromium is driven by Playwright. Every page must work with `script-src 'self'`
and `style-src 'self'` and nothing inline: each test collects the browser's console errors
(Chromium logs every CSP violation as one, and the page's `securitypolicyviolation` events are
logged too), uncaught page errors and failed requests, and ends with none. A canary proves that
a CSP violation is indeed caught.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from governance.audit.models import AuditEvent
from governance.audit.services import Actor
from governance.tenancy import services
from governance.tenancy.invitations import invitation_create
from governance.tenancy.models import ApiToken, IdpGroupMapping, Membership, hash_token
from governance.tenancy.roles import Role
from tests.e2e_support import ARTIFACTS_DIR
from tests.factories import MembershipFactory, make_token
from tests.ui_support import (
    PASSWORD,
    TENANT,
    expect_heading,
    expect_styled,
    messages,
    nav,
    sign_in,
    table_rows,
)

pytestmark = pytest.mark.e2e

# Fixtures (browser, base_url, ui_settings, ui) and helpers live in tests/ui_support.py.


def seed_mappings(tenant, count: int) -> None:
    """`count` group mappings through the service: as many audit events in the tenant chain."""
    system = Actor.system("seed")
    for n in range(count):
        services.group_mapping_create(
            tenant=tenant, actor=system, group=f"seed-group-{n:02d}", role=Role.VIEWER
        )


# --- Steps -------------------------------------------------------------------------------------


def test_sign_in_loads_css_and_htmx_under_strict_csp(ui, alice, tenant_a):
    page = ui.page
    login = page.goto(ui.url("/login/"))
    assert login is not None and login.ok
    csp = login.headers.get("content-security-policy", "")
    for directive in ("script-src 'self'", "style-src 'self'", "default-src 'self'"):
        assert directive in csp, csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
    assert page.locator('input[type="password"]').count() == 1  # OIDC is off

    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(ui.tenant_url())
    expect_heading(page, "Alpha Corp")
    assert page.locator(".session .who").inner_text().startswith("alice")
    assert page.locator("main .role").first.inner_text().strip() == Role.ADMIN

    # The stylesheet applied: the top bar is dark, not the default transparent.
    expect_styled(page)
    # htmx ran, with the page's <meta name="htmx-config"> (no indicator <style> to inject, which
    # the CSP would refuse, and no eval).
    assert page.evaluate("typeof window.htmx") == "object"
    assert page.evaluate("[htmx.config.includeIndicatorStyles, htmx.config.allowEval]") == [
        False, False,
    ]
    for asset in ("/static/css/tollgate.css", "/static/vendor/htmx.min.js",
                  "/static/js/tollgate.js"):
        assert ui.static_responses.get(asset) in (200, 304), ui.static_responses
    assert AuditEvent.objects.filter(
        tenant=tenant_a, action="auth.login", actor_id=str(alice.pk)
    ).exists()
    ui.assert_no_browser_problems()


def test_a_csp_violation_would_be_caught(ui):
    """The canary: inline script and style are refused, and the recorder sees both refusals."""
    page = ui.page
    page.goto(ui.url("/login/"))
    expect_heading(page, "Sign in to Tollgate")
    ui.assert_no_browser_problems()
    with page.expect_console_message(lambda m: m.text.startswith("CSP violation")) as event:
        page.evaluate(
            """() => { const s = document.createElement("script");
                       s.textContent = "window.__inlineRan = true";
                       document.body.appendChild(s); }"""
        )
    assert "script-src" in event.value.text, event.value.text
    assert page.evaluate("window.__inlineRan === undefined")
    with page.expect_console_message(lambda m: m.text.startswith("CSP violation")) as event:
        page.evaluate(
            """() => { const s = document.createElement("style");
                       s.textContent = "body { background: red }";
                       document.head.appendChild(s); }"""
        )
    assert "style-src" in event.value.text, event.value.text
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") != "rgb(255, 0, 0)"
    refusals = [m for m in ui.problems.console_errors if "Content Security Policy" in m]
    assert len(refusals) == 2, ui.problems.console_errors


def test_admin_pages_add_mapping_and_create_token(ui, alice, tenant_a):
    page = ui.page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=ui.base_url)
    sign_in(ui)
    nav(ui, "Members", "Members of Alpha Corp")
    assert ["alice"] == [row[0] for row in table_rows(page, "#members")]
    nav(ui, "Audit log", "Audit log")
    assert page.locator("#audit-table").is_visible()
    nav(ui, "API tokens", "API tokens")
    nav(ui, "Group mappings", "IdP group → role mappings")

    # Add a group mapping through the form.
    page.get_by_label("IdP group").fill("e2e-engineers")
    page.get_by_label("Role").select_option(Role.DEVELOPER)
    page.get_by_role("button", name="Add mapping").click()
    page.wait_for_url(ui.tenant_url("group-mappings/"))
    assert messages(page) == ["Group 'e2e-engineers' now maps to developer."]
    assert ["e2e-engineers", Role.DEVELOPER] in [row[:2] for row in
                                                  table_rows(page, "#group-mappings")]
    assert IdpGroupMapping.objects.filter(
        tenant=tenant_a, group="e2e-engineers", role=Role.DEVELOPER
    ).exists()

    # Create a personal token: shown once, in #token-value.
    nav(ui, "API tokens", "API tokens")
    page.get_by_label("Name").fill("e2e laptop")
    page.get_by_label("Role").select_option(Role.AUDITOR)
    page.get_by_label("Expires in").select_option("30")
    page.get_by_role("button", name="Create token").click()
    expect_heading(page, "API tokens")
    value = page.locator("#token-value")
    plaintext = value.inner_text().strip()
    assert len(plaintext) >= 40, plaintext
    assert page.content().count(plaintext) == 1
    assert page.locator("#new-token h2").inner_text() == "Token “e2e laptop” created"
    token = ApiToken.objects.get(tenant=tenant_a, name="e2e laptop")
    assert token.token_hash == hash_token(plaintext)
    assert (token.kind, token.role, token.user) == (ApiToken.Kind.PERSONAL, Role.AUDITOR, alice)
    assert plaintext.startswith(token.prefix)
    # The Copy button (static/js/tollgate.js) works under the CSP.
    page.get_by_role("button", name="Copy").click()
    page.get_by_role("button", name="Copied").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == plaintext

    # Reloading (the page came from a 303 after the POST, so nothing is re-submitted): the
    # token is listed by its prefix, its value is gone, and there is still exactly one.
    page.reload()
    expect_heading(page, "API tokens")
    assert ApiToken.objects.filter(name="e2e laptop").count() == 1
    assert page.locator("#token-value").count() == 0
    assert plaintext not in page.content()
    assert [["e2e laptop", f"{token.prefix}…"]] == [row[:2] for row in
                                                    table_rows(page, "#tokens")]
    ui.assert_no_browser_problems()


def test_audit_log_htmx_filter_and_verify(ui, alice, tenant_a):
    seed_mappings(tenant_a, 60)
    page = ui.page
    sign_in(ui)
    page.goto(ui.tenant_url("audit/"))
    expect_heading(page, "Audit log")
    total = AuditEvent.objects.filter(tenant=tenant_a).count()
    assert total > 50
    pagination = page.locator("#audit-events nav.pagination")
    assert f"Page 1 of 2 ({total} in all)" in pagination.inner_text()
    assert len(table_rows(page, "#audit-table")) == 50
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS_DIR / "e2e-ui-audit.png", full_page=True)

    # Filter through htmx: the table is swapped in place, the URL is pushed, no navigation.
    page.evaluate("window.__marker = 1")
    form = page.locator("form.filters")
    form.get_by_label("Actor").fill("alice")
    form.get_by_label("Action").fill("auth.login")
    with page.expect_response(lambda r: "/audit/?" in r.url) as filtered:
        form.get_by_role("button", name="Filter").click()
    response = filtered.value
    assert response.status == 200
    assert response.request.headers.get("hx-request") == "true"
    page.wait_for_url(re.compile(r"/audit/\?"))
    rows = page.locator("#audit-table tbody tr")
    page.wait_for_function("document.querySelectorAll('#audit-table tbody tr').length === 1")
    assert rows.count() == 1
    assert table_rows(page, "#audit-table")[0][2:4] == ["alice user", "auth.login"]
    assert pagination.count() == 0
    assert page.evaluate("window.__marker") == 1, "the filter reloaded the whole page"
    query = parse_qs(urlsplit(page.url).query)
    assert (query["actor"], query["action"]) == (["alice"], ["auth.login"])
    # The page around the table stayed as it was (no page nested into the table).
    assert page.locator("main h1").count() == 1
    assert page.locator("header.topbar").count() == 1

    # Verify the hash chain through htmx.
    result = page.locator("#verify-result")
    page.get_by_role("button", name="Verify hash chain now").click()
    result.locator(".ok").wait_for()
    assert result.inner_text().strip() == f"tenant {TENANT}: OK ({total} events)"
    assert page.evaluate("window.__marker") == 1, "verifying reloaded the whole page"

    page.screenshot(path=ARTIFACTS_DIR / "e2e-ui-audit-filtered.png", full_page=True)

    # The pushed URL is a real page: opened directly it renders the same filtered table.
    page.goto(page.url)
    expect_heading(page, "Audit log")
    assert len(table_rows(page, "#audit-table")) == 1
    assert page.locator("form.filters").get_by_label("Actor").input_value() == "alice"
    ui.assert_no_browser_problems()


def test_removing_a_member_needs_confirmation(ui, alice, bob, tenant_a):
    page = ui.page
    sign_in(ui)
    nav(ui, "Members", "Members of Alpha Corp")

    def remove_link_of(username: str):
        row = page.locator("#members tbody tr").filter(
            has=page.locator("td", has_text=re.compile(f"^{username}$"))
        )
        return row.get_by_role("link", name="Remove")

    remove_link_of("bob").click()
    expect_heading(page, "Remove bob?")
    page.get_by_role("link", name="Cancel").click()
    expect_heading(page, "Members of Alpha Corp")
    assert sorted(row[0] for row in table_rows(page, "#members")) == ["alice", "bob"]
    assert Membership.objects.filter(tenant=tenant_a, user=bob).exists()

    remove_link_of("bob").click()
    expect_heading(page, "Remove bob?")
    page.get_by_role("button", name="Remove member").click()
    page.wait_for_url(ui.tenant_url("members/"))
    assert messages(page) == ["Removed bob."]
    assert [row[0] for row in table_rows(page, "#members")] == ["alice"]
    assert not Membership.objects.filter(tenant=tenant_a, user=bob).exists()
    assert AuditEvent.objects.filter(tenant=tenant_a, action="membership.deleted").count() == 1
    ui.assert_no_browser_problems()


def test_inviting_and_revoking_an_invitation(ui, alice, tenant_a):
    page = ui.page
    sign_in(ui)
    nav(ui, "Members", "Members of Alpha Corp")
    page.get_by_label("E-mail address").fill("new@example.com")
    page.get_by_label("Role").select_option("auditor")
    page.get_by_role("button", name="Send invitation").click()
    page.wait_for_url(ui.tenant_url("members/"))
    assert messages(page) == [
        "Invited new@example.com as auditor: they become a member at their next sign-in."]
    assert [row[:3] for row in table_rows(page, "#invitations")] == [
        ["new@example.com", "auditor", "alice"]]

    page.locator("#invitations").get_by_role("link", name="Revoke").click()
    expect_heading(page, "Revoke the invitation of new@example.com?")
    page.get_by_role("button", name="Revoke invitation").click()
    page.wait_for_url(ui.tenant_url("members/"))
    assert messages(page) == ["Revoked the invitation of new@example.com."]
    assert page.locator("#invitations").count() == 0
    assert list(AuditEvent.objects.filter(tenant=tenant_a, action__startswith="invitation.")
                .order_by("seq").values_list("action", flat=True)) == [
        "invitation.created", "invitation.revoked"]
    ui.assert_no_browser_problems()


def test_sign_out(ui, alice, tenant_a):
    page = ui.page
    sign_in(ui)
    page.locator("header.topbar").get_by_role("button", name="Sign out").click()
    page.wait_for_url(ui.url("/login/"))
    assert page.get_by_role("button", name="Sign in").is_visible()
    assert page.locator("header.topbar .session").inner_text().strip() == ""
    assert AuditEvent.objects.filter(
        tenant=tenant_a, action="auth.logout", actor_id=str(alice.pk)
    ).exists()
    # Signed out for real: the tenant sends the browser back to the login page.
    page.goto(ui.tenant_url())
    assert urlsplit(page.url).path == "/login/", page.url
    ui.assert_no_browser_problems()


def test_every_other_page_renders_under_the_csp(ui, alice, bob, tenant_a, tenant_b):
    """Pages the scenarios above do not reach: picker, switcher, edit forms, confirmations,
    an audit event, the member search and the 404 page, all styled and free of errors."""
    MembershipFactory(tenant=tenant_b, user=alice, role=Role.VIEWER)
    mapping = services.group_mapping_create(
        tenant=tenant_a, actor=Actor.system("seed"), group="e2e-ops", role=Role.APPROVER
    )
    token, _ = make_token(tenant_a, user=alice, role=Role.VIEWER, name="ci")
    invitation = invitation_create(tenant=tenant_a, actor=Actor.system("seed"), invited_by=alice,
                                   email="new@example.com", role=Role.AUDITOR)
    page = ui.page
    sign_in(ui, landing=ui.url("/"))  # two tenants: the picker
    expect_heading(page, "Choose a tenant")
    expect_styled(page)
    page.get_by_role("link", name="Alpha Corp").click()
    expect_heading(page, "Alpha Corp")
    switcher = page.locator("details.switcher")
    switcher.locator("summary").click()
    assert switcher.get_by_role("link", name="Bravo Inc").is_visible()
    assert switcher.locator("ul").evaluate("el => getComputedStyle(el).position") == "absolute"

    event = AuditEvent.objects.filter(tenant=tenant_a, action="group_mapping.created").get()
    membership = Membership.objects.get(tenant=tenant_a, user=bob)
    for path, heading in [
        (f"group-mappings/{mapping.pk}/", "Group e2e-ops"),
        (f"group-mappings/{mapping.pk}/delete/", "Delete the mapping of group 'e2e-ops'?"),
        (f"members/{membership.pk}/", "bob"),
        (f"tokens/{token.pk}/revoke/", f"Revoke token 'ci' ({token.prefix}…)?"),
        (f"invitations/{invitation.pk}/revoke/", "Revoke the invitation of new@example.com?"),
        (f"audit/{event.pk}/", f"Audit event #{event.seq} group_mapping.created"),
    ]:
        response = page.goto(ui.tenant_url(path))
        assert response is not None and response.status == 200, path
        expect_heading(page, heading)
        expect_styled(page)

    page.goto(ui.tenant_url("members/"))
    page.get_by_label("Search members").fill("bo")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url(ui.tenant_url("members/?q=bo"))
    expect_heading(page, "Members of Alpha Corp")
    assert [row[0] for row in table_rows(page, "#members")] == ["bob"]

    missing = page.goto(ui.tenant_url("no-such-page/"))
    assert missing is not None and missing.status == 404
    expect_heading(page, "Not found")
    # The error pages are standalone (no top bar), linking the same stylesheet.
    card = page.locator("section.card")
    assert card.evaluate("el => getComputedStyle(el).borderTopLeftRadius") == "8px"
    ui.forget_console_errors("the server responded with a status of 404 ")
    ui.assert_no_browser_problems()


def test_audit_filter_errors_are_shown(ui, alice, tenant_a):
    page = ui.page
    sign_in(ui)
    page.goto(ui.tenant_url("audit/"))
    expect_heading(page, "Audit log")
    page.evaluate("window.__marker = 1")
    form = page.locator("form.filters")
    today = datetime.now(UTC).date()
    form.get_by_label("From").fill(f"{today - timedelta(days=30)}")
    form.get_by_label("To (inclusive)").fill(f"{today - timedelta(days=60)}")
    with page.expect_response(lambda r: "/audit/?" in r.url):
        form.get_by_role("button", name="Filter").click()
    error = page.locator("#audit-events .error")
    error.wait_for()
    assert error.inner_text().strip() == "“From” must be on or before “To”."
    assert page.evaluate("window.__marker") == 1
    # Whether the fix answers 200 or keeps 400 (and lets htmx swap it), nothing else may go wrong.
    ui.forget_console_errors("the server responded with a status of 400 ")
    ui.assert_no_browser_problems()
