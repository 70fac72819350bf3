"""The tenant dashboard: its SVG chart functions (pure, escaped, empty states), its selectors
(buckets, freshness, approvals waiting, drifted tools) and the page (every member, outsiders
404, numbers in the table fallbacks, attacker-controlled agent names escaped)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import timedelta

import pytest
from django.utils import timezone

from bundles.models import Gateway
from decision_logs.models import DecisionRollup
from observability import charts, selectors
from tests.observability_support import (
    DENIED_BY_AGENT,
    EVIL_AGENT,
    OLDER,
    RECENT,
    event,
    ingest,
)

SVG = "{http://www.w3.org/2000/svg}"
URL = "/t/alpha/dashboard/"


def parse(svg: str) -> ET.Element:
    """Well-formed XML (a stray '<' from an unescaped label would fail here)."""
    return ET.fromstring(str(svg))  # noqa: S314 - our own markup, parsed to check it


def texts(root: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]


# --- Chart functions (pure) ---------------------------------------------------------------------

SERIES = [charts.Series("allow", "Allowed", "#1c7c4a"), charts.Series("deny", "Denied", "#c0312b")]


def test_stacked_bars_draw_one_rect_per_nonzero_value_with_title_and_axis_labels():
    columns = [charts.Column("10:00", "10:00–11:00", {"allow": 3, "deny": 1}),
               charts.Column("11:00", "11:00–12:00", {"allow": 0, "deny": 4})]
    root = parse(charts.stacked_bars("c-one", title="Decisions", description="3+1, 4",
                                     columns=columns, series=SERIES, x_label="Time",
                                     y_label="Decisions", empty_message="none"))
    assert root.get("role") == "img" and root.get("aria-labelledby") == "c-one-title c-one-desc"
    assert root.find(f"{SVG}title").text == "Decisions"
    assert root.find(f"{SVG}desc").text == "3+1, 4"
    bars = [(r.get("data-column"), r.get("data-series"), r.get("data-value"))
            for r in root.iter(f"{SVG}rect") if "bar" in (r.get("class") or "")]
    assert bars == [("10:00", "allow", "3"), ("10:00", "deny", "1"), ("11:00", "deny", "4")]
    labels = texts(root)
    assert "Time" in labels and "Decisions" in labels and "Allowed" in labels
    # Heights are proportional: the 4-high bar is as tall as the 3+1 stack.
    heights = {(r.get("data-column"), r.get("data-series")): float(r.get("height"))
               for r in root.iter(f"{SVG}rect") if r.get("data-series")}
    assert heights[("11:00", "deny")] == pytest.approx(
        heights[("10:00", "allow")] + heights[("10:00", "deny")], abs=0.2)


@pytest.mark.parametrize("build", [
    lambda: charts.stacked_bars("c-e", title="T", description="D", columns=[
        charts.Column("a", "a", {"allow": 0})], series=SERIES, x_label="x", y_label="y",
        empty_message="No decisions yet."),
    lambda: charts.horizontal_bars("c-e", title="T", description="D", bars=[], x_label="x",
                                   y_label="y", color="#000", empty_message="No decisions yet."),
    lambda: charts.deadline_bars("c-e", title="T", description="D", items=[], x_label="x",
                                 empty_message="No decisions yet."),
    lambda: charts.donut("c-e", title="T", description="D", slices=[
        charts.Slice("a", "A", 0, "#000")], center_label="c", empty_message="No decisions yet."),
])
def test_every_chart_has_an_empty_state(build):
    root = parse(build())
    assert "chart-empty" in root.get("class")
    assert "No decisions yet." in texts(root)
    assert root.find(f"{SVG}title").text == "T"
    assert root.find(f"{SVG}desc").text == "T: No decisions yet."
    assert not [r for r in root.iter(f"{SVG}rect") if r.get("data-value")]


EVIL = '<script>alert("x")</script> & "quotes" \'single\''


@pytest.mark.parametrize("build", [
    lambda: charts.stacked_bars("c-x", title=EVIL, description=EVIL, columns=[
        charts.Column(EVIL, EVIL, {EVIL: 2})], series=[charts.Series(EVIL, EVIL, '"red')],
        x_label=EVIL, y_label=EVIL, empty_message=EVIL),
    lambda: charts.horizontal_bars("c-x", title=EVIL, description=EVIL,
                                   bars=[charts.Bar(EVIL, 3)], x_label=EVIL, y_label=EVIL,
                                   color='"><script>', empty_message=EVIL),
    lambda: charts.deadline_bars("c-x", title=EVIL, description=EVIL,
                                 items=[charts.Deadline(EVIL, -60, EVIL),
                                        charts.Deadline(EVIL, 600)],
                                 x_label=EVIL, empty_message=EVIL),
    lambda: charts.donut("c-x", title=EVIL, description=EVIL,
                         slices=[charts.Slice(EVIL, EVIL, 1, '"x')], center_label=EVIL,
                         empty_message=EVIL),
    lambda: charts.empty_chart("c-x", title=EVIL, message=EVIL),
])
def test_every_text_and_attribute_is_escaped(build):
    svg = str(build())
    assert "<script" not in svg and "&lt;script&gt;" in svg
    root = parse(svg)  # well-formed: nothing broke out of an attribute or an element
    elements = list(root.iter())
    assert not [e for e in elements if e.tag.endswith("script")]
    assert not [name for e in elements for name in e.attrib if name.startswith("on")]
    # Parsed back, the text is the attacker's string, shown as text.
    assert EVIL in [root.find(f"{SVG}title").text, *texts(root)]


def test_long_labels_are_truncated_before_escaping_and_kept_whole_in_the_tooltip():
    label = "&" * 80
    root = parse(charts.horizontal_bars("c-l", title="T", description="D",
                                        bars=[charts.Bar(label, 1)], x_label="x", y_label="",
                                        color="#000", empty_message="-"))
    shown = [t for t in texts(root) if t.startswith("&")][0]
    assert shown.endswith("…") and len(shown) < 40
    assert root.find(f".//{SVG}rect/{SVG}title").text == f"{label}: 1"


def test_deadline_bars_mark_overdue_items_as_breached():
    root = parse(charts.deadline_bars("c-d", title="T", description="D", items=[
        charts.Deadline("late one", -600, "with alternates"),
        charts.Deadline("soon one", 3 * 3600 + 60)], x_label="Hours", empty_message="-"))
    rows = {g.get("data-label"): g for g in root.iter(f"{SVG}g") if g.get("data-label")}
    assert "breached" in rows["late one"].get("class")
    assert "breached" not in rows["soon one"].get("class")
    assert "overdue by 10 min · with alternates" in texts(rows["late one"])
    assert "3 h 1 min left" in texts(rows["soon one"])
    assert rows["late one"].find(f"{SVG}rect").get("fill") == "#c0312b"
    assert "now" in texts(root) and "overdue" in texts(root)


def test_donut_slices_add_up_to_the_whole_ring():
    slices = [charts.Slice("a", "A", 3, "#111"), charts.Slice("b", "B", 1, "#222"),
              charts.Slice("c", "C", 0, "#333")]
    root = parse(charts.donut("c-r", title="T", description="D", slices=slices,
                              center_label="gateways", empty_message="-"))
    arcs = [c for c in root.iter(f"{SVG}circle") if c.get("data-series")]
    assert [(c.get("data-series"), c.get("data-value")) for c in arcs] == [("a", "3"), ("b", "1")]
    lengths = [float(c.get("stroke-dasharray").split()[0]) for c in arcs]
    circumference = sum(float(v) for v in arcs[0].get("stroke-dasharray").split())
    assert sum(lengths) == pytest.approx(circumference, abs=0.2)
    assert lengths[0] == pytest.approx(3 * lengths[1], abs=0.2)
    assert "4" in texts(root) and "3 (75 %)" in texts(root) and "0 (0 %)" in texts(root)


def test_a_single_slice_fills_the_ring():
    root = parse(charts.donut("c-s", title="T", description="D",
                              slices=[charts.Slice("a", "A", 5, "#111")], center_label="x",
                              empty_message="-"))
    arc = [c for c in root.iter(f"{SVG}circle") if c.get("data-series")][0]
    drawn, gap = (float(v) for v in arc.get("stroke-dasharray").split())
    assert gap == 0 and drawn > 400


def test_chart_ids_are_checked():
    with pytest.raises(ValueError, match="chart id"):
        charts.empty_chart('x" onload="evil', title="T", message="M")


@pytest.mark.parametrize(("maximum", "ticks"), [
    (0, [0, 1]), (1, [0, 1]), (3, [0, 1, 2, 3]), (7, [0, 2, 4, 6, 8]), (95, [0, 50, 100]),
    (101, [0, 50, 100, 150]), (2.5, [0, 1, 2, 3]),
])
def test_nice_ticks(maximum, ticks):
    assert charts.nice_ticks(maximum) == ticks


@pytest.mark.parametrize(("seconds", "text"), [
    (30, "< 1 min"), (600, "10 min"), (-600, "10 min"), (3600, "1 h"), (3720, "1 h 2 min"),
    (86400 * 2 + 3600 * 3, "2 d 3 h"), (86400, "1 d"),
])
def test_duration_text(seconds, text):
    assert charts.duration_text(seconds) == text


# --- Selectors ----------------------------------------------------------------------------------


def test_decision_buckets_cover_the_range_hour_by_hour_or_six_hours_by_six(tenant_a, tenant_b):
    # Stored rows: hours of the real clock, never a fixed date (docs/development.md, the clock).
    hour = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    now = hour + timedelta(minutes=25)

    def rollup(tenant, at, outcome, count):
        DecisionRollup.objects.create(tenant=tenant, hour=at, outcome=outcome, count=count)

    rollup(tenant_a, hour, "allow", 7)                                      # current hour
    rollup(tenant_a, hour, "deny", 2)
    rollup(tenant_a, hour - timedelta(hours=23), "escalate", 1)             # first hour of 24
    rollup(tenant_a, hour - timedelta(hours=24), "allow", 50)               # just outside 24 h
    rollup(tenant_a, hour - timedelta(days=7, hours=-1), "deny", 4)         # first hour of 7 d
    rollup(tenant_a, hour - timedelta(days=7), "deny", 99)                  # outside 7 d
    rollup(tenant_b, hour, "allow", 1000)

    day = selectors.decision_buckets(tenant_a, range_key="24h", now=now)
    assert len(day) == 24
    assert day[0].start == hour - timedelta(hours=23)
    assert day[-1].end == hour + timedelta(hours=1)
    assert day[0].counts == {"allow": 0, "deny": 0, "escalate": 1}
    assert day[-1].counts == {"allow": 7, "deny": 2, "escalate": 0}
    assert sum(b.total for b in day) == 10

    week = selectors.decision_buckets(tenant_a, range_key="7d", now=now)
    assert len(week) == 28 and week[1].start - week[0].start == timedelta(hours=6)
    assert week[0].counts["deny"] == 4
    assert week[-1].counts == {"allow": 7, "deny": 2, "escalate": 0}
    assert sum(b.total for b in week) == 4 + 1 + 50 + 9


@pytest.mark.parametrize(("contact_ago", "revision", "newest", "state"), [
    (None, None, 3, "never"),
    (None, 3, 3, "never"),
    (timedelta(minutes=11), 3, 3, "stale"),
    (timedelta(minutes=9), 2, 3, "behind"),
    (timedelta(minutes=9), None, 3, "behind"),
    (timedelta(seconds=5), 3, 3, "current"),
    (timedelta(seconds=5), None, None, "current"),
])
def test_freshness_state(settings, contact_ago, revision, newest, state):
    settings.GATEWAY_STALE_SECONDS = 600
    now = timezone.now()
    last = now - contact_ago if contact_ago is not None else None
    assert selectors.freshness_state(last_contact=last, active_revision=revision,
                                     newest=newest, now=now) == state


def test_a_conflicting_revision_is_never_current_nor_hidden_by_staleness_order(settings):
    settings.GATEWAY_STALE_SECONDS = 600
    now = timezone.now()
    recent, old = now - timedelta(seconds=5), now - timedelta(hours=1)
    assert selectors.freshness_state(last_contact=recent, active_revision=9, newest=3, now=now,
                                     conflict="ahead") == "conflict"
    # Silent for too long: stale comes first (the conflict shows on the fleet page).
    assert selectors.freshness_state(last_contact=old, active_revision=9, newest=3, now=now,
                                     conflict="ahead") == "stale"


@pytest.mark.parametrize("how", ["ahead", "another bundle under the same number"])
def test_fleet_freshness_counts_a_gateway_on_a_foreign_revision_as_conflict(world, tenant_a,
                                                                            how):
    """After a restore a gateway may run a revision this control plane never issued (ahead of
    its newest) or issued as another bundle: the dashboard and /metrics must not call it
    current (they did: only "older than the newest" was looked at)."""
    gateway = Gateway.objects.get(tenant=tenant_a, name="gw-current")
    if how == "ahead":
        Gateway.objects.filter(pk=gateway.pk).update(active_revision=9)
    else:
        Gateway.objects.filter(pk=gateway.pk).update(last_report={"bundles": {tenant_a.slug: {
            "active_revision": "2", "active_sha256": "f" * 64}}})
    fleet = selectors.fleet_freshness(tenant_a, now=timezone.now())
    assert fleet.counts == {"current": 0, "behind": 1, "conflict": 1, "stale": 1, "never": 1}
    assert [g.name for g in fleet.gateways if g.state == "conflict"] == ["gw-current"]


def test_fleet_freshness_counts_each_state_and_leaves_disabled_gateways_apart(world, tenant_a):
    fleet = selectors.fleet_freshness(tenant_a, now=timezone.now())
    assert fleet.counts == {"current": 1, "behind": 1, "conflict": 0, "stale": 1, "never": 1}
    assert fleet.disabled == 1 and fleet.newest == 2
    behind = [g for g in fleet.gateways if g.state == "behind"][0]
    assert (behind.name, behind.behind) == ("gw-behind", 1)


def test_approvals_waiting_lists_pending_items_by_deadline_with_breaches(world, tenant_a):
    waiting = selectors.approvals_waiting(tenant_a, now=timezone.now())
    assert waiting.total == 3 and waiting.breached == 1
    assert waiting.by_kind == {"access_request": 1, "escalation": 2}
    assert [w.obj.pk for w in waiting.items] == [world["overdue"].pk, world["soon"].pk,
                                                 world["pending_request"].pk]
    assert [w.breached for w in waiting.items] == [True, False, False]
    assert waiting.items[0].label == "Call · bot → payroll/pay"
    assert waiting.items[2].label == "Access · bot → payroll"


def test_drifted_tools_are_the_quarantined_ones(world, tenant_a):
    assert [t.name for t in selectors.drifted_tools(tenant_a)] == ["export"]


# --- The page -----------------------------------------------------------------------------------


def _table(html: str, table_id: str) -> list[list[str]]:
    body = re.search(rf'<table id="{table_id}">(.*?)</table>', html, re.S).group(1)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)
    return [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>",
                                                                    r, re.S)] for r in rows]


def test_every_member_sees_the_dashboard_with_the_seeded_numbers(world, login, cast):
    for name in ("victor", "dave", "audrey", "bob", "alice"):
        assert login(cast[name]).get(URL).status_code == 200, name
    response = login(cast["victor"]).get(URL)
    html = response.content.decode()
    assert '<h1>Dashboard</h1>' in html
    for chart_id in ("chart-decisions", "chart-denied-agents", "chart-fleet", "chart-approvals"):
        assert f'<svg xmlns="http://www.w3.org/2000/svg" id="{chart_id}"' in html
    total_recent = sum(RECENT.values())
    assert _table(html, "decisions-table")[-1] == [
        "All", str(RECENT["allow"]), str(RECENT["escalate"]), str(RECENT["deny"]),
        str(total_recent)]
    assert _table(html, "denied-table")[1:] == [
        ['&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;', "3"], ["bot", "2"]]
    assert _table(html, "fleet-table")[1:] == [
        ["On the newest revision", "1"], ["Behind", "1"], ["Revision conflict", "0"],
        ["Stale (no contact)", "1"],
        ["Never seen", "1"]]
    approvals = _table(html, "approvals-table")[1:]
    assert [r[0] for r in approvals] == ["Call · bot → payroll/pay", "Call · bot → payroll/read",
                                         "Access · bot → payroll"]
    assert approvals[0][2].startswith("overdue by")
    assert _table(html, "drifted-tools")[1][0].startswith("payroll/export")
    assert 'id="stat-waiting">3<' in html and "1 overdue" in html
    assert 'id="stat-current">1/4<' in html and 'id="stat-drifted">1<' in html


def test_an_attackers_agent_name_is_escaped_everywhere(world, login, cast):
    html = login(cast["victor"]).get(URL).content.decode()
    assert "<script>alert" not in html
    assert html.count("&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;") >= 3
    svg = re.search(r'(<svg [^>]*id="chart-denied-agents".*?</svg>)', html, re.S).group(1)
    root = parse(svg)
    rows = {g.get("data-label"): int(g.get("data-value")) for g in root.iter(f"{SVG}g")
            if g.get("data-label")}
    assert rows == DENIED_BY_AGENT and EVIL_AGENT in rows


def test_the_page_has_no_inline_style_or_script(world, login, cast):
    html = login(cast["victor"]).get(URL).content.decode()
    assert not re.search(r"\sstyle=", html)
    assert not re.search(r"<script(?![^>]*\ssrc=)", html)  # only the vendored files


def test_the_seven_day_view_adds_older_decisions(world, login, cast):
    client = login(cast["victor"])
    html = client.get(URL + "?range=7d").content.decode()
    assert "Decisions per 6 hours by outcome, last 7 days" in html
    assert _table(html, "decisions-table")[-1] == [
        "All", str(RECENT["allow"] + OLDER["allow"]), str(RECENT["escalate"]),
        str(RECENT["deny"] + OLDER["deny"]), str(sum(RECENT.values()) + sum(OLDER.values()))]
    assert 'aria-current="page" id="range-7d"' in html
    fallback = client.get(URL + "?range=1y").content.decode()
    assert "Decisions per hour by outcome, last 24 hours" in fallback


def test_links_to_approvals_only_for_those_who_decide_or_audit(world, login, cast):
    link = f'/t/alpha/approvals/escalations/{world["overdue"].pk}/'
    assert link in login(cast["bob"]).get(URL).content.decode()
    assert link in login(cast["audrey"]).get(URL).content.decode()
    assert link not in login(cast["victor"]).get(URL).content.decode()


def test_a_new_tenant_sees_empty_states(login, cast):
    html = login(cast["victor"]).get(URL).content.decode()
    for empty in ("decisions-empty", "denied-empty", "fleet-empty", "approvals-empty",
                  "tools-empty"):
        assert f'id="{empty}"' in html
    assert html.count("chart chart-empty") == 4
    assert "No decisions logged in the last 24 hours." in html


def test_a_tenants_dashboard_shows_only_its_own_data(world, tenant_b, cast, login):
    ingest(tenant_b, [event("b-1", outcome="deny", agent="bravo-bot", at=timezone.now())])
    html = login(cast["victor"]).get(URL).content.decode()
    assert "bravo-bot" not in html
    html_b = login(cast["oscar"]).get("/t/bravo/dashboard/").content.decode()
    assert "bravo-bot" in html_b and "pwned" not in html_b and "gw-current" not in html_b


def test_an_outsider_gets_404_and_anonymous_the_login_page(world, login, cast, client):
    assert login(cast["oscar"]).get(URL).status_code == 404
    response = client.get(URL)
    assert response.status_code == 302 and response["Location"] == f"/login/?next={URL}"


def test_every_role_may_view_it_so_no_member_gets_403(cast, login):
    # The dashboard's capability is VIEW, which every role has (governance/tenancy/roles.py):
    # there is no under-privileged member to refuse; writes are not offered at all.
    for name in ("victor", "dave", "audrey", "bob"):
        client = login(cast[name])
        assert client.get(URL).status_code == 200
        assert client.post(URL).status_code == 405


def test_the_page_costs_a_fixed_number_of_queries(world, tenant_a, login, cast,
                                                  django_assert_max_num_queries):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tests.bundle_support import make_gateway

    client = login(cast["victor"])
    client.get(URL)
    with CaptureQueriesContext(connection) as first:
        client.get(URL)
    for n in range(4):
        make_gateway(tenant_a, name=f"more-{n}")
    ingest(tenant_a, [event(f"more-{n}", outcome="deny", agent=f"agent-{n}",
                            at=timezone.now()) for n in range(40)])
    with django_assert_max_num_queries(len(first)):
        client.get(URL)
    assert len(first) <= 20
