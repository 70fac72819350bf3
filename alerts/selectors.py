"""Reads of the alerts app, tenant first: the alert list, the dashboard's counts, and the
conditions the rules look for (read through the owning apps' selectors where they exist)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Case, IntegerField, QuerySet, Value, When
from django.urls import NoReverseMatch, reverse

from alerts.models import Alert, AlertRule, Kind, Severity
from governance.tenancy.models import Tenant

# The status filter's choices: "" (the default) means open and acknowledged.
STATUS_FILTERS = {
    "": "Open and acknowledged",
    Alert.Status.OPEN: "Open",
    Alert.Status.ACKNOWLEDGED: "Acknowledged",
    Alert.Status.RESOLVED: "Resolved",
    "all": "Any status",
}

_SEVERITY_RANK = Case(
    When(severity=Severity.CRITICAL, then=Value(0)),
    When(severity=Severity.WARNING, then=Value(1)),
    default=Value(2), output_field=IntegerField(),
)


def alerts(tenant: Tenant, *, status: str = "", kind: str = "",
           severity: str = "") -> QuerySet[Alert]:
    """The tenant's alerts, most recently seen first; ``status`` "" is every live one (open
    or acknowledged), "all" every one."""
    rows = Alert.objects.for_tenant(tenant).select_related("acknowledged_by")
    if status == "all":
        pass
    elif status:
        rows = rows.filter(status=status)
    else:
        rows = rows.filter(status__in=Alert.LIVE)
    if kind:
        rows = rows.filter(rule_kind=kind)
    if severity:
        rows = rows.filter(severity=severity)
    return rows.order_by("-last_seen_at", "-pk")


def open_alerts_count(tenant: Tenant) -> int:
    """How many alerts of the tenant are unresolved (open or acknowledged)."""
    return Alert.objects.for_tenant(tenant).filter(status__in=Alert.LIVE).count()


def unacknowledged_count(tenant: Tenant) -> int:
    """How many alerts of the tenant are open and not acknowledged (the navigation's badge)."""
    return Alert.objects.for_tenant(tenant).filter(status=Alert.Status.OPEN).count()


def open_alerts(tenant: Tenant, limit: int = 10) -> list[Alert]:
    """The unresolved alerts for a dashboard: unacknowledged first, then the most severe, then
    the most recently seen."""
    rows = (Alert.objects.for_tenant(tenant).filter(status__in=Alert.LIVE)
            .annotate(severity_rank=_SEVERITY_RANK)
            .order_by("-status", "severity_rank", "-last_seen_at", "-pk"))
    # "-status": "open" sorts after "acknowledged" alphabetically, so descending puts it first.
    return list(rows[:limit])


def rules(tenant: Tenant) -> QuerySet[AlertRule]:
    """The tenant's rule rows as they are stored (services.alert_rules_for fills in defaults)."""
    return AlertRule.objects.for_tenant(tenant).select_related("updated_by")


def live_alert(tenant: Tenant, kind: str, key: str, *, lock: bool = False) -> Alert | None:
    """The open or acknowledged alert of ``(kind, key)``, if any (``lock``: for update)."""
    rows = Alert.objects.for_tenant(tenant).filter(rule_kind=kind, key=key,
                                                   status__in=Alert.LIVE)
    if lock:
        rows = rows.select_for_update()
    return rows.first()


def live_alerts(tenant: Tenant, kind: str) -> list[Alert]:
    return list(Alert.objects.for_tenant(tenant).filter(rule_kind=kind, status__in=Alert.LIVE)
                .order_by("pk"))


def latest_alert(tenant: Tenant, kind: str, key: str) -> Alert | None:
    """The newest alert of ``(kind, key)`` in any status."""
    return (Alert.objects.for_tenant(tenant).filter(rule_kind=kind, key=key)
            .order_by("-first_seen_at", "-pk").first())


# --- Conditions the rules look for ------------------------------------------------------------


@dataclass
class Condition:
    """One thing a rule found: its dedupe key, a one-line subject and the facts behind it."""

    key: str
    subject: str
    detail: dict[str, Any] = field(default_factory=dict)


def _minutes(delta: timedelta) -> int:
    return int(delta.total_seconds() // 60)


def stale_gateways(tenant: Tenant, *, window: timedelta, now: datetime) -> list[Condition]:
    """Active gateways silent for longer than ``window`` (never heard from: counted from when
    they were added), or running an older revision than the newest for longer than
    ``window``."""
    from bundles import selectors as bundles

    found = []
    for row in bundles.fleet(tenant, now=now):
        gateway = row["gateway"]
        if gateway.status != gateway.Status.ACTIVE:
            continue
        last, newest, lag = row["last_contact_at"], row["newest"], row["lag"]
        facts = {"gateway": gateway.pk, "name": gateway.name, "last_contact_at": last,
                 "active_revision": gateway.active_revision, "newest_revision": newest,
                 "window_minutes": _minutes(window)}
        silent = now - (last or gateway.created_at)
        if silent > window:
            minutes = _minutes(silent)
            subject = (f"Gateway {gateway.name}: no contact for {minutes} min" if last else
                       f"Gateway {gateway.name}: never in contact ({minutes} min since added)")
            found.append(Condition(f"gateway:{gateway.pk}", subject,
                                   {**facts, "reason": "silent", "minutes": minutes}))
            continue
        if not lag or lag <= 0:
            continue
        # Behind since the first revision it does not have was published.
        behind_since = (bundles.bundles(tenant)
                        .filter(revision_number__gt=gateway.active_revision)
                        .order_by("revision_number").values_list("created_at", flat=True)
                        .first())
        if behind_since is not None and now - behind_since > window:
            minutes = _minutes(now - behind_since)
            subject = (f"Gateway {gateway.name}: runs r{gateway.active_revision}, {lag} behind "
                       f"r{newest}, for {minutes} min")
            found.append(Condition(f"gateway:{gateway.pk}", subject,
                                   {**facts, "reason": "behind", "lag": lag, "minutes": minutes,
                                    "behind_since": behind_since}))
    return found


def drifted_tools(tenant: Tenant) -> list[Condition]:
    """Tools quarantined because their definition changed on the server."""
    from registry import selectors as registry
    from registry.models import Tool

    return [
        Condition(f"tool:{tool.pk}",
                  f"Tool {tool.server.name}/{tool.name} drifted: quarantined until reviewed",
                  {"tool": tool.pk, "server": tool.server.name, "name": tool.name,
                   "pinned_sha256": tool.definition_sha256,
                   "drifted_sha256": tool.drifted_sha256})
        for tool in registry.tool_list(tenant, status=Tool.Status.QUARANTINED).order_by("pk")
    ]


@dataclass(frozen=True)
class Burst:
    """The densest ``window`` of one agent's denials, and the newest denial looked at."""

    agent: str
    count: int
    first: datetime
    last: datetime
    through: datetime


def densest_window(timestamps: Iterable[datetime], window: timedelta) -> tuple[int, int, int]:
    """(count, first index, last index) of the most timestamps within any ``window``; the
    timestamps must be sorted oldest first."""
    stamps = list(timestamps)
    best, best_i, best_j, i = 0, 0, -1, 0
    for j, stamp in enumerate(stamps):
        while stamp - stamps[i] > window:
            i += 1
        if j - i + 1 > best:
            best, best_i, best_j = j - i + 1, i, j
    return best, best_i, best_j


MAX_DENIALS_SCANNED = 50_000


def denial_candidates(tenant: Tenant, *, threshold: int, since: datetime) -> list[str]:
    """Agents with at least ``threshold`` denials stamped since ``since`` (one grouped query
    on an index; ``""``: calls without an agent)."""
    from decision_logs import selectors as decisions

    counts = decisions.denials_by_agent(tenant, since=since)
    return sorted(agent for agent, n in counts.items() if n >= threshold)


def denial_burst(tenant: Tenant, agent: str, *, threshold: int, window: timedelta,
                 since: datetime, after: datetime | None = None) -> Burst | None:
    """The densest ``window`` of the agent's denials stamped since ``since`` (and after
    ``after``: the denials an earlier burst already counted), if it holds ``threshold``."""
    from decision_logs import selectors as decisions
    from decision_logs.models import Outcome

    rows = decisions.search(tenant, {"agent": agent, "outcome": Outcome.DENY, "since": since})
    if agent == "":  # search() treats an empty agent as "any agent"
        rows = rows.filter(agent="")
    if after is not None:
        rows = rows.filter(timestamp__gt=after)
    stamps = sorted(rows.values_list("timestamp", flat=True)[:MAX_DENIALS_SCANNED])
    if len(stamps) < threshold:
        return None
    count, i, j = densest_window(stamps, window)
    if count < threshold:
        return None
    return Burst(agent, count, stamps[i], stamps[j], stamps[-1])


def failing_exporters(tenant: Tenant, *, threshold: int) -> list[Condition]:
    """Enabled SIEM exporters that failed at least ``threshold`` times in a row."""
    from exports.models import Exporter

    rows = (Exporter.objects.for_tenant(tenant)
            .filter(enabled=True, consecutive_failures__gte=threshold).order_by("pk"))
    return [
        Condition(f"exporter:{row.pk}",
                  f"Exporter {row.name}: {row.consecutive_failures} failures in a row",
                  {"exporter": row.pk, "name": row.name,
                   "consecutive_failures": row.consecutive_failures,
                   "last_error": (row.last_error or "")[:1000]})
        for row in rows
    ]


def failing_builds(tenant: Tenant) -> list[Condition]:
    """The tenant's last bundle build failed (``PublishState.last_error``, cleared by the next
    successful publish)."""
    from bundles.models import PublishState

    state = PublishState.objects.filter(tenant=tenant).exclude(last_error="").first()
    if state is None:
        return []
    since = state.last_error_at.isoformat() if state.last_error_at else None
    return [Condition("bundle", f"Bundle build failing: {state.last_error[:150]}",
                      {"error": state.last_error[:1000], "last_failure": since,
                       "last_revision": state.last_revision})]


def revision_conflicts(tenant: Tenant, *, now: datetime) -> list[Condition]:
    """Active gateways running a revision this control plane did not issue under that number
    (the fleet view's ``revision_conflict``); bundles raise the same alert as soon as the
    status report shows it (bundles.services.gateway_record_status)."""
    from bundles import selectors as bundles

    return [Condition(*bundles.conflict_alert(row)) for row in bundles.fleet(tenant, now=now)
            if row["revision_conflict"] and row["gateway"].status == "active"]


# --- What an alert is about, as a link ----------------------------------------------------------


def _url(name: str, *args: Any, query: str = "") -> str | None:
    try:
        url = reverse(name, args=args)
    except NoReverseMatch:  # that page does not exist (yet)
        return None
    return f"{url}?{query}" if query else url


def alert_target(tenant: Tenant, alert: Alert) -> tuple[str, str] | None:
    """(URL, label) of the page about the alert's subject, if that page and object exist."""
    from urllib.parse import urlencode

    detail, slug = alert.detail or {}, tenant.slug
    kind = alert.rule_kind
    if kind in (Kind.GATEWAY_STALE, Kind.REVISION_CONFLICT) and detail.get("gateway"):
        from bundles.models import Gateway

        if Gateway.objects.for_tenant(tenant).filter(pk=detail["gateway"]).exists():
            url = _url("bundles:gateway", slug, detail["gateway"])
            return (url, f"Gateway {detail.get('name', '')}") if url else None
    elif kind == Kind.TOOL_DRIFT and detail.get("tool"):
        from registry.models import Tool

        if Tool.objects.for_tenant(tenant).filter(pk=detail["tool"]).exists():
            url = _url("registry:tool", slug, detail["tool"])
            return (url, f"Review tool {detail.get('server')}/{detail.get('name')}") if url \
                else None
    elif kind == Kind.BUNDLE_BUILD_FAILING:
        url = _url("bundles:bundles", slug)
        return (url, "Bundle history") if url else None
    elif kind == Kind.DENIAL_BURST:
        agent = detail.get("agent", "")
        query = {"agent": agent, "outcome": "deny"}
        try:  # the burst's minutes, widened to whole minutes (the search form's precision)
            first = datetime.fromisoformat(detail["first"]).replace(second=0, microsecond=0)
            last = datetime.fromisoformat(detail["last"]) + timedelta(minutes=1)
            query |= {"since": f"{first:%Y-%m-%dT%H:%M}", "until": f"{last:%Y-%m-%dT%H:%M}"}
        except (KeyError, TypeError, ValueError):
            pass
        url = _url("decisions:list", slug, query=urlencode(query))
        if url:
            return url, f"Denied decisions of {agent or '(no agent)'}"
        from registry.models import Agent

        found = Agent.objects.for_tenant(tenant).filter(name=agent).first() if agent else None
        url = _url("registry:agent", slug, found.pk) if found else None
        return (url, f"Agent {agent}") if url else None
    elif kind == Kind.BREAK_GLASS_USED and detail.get("grant"):
        from registry.models import Grant

        if Grant.objects.for_tenant(tenant).filter(pk=detail["grant"]).exists():
            url = _url("registry:grant", slug, detail["grant"])
            return (url, f"Grant {detail['grant']}") if url else None
    elif kind == Kind.AUDIT_CHAIN_BROKEN:
        if detail.get("event_id"):
            url = _url("audit:event", slug, detail["event_id"])
            if url:
                return url, f"Audit event #{detail.get('seq')}"
        url = _url("audit:log", slug)
        return (url, "Audit log") if url else None
    elif kind == Kind.EXPORT_FAILING and detail.get("exporter"):
        from exports.models import Exporter

        if Exporter.objects.for_tenant(tenant).filter(pk=detail["exporter"]).exists():
            url = _url("exports:exporters", slug)  # its row on the exporters page
            return (f"{url}#exporter-{detail['exporter']}",
                    f"Exporter {detail.get('name', '')}") if url else None
    return None
