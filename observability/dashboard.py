"""The dashboard's panels: the selectors' numbers turned into charts and their table fallbacks.

Each panel is a dict the template renders the same way: a heading, the SVG (``charts``), a
``<details>`` table with the same numbers, and an empty state when there is nothing to show.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from decision_logs.models import Outcome
from governance.tenancy.models import Tenant
from observability import charts, selectors

OUTCOME_SERIES = [
    charts.Series(Outcome.ALLOW, "Allowed", "#1c7c4a"),
    charts.Series(Outcome.ESCALATE, "Escalated", "#d08a00"),
    charts.Series(Outcome.DENY, "Denied", "#c0312b"),
]
FLEET_COLORS = {selectors.CURRENT: "#1c7c4a", selectors.BEHIND: "#d08a00",
                selectors.CONFLICT: "#7a2e8e", selectors.STALE: "#c0312b",
                selectors.NEVER: "#98a2b3"}
DENIED_COLOR = "#c0312b"
NO_AGENT = "(no agent named)"
# viewBox widths: about the card's width at the page's widest, so the text is drawn at its size
# (narrower screens scale the whole chart down).
FULL_WIDTH, HALF_WIDTH = 1080, 520


def _bucket_label(start: datetime, bucket_hours: int) -> tuple[str, str]:
    """(tick label, full label) of a bucket, in UTC."""
    if bucket_hours == 1:
        return f"{start:%H:00}", f"{start:%Y-%m-%d %H:00}–{(start.hour + 1) % 24:02d}:00 UTC"
    return (f"{start:%a %H:00}",
            f"{start:%a %Y-%m-%d %H:00} + {bucket_hours} h UTC")


def decisions_panel(tenant: Tenant, *, range_key: str, now: datetime) -> dict[str, Any]:
    span = selectors.RANGES[range_key]
    buckets = selectors.decision_buckets(tenant, range_key=range_key, now=now)
    columns = []
    for bucket in buckets:
        tick, full = _bucket_label(bucket.start, span.bucket_hours)
        columns.append(charts.Column(tick, full, dict(bucket.counts)))
    totals = {s.key: sum(b.counts[s.key] for b in buckets) for s in OUTCOME_SERIES}
    per = "hour" if span.bucket_hours == 1 else f"{span.bucket_hours} hours"
    title = f"Decisions per {per} by outcome, {span.label}"
    svg = charts.stacked_bars(
        "chart-decisions", title=title,
        description=(f"{sum(totals.values())} decisions in the {span.label}: "
                     + ", ".join(f"{totals[s.key]} {s.label.lower()}" for s in OUTCOME_SERIES)
                     + "."),
        columns=columns, series=OUTCOME_SERIES, x_label=f"Time (UTC, {per} per bar)",
        y_label="Decisions", empty_message=f"No decisions logged in the {span.label}.",
        width=FULL_WIDTH)
    return {"svg": svg, "columns": columns, "series": OUTCOME_SERIES, "totals": totals,
            "total": sum(totals.values()), "range": span, "title": title}


def denied_agents_panel(tenant: Tenant, *, now: datetime) -> dict[str, Any]:
    rows = selectors.top_denied_agents(tenant, now=now)
    bars = [charts.Bar(agent or NO_AGENT, n) for agent, n in rows]
    title = "Top denied agents, last 24 hours"
    svg = charts.horizontal_bars(
        "chart-denied-agents", title=title,
        description=("Agents with the most denied calls in the last 24 hours: "
                     + "; ".join(f"{b.label}: {b.value}" for b in bars) + ".") if bars
        else "No denied calls in the last 24 hours.",
        bars=bars, x_label="Denied calls", y_label="Agent", color=DENIED_COLOR,
        empty_message="No denied calls in the last 24 hours.", width=HALF_WIDTH)
    return {"svg": svg, "bars": bars, "title": title}


def approvals_panel(tenant: Tenant, *, now: datetime) -> dict[str, Any]:
    waiting = selectors.approvals_waiting(tenant, now=now)
    items = [charts.Deadline(w.label, w.seconds_left,
                             "with alternates" if w.on_alternates else "")
             for w in waiting.items]
    title = "Approvals waiting, time left to their deadlines"
    svg = charts.deadline_bars(
        "chart-approvals", title=title,
        description=(f"{waiting.total} waiting, {waiting.breached} past the deadline. "
                     + "; ".join(f"{i.label}: " + (
                         f"overdue by {charts.duration_text(i.seconds_left)}" if i.breached
                         else f"{charts.duration_text(i.seconds_left)} left") for i in items)),
        items=items, x_label="Hours left until the deadline",
        empty_message="Nothing is waiting for a decision.", width=FULL_WIDTH)
    rows = [{"waiting": w, "left": charts.duration_text(w.seconds_left)} for w in waiting.items]
    return {"svg": svg, "waiting": waiting, "rows": rows, "title": title}


def fleet_panel(tenant: Tenant, *, now: datetime) -> dict[str, Any]:
    fleet = selectors.fleet_freshness(tenant, now=now)
    slices = [charts.Slice(state, selectors.FLEET_STATE_LABELS[state], fleet.counts[state],
                           FLEET_COLORS[state]) for state in selectors.FLEET_STATES]
    title = "Fleet freshness"
    newest = f"r{fleet.newest}" if fleet.newest is not None else "no bundle yet"
    svg = charts.donut(
        "chart-fleet", title=title,
        description=(f"{fleet.total} active gateways (newest revision {newest}): "
                     + ", ".join(f"{s.value} {s.label.lower()}" for s in slices) + "."),
        slices=slices, center_label="active gateways",
        empty_message="No active gateways.", width=HALF_WIDTH)
    return {"svg": svg, "fleet": fleet, "slices": slices, "title": title,
            "stale_minutes": round(selectors.stale_after().total_seconds() / 60, 1)}


def build(tenant: Tenant, *, range_key: str, now: datetime) -> dict[str, Any]:
    """Every panel of the tenant's dashboard at ``now``."""
    tools = list(selectors.drifted_tools(tenant)[:50])
    return {
        "decisions": decisions_panel(tenant, range_key=range_key, now=now),
        "denied": denied_agents_panel(tenant, now=now),
        "approvals": approvals_panel(tenant, now=now),
        "fleet": fleet_panel(tenant, now=now),
        "drifted_tools": tools,
        "drifted_count": selectors.drifted_tools(tenant).count() if len(tools) == 50
        else len(tools),
        "now": now,
    }
