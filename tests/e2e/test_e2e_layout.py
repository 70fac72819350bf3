"""End to end: the layout of the web UI in a real browser (Chromium, Playwright).

An admin visits the main pages of a tenant full of data, with 200-character names, at 1366 and
768 px wide: no page may be wider than the window (a wide table scrolls inside its own card), and
each page is saved as a screenshot under test-artifacts/layout/ for a person to look at. The
tenant navigation is a sidebar of groups that mirror the apps; each role sees only its groups.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from alerts import services as alerts
from alerts.models import Alert
from approvals import selectors as approval_selectors
from approvals.models import Escalation
from governance.audit.models import AuditEvent
from governance.audit.services import Actor
from registry import services as registry
from registry.models import Tool
from tests.bundle_support import SYSTEM
from tests.e2e_support import ARTIFACTS_DIR
from tests.factories import Def, def_sha
from tests.observability_support import SHA, event, ingest, seeded_world
from tests.ui_support import TENANT, sign_in

pytestmark = pytest.mark.e2e

WIDTHS = (1366, 768)
HEIGHT = 900
SCREENSHOTS = ARTIFACTS_DIR / "layout"
# 200 characters with no space to break at, as a careless (or hostile) registrant would type it.
LONG = ("payroll-" + "x" * 192)[:200]
LONG_SCOPE = ("scope-" + "y" * 94)[:100]  # a scope name holds at most 100
ARGS = {"employee": "e-17", "amount": 1200, "memo": "z" * 180,
        "lines": [{"account": "4711", "note": "ünïcode ✓"}]}
GROUPS = ("registry", "policy", "approvals", "fleet", "observability", "compliance",
          "administration")
ROLE_GROUPS = {
    "alice": set(GROUPS),  # admin
    "bob": {"registry", "policy", "approvals", "fleet", "observability", "administration"},
    "audrey": {"registry", "policy", "fleet", "observability", "compliance", "administration"},
    "dave": {"registry", "policy", "approvals", "fleet", "observability", "administration"},
    "victor": {"registry", "policy", "fleet", "observability", "administration"},
}


def seed_long_names(tenant, *, owner, requester) -> dict:
    """seeded_world plus a server, tool, scope and agent named with 200 characters, a held call
    with arguments, an alert and a decision about them."""
    world = seeded_world(tenant, owner=owner, requester=requester)
    server = registry.server_create(tenant=tenant, actor=SYSTEM, name=LONG,
                                    description="d" * 400, transport="streamable-http",
                                    url=f"https://{'h' * 60}.example/{'p' * 120}")
    registry.server_transition(tenant=tenant, actor=SYSTEM, server=server, status="active")
    registry.tools_record_discovery(tenant=tenant, actor=SYSTEM, server=server, definitions=[
        (d, def_sha(d)) for d in (Def(LONG, description="w" * 300, title="t" * 200),)])
    tool = Tool.objects.get(server=server)
    # 200-character name and long text: the review scan rightly flags them (tool poisoning).
    registry.tool_approve(tenant=tenant, actor=SYSTEM, tool=tool, confirm_findings=True)
    scope = registry.scope_create(tenant=tenant, actor=SYSTEM, name=LONG_SCOPE, tools=[tool])
    agent = registry.agent_create(tenant=tenant, actor=SYSTEM, name=LONG, owner=owner)
    grant = registry.grant_create(tenant=tenant, actor=SYSTEM, agent=agent, scope=scope)
    held = Escalation.objects.create(
        tenant=tenant, gateway=world["gateways"]["gw-current"], call_id="c" * 100, agent=agent,
        scope=scope, server=LONG, tool=LONG, arguments=ARGS, arguments_sha256=SHA,
        stages=approval_selectors.BUILT_IN_STAGES, deadline=timezone.now() + timedelta(hours=2))
    alerts.alert_raise(tenant=tenant, kind="tool_drift", key=f"tool:{tool.pk}",
                       subject=f"Tool {LONG}/{LONG} drifted: quarantined until reviewed",
                       detail={"tool": tool.pk, "server": LONG, "name": LONG,
                               "pinned_sha256": SHA, "drifted_sha256": SHA},
                       actor=Actor.system("test"))
    decision = {**event(f"{tenant.slug}-long", outcome="deny", agent=LONG, at=timezone.now(),
                        server=LONG, tool=LONG)}
    decision["input"]["arguments"] = ARGS
    assert ingest(tenant, [decision], world["gateways"]["gw-current"]) == 1
    return {**world, "long_server": server, "long_tool": tool, "long_scope": scope,
            "long_agent": agent, "long_grant": grant, "held": held}


def main_pages(world) -> dict[str, str]:
    """Screenshot name → path of the page, for an admin."""
    def url(name, *args):
        return reverse(name, args=[TENANT, *args])

    from decision_logs.models import DecisionLog

    decision = DecisionLog.objects.filter(agent=LONG).get()
    return {
        "dashboard": url("observability:dashboard"),
        "servers": url("registry:servers"),
        "server": url("registry:server", world["long_server"].pk),
        "tool": url("registry:tool", world["long_tool"].pk),
        "scopes": url("registry:scopes"),
        "scope": url("registry:scope", world["long_scope"].pk),
        "agents": url("registry:agents"),
        "agent": url("registry:agent", world["long_agent"].pk),
        "grants": url("registry:grants"),
        "approvals-inbox": url("approvals:inbox"),
        "escalation": url("approvals:escalation", world["held"].pk),
        "gateways": url("bundles:gateways"),
        "gateway": url("bundles:gateway", world["gateways"]["gw-current"].pk),
        "bundles": url("bundles:bundles"),
        "audit": url("audit:log"),
        "decisions": url("decisions:list"),
        "decision": url("decisions:detail", decision.pk),
        "alerts": url("alerts:list"),
        "evidence": url("evidence:packs"),
        "members": url("tenancy:members"),
        # ...and the rest of what the navigation reaches, and the details of long names.
        "alert": url("alerts:detail", Alert.objects.get(subject__contains=LONG).pk),
        "alert-rules": url("alerts:rules"),
        "audit-event": url("audit:event", AuditEvent.objects.filter(
            action="server.created", object_repr__contains=LONG).get().pk),
        "escalations": url("approvals:escalations"),
        "my-requests": url("approvals:my_requests"),
        "approval-policies": url("approvals:policies"),
        "approvers": url("approvals:approvers"),
        "signing-keys": url("bundles:signing_keys"),
        "group-mappings": url("tenancy:group_mappings"),
        "api-tokens": url("tenancy:tokens"),
        "settings": url("tenancy:settings"),
        "notifications": url("notifications:channels"),
        "siem-export": url("exports:exporters"),
    }


def overflow(page) -> int:
    """How many pixels the page is wider than the window (0: it fits)."""
    return page.evaluate("document.documentElement.scrollWidth - window.innerWidth")


def test_main_pages_fit_the_window_at_1366_and_768_px(ui, tenant_a, cast):
    world = seed_long_names(tenant_a, owner=cast["dave"], requester=cast["dave"])
    pages = main_pages(world)
    page = ui.page
    sign_in(ui)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    too_wide = []
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": HEIGHT})
        for name, path in pages.items():
            response = page.goto(ui.url(path))
            assert response is not None and response.status == 200, (path, response)
            page.wait_for_load_state("load")
            assert page.locator("main h1").count() >= 1, path
            page.screenshot(path=SCREENSHOTS / f"{name}-{width}.png", full_page=True)
            if (extra := overflow(page)) > 0:
                too_wide.append(f"{name} at {width} px: {extra} px too wide ({path})")
    assert not too_wide, "pages wider than the window:\n" + "\n".join(too_wide)
    ui.assert_no_browser_problems()


def test_held_call_arguments_are_pretty_json_and_names_wrap(ui, tenant_a, cast):
    world = seed_long_names(tenant_a, owner=cast["dave"], requester=cast["dave"])
    page = ui.page
    sign_in(ui)
    page.set_viewport_size({"width": 768, "height": HEIGHT})
    page.goto(ui.url(reverse("approvals:inbox", args=[TENANT])))
    item = page.locator(f"#escalation-{world['held'].pk}")
    shown = item.locator("pre.json").inner_text()
    assert shown.startswith('{\n  "amount": 1200,\n  "employee": "e-17",\n'), shown
    assert '"note": "ünïcode ✓"' in shown and "'employee'" not in shown
    # The 200-character agent name wraps inside the item instead of widening the page.
    box = item.bounding_box()
    assert box is not None and box["x"] + box["width"] <= 768, box
    page.goto(ui.url(reverse("approvals:escalation", args=[TENANT, world["held"].pk])))
    assert page.locator("#arguments pre.json").inner_text().startswith('{\n  "amount": 1200')
    assert overflow(page) <= 0
    ui.assert_no_browser_problems()


def test_navigation_at_1366_px_is_a_sidebar_of_groups(ui, tenant_a, cast):
    page = ui.page
    page.set_viewport_size({"width": 1366, "height": HEIGHT})
    sign_in(ui)
    nav = page.locator("nav.tenant-nav")
    main = page.locator("main")
    nav_box, main_box = nav.bounding_box(), main.bounding_box()
    assert nav_box is not None and main_box is not None
    # Beside the page, not above it: the sidebar starts at the top bar and ends left of <main>.
    assert nav_box["x"] + nav_box["width"] <= main_box["x"], (nav_box, main_box)
    assert nav_box["y"] <= main_box["y"], (nav_box, main_box)
    headings = [h.strip() for h in nav.locator(".nav-heading").all_text_contents()]
    assert headings == ["Registry", "Policy", "Approvals", "Fleet", "Observability",
                        "Compliance", "Administration"]
    # Every link is on screen, one per line, in a single column.
    links = nav.get_by_role("link").all()
    assert len(links) == 23  # the tenant and its 22 pages
    lefts = set()
    for link in links:
        box = link.bounding_box()
        assert box is not None and box["x"] + box["width"] <= nav_box["x"] + nav_box["width"]
        lefts.add(round(box["x"]))
    assert len(lefts) == 1, lefts
    # The page you are on is marked, also below its list (a server is under Servers).
    assert nav.locator('[aria-current="page"]').count() == 0  # the tenant's home
    nav.get_by_role("link", name="My requests", exact=True).click()
    page.wait_for_url(ui.tenant_url("approvals/requests/"))
    page.wait_for_load_state("load")
    assert nav.locator('[aria-current="page"]').all_inner_texts() == ["My requests"]
    page.goto(ui.tenant_url("approvals/"))
    page.wait_for_load_state("load")
    assert nav.locator('[aria-current="page"]').get_attribute("id") == "nav-approvals"
    # The favicon is ours, from our own static files (the CSP allows nothing else).
    icon = page.locator('link[rel="icon"]').get_attribute("href")
    assert icon == "/static/favicon.svg"
    response = page.request.get(ui.url(icon))
    assert response.status == 200 and response.headers["content-type"].startswith("image/svg")
    ui.assert_no_browser_problems()


def test_each_role_sees_only_its_navigation_groups(login, tenant_a, cast):
    for username, expected in ROLE_GROUPS.items():
        body = login(cast[username]).get(f"/t/{TENANT}/").content.decode()
        groups = set(re.findall(r'id="nav-group-([a-z]+)"', body))
        assert groups == expected, (username, groups)
        for group in groups:  # no group is shown empty
            section = body.split(f'id="nav-group-{group}"', 1)[1].split("</div>", 1)[0]
            assert "<a href=" in section, (username, group)


def test_counts_are_pluralised(login, tenant_a, cast):
    from bundles.publish import bundle_publish
    from tests.bundle_support import small_registry

    small_registry(tenant_a, owner=cast["dave"])
    bundle_publish(tenant=tenant_a, trigger="test")
    body = login(cast["alice"]).get(f"/t/{TENANT}/bundles/").content.decode()
    assert "1 agent · 1 server · 2 tools · 1 scope · 1 grant" in body


def test_the_scope_created_message_counts_its_tools(login, tenant_a, cast):
    from tests.bundle_support import small_registry

    world = small_registry(tenant_a, owner=cast["dave"])
    client = login(cast["alice"])
    for name, tools, said in (("one", ["read"], "1 tool."), ("two", ["read", "pay"], "2 tools.")):
        response = client.post(f"/t/{TENANT}/scopes/new/", {
            "name": name, "risk_level": "low",
            "tools": [world["tools"][t].pk for t in tools]}, follow=True)
        assert response.status_code == 200
        assert f"Created scope {name} with {said}" in response.content.decode()


def test_audit_states_and_decision_arguments_are_pretty_json(login, tenant_a, cast):
    from decision_logs.models import DecisionLog
    from tests.bundle_support import small_registry

    small_registry(tenant_a, owner=cast["dave"])
    client = login(cast["alice"])
    created = AuditEvent.objects.get(tenant=tenant_a, action="server.created")
    body = client.get(reverse("audit:event", args=[TENANT, created.pk])).content.decode()
    assert '<pre class="json" id="event-before">—</pre>' in body
    after = body.split('id="event-after">', 1)[1].split("</pre>", 1)[0]
    assert after.startswith("{\n  &quot;command&quot;: [],\n"), after
    assert '\n  &quot;name&quot;: &quot;payroll&quot;,\n' in after and "&#x27;" not in after

    decision = event(f"{tenant_a.slug}-json", outcome="allow", agent="bot", at=timezone.now())
    decision["input"]["arguments"] = {"b": [1, 2], "a": "<script>"}
    assert ingest(tenant_a, [decision]) == 1
    row = DecisionLog.objects.get(decision_id=f"{tenant_a.slug}-json")
    body = client.get(reverse("decisions:detail", args=[TENANT, row.pk])).content.decode()
    shown = body.split('id="decision-arguments">', 1)[1].split("</pre>", 1)[0]
    assert shown == ('{\n  &quot;a&quot;: &quot;&lt;script&gt;&quot;,\n  &quot;b&quot;: [\n'
                     '    1,\n    2\n  ]\n}'), shown
