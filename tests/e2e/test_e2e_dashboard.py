"""End to end: the dashboard in Chromium. A tenant with decisions (ingested through the
decision-log service, one agent named like a script), approvals waiting (one overdue), a gateway
in each freshness state and a drifted tool; a viewer opens the dashboard, every chart shows the
seeded numbers in its SVG and in its table, nothing executes, the CSP holds, and a full-page
screenshot is kept in test-artifacts/dashboard.png."""

from __future__ import annotations

import struct

import pytest

from tests.e2e_support import ARTIFACTS_DIR
from tests.observability_support import (
    DENIED_BY_AGENT,
    EVIL_AGENT,
    OLDER,
    RECENT,
    seeded_world,
)
from tests.ui_support import expect_heading, expect_styled, sign_in, table_rows

pytestmark = pytest.mark.e2e

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _series_totals(page, chart: str, mark: str) -> dict[str, int]:
    totals: dict[str, int] = {}
    for series, value in page.locator(f"#{chart} {mark}[data-series]").evaluate_all(
            "els => els.map(e => [e.dataset.series, Number(e.dataset.value)])"):
        totals[series] = totals.get(series, 0) + value
    return totals


def test_the_dashboard_draws_the_seeded_numbers_in_chromium(ui, tenant_a, cast):
    world = seeded_world(tenant_a, owner=cast["dave"], requester=cast["alice"])
    dialogs: list[str] = []
    ui.page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    sign_in(ui, "victor")
    page = ui.page
    page.goto(ui.tenant_url("dashboard/"))
    expect_heading(page, "Dashboard")
    expect_styled(page)

    # Decisions over time: stacked bars per outcome, last 24 hours.
    assert _series_totals(page, "chart-decisions", "rect") == RECENT
    assert page.locator("#chart-decisions").get_attribute("role") == "img"
    assert page.locator("#chart-decisions-title").text_content() == (
        "Decisions per hour by outcome, last 24 hours")
    page.locator("#panel-decisions summary").click()
    # All of them were logged in one hour: one row (empty hours are left out).
    assert [r[1:] for r in table_rows(page, "#decisions-table")] == [
        [str(RECENT["allow"]), str(RECENT["escalate"]), str(RECENT["deny"]),
         str(sum(RECENT.values()))]]
    assert page.locator("#decisions-table tfoot th, #decisions-table tfoot td"
                        ).all_text_contents() == [
        "All", str(RECENT["allow"]), str(RECENT["escalate"]), str(RECENT["deny"]),
        str(sum(RECENT.values()))]

    # Top denied agents: the script-like name is text, drawn and listed, never run.
    rows = page.locator("#chart-denied-agents g.row").evaluate_all(
        "els => els.map(e => [e.dataset.label, Number(e.dataset.value)])")
    assert dict(rows) == DENIED_BY_AGENT
    labels = page.locator("#chart-denied-agents text.chart-label").all_text_contents()
    assert labels[0].startswith('<script>alert("pwned")') and labels[1] == "bot"
    page.locator("#panel-denied summary").click()
    assert table_rows(page, "#denied-table") == [[EVIL_AGENT, "3"], ["bot", "2"]]
    assert page.locator("#chart-denied-agents script, #denied-table script").count() == 0

    # Fleet freshness: one gateway in each state; the disabled one is counted apart.
    assert _series_totals(page, "chart-fleet", "circle") == {
        "current": 1, "behind": 1, "stale": 1, "never": 1}
    assert "1 disabled gateway not counted" in page.locator("#panel-fleet").inner_text()
    page.locator("#panel-fleet summary").click()
    assert table_rows(page, "#fleet-table") == [
        ["On the newest revision", "1"], ["Behind", "1"], ["Revision conflict", "0"],
        ["Stale (no contact)", "1"],
        ["Never seen", "1"]]

    # Approvals waiting: three bars, the overdue escalation highlighted.
    bars = page.locator("#chart-approvals g.row")
    assert bars.count() == 3
    breached = page.locator("#chart-approvals g.row.breached")
    assert breached.count() == 1
    assert breached.get_attribute("data-label") == "Call · bot → payroll/pay"
    assert breached.locator("rect").get_attribute("fill") == "#c0312b"
    assert "overdue by" in breached.locator("text.chart-value").text_content()
    approvals = table_rows(page, "#approvals-table")  # open by default
    assert [r[0] for r in approvals] == ["Call · bot → payroll/pay",
                                         "Call · bot → payroll/read", "Access · bot → payroll"]

    # Drifted tools: the quarantined one, linked to its page.
    assert page.locator("#drifted-count").inner_text() == "1"
    assert page.locator("#stat-waiting").inner_text() == "3"

    # The charts are laid out by the stylesheet (not the SVG's intrinsic 720 px).
    box = page.locator("#chart-decisions").bounding_box()
    assert box is not None and box["width"] > 400 and box["height"] > 100
    weight = page.locator("#chart-decisions text.chart-title").evaluate(
        "el => getComputedStyle(el).fontWeight")
    assert weight == "600"

    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS_DIR / "dashboard.png"
    shot.unlink(missing_ok=True)
    page.screenshot(path=shot, full_page=True)
    data = shot.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 800 and height >= 1200, (width, height)
    assert len(data) > 40_000  # a real page of charts, not a blank image

    # The week view adds the older decisions.
    page.locator("#range-7d").click()
    page.wait_for_url("**/dashboard/?range=7d")
    expect_heading(page, "Dashboard")
    assert _series_totals(page, "chart-decisions", "rect") == {
        "allow": RECENT["allow"] + OLDER["allow"], "escalate": RECENT["escalate"],
        "deny": RECENT["deny"] + OLDER["deny"]}

    # Following a drifted tool leads to its review page.
    page.locator("#drifted-tools a").first.click()
    page.wait_for_url(f"**/t/alpha/tools/{world['tools']['export'].pk}/")
    expect_heading(page, "export")

    assert dialogs == []
    ui.assert_no_browser_problems()
