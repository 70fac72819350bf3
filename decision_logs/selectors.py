"""Reads of decision logs and their hourly roll-up, tenant first.

The dashboard, ``/metrics`` and the alert rules read the roll-up (``DecisionRollup``) or narrow
the log by an indexed column and a time bound; nothing here counts the whole log table.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum

from decision_logs.models import DecisionLog, DecisionRollup, Outcome, ReplayRun
from governance.tenancy.models import Tenant

# The filters ``search`` understands (the page's form, the API's query parameters).
FILTERS = ("agent", "tool", "server", "gateway", "outcome", "since", "until", "decision_id")


def outcome_series(tenant: Tenant, *, since: datetime, until: datetime) -> list[dict[str, Any]]:
    """Decisions per hour and outcome from the roll-up, ``since <= hour < until``, oldest
    first: ``[{"hour": datetime, "outcome": "allow", "count": 12}, …]`` (hours without a
    decision are absent)."""
    rows = (DecisionRollup.objects.for_tenant(tenant)
            .filter(hour__gte=since, hour__lt=until)
            .order_by("hour", "outcome")
            .values("hour", "outcome", "count"))
    return [dict(row) for row in rows]


def outcome_totals(tenant: Tenant | None = None) -> dict[tuple[str, str], int]:
    """All-time decisions per (tenant slug, outcome) from the roll-up (rows still retained);
    ``tenant`` None: every tenant (for ``/metrics``)."""
    rows = DecisionRollup.objects.all()
    if tenant is not None:
        rows = rows.filter(tenant=tenant)
    totals = (rows.values("tenant__slug", "outcome").order_by("tenant__slug", "outcome")
              .annotate(total=Sum("count")))
    return {(row["tenant__slug"], row["outcome"]): int(row["total"] or 0) for row in totals}


def top_denied_agents(tenant: Tenant, *, since: datetime, limit: int = 10
                      ) -> list[tuple[str, int]]:
    """The agents with the most denied calls since ``since``, most first (ties by name):
    ``[(agent, count), …]``; calls without an agent count under ``""``."""
    rows = (_denials(tenant, since).values("agent").annotate(n=Count("id"))
            .order_by("-n", "agent")[:limit])
    return [(row["agent"], row["n"]) for row in rows]


def denials_by_agent(tenant: Tenant, *, since: datetime) -> dict[str, int]:
    """Denied calls per agent since ``since`` (for the burst-of-denials alert)."""
    rows = _denials(tenant, since).values("agent").annotate(n=Count("id")).order_by()
    return {row["agent"]: row["n"] for row in rows}


def _denials(tenant: Tenant, since: datetime) -> QuerySet[DecisionLog]:
    # (tenant, outcome, -timestamp) index.
    return DecisionLog.objects.for_tenant(tenant).filter(outcome=Outcome.DENY,
                                                         timestamp__gte=since)


def decisions_since(tenant: Tenant, after_id: int, limit: int) -> list[DecisionLog]:
    """Up to ``limit`` decisions of the tenant with ``id > after_id``, by id (the order rows
    were stored in): the SIEM exporter's cursor walks this."""
    return list(DecisionLog.objects.for_tenant(tenant).filter(id__gt=after_id)
                .select_related("gateway").order_by("id")[:limit])


def search(tenant: Tenant, filters: Mapping[str, Any] | None = None) -> QuerySet[DecisionLog]:
    """The tenant's decisions matching ``filters``, newest first (``-timestamp, -id``).

    Keys (all optional, empty means no filter): ``agent``, ``tool``, ``server``,
    ``decision_id`` (exact, so each uses its index), ``gateway`` (a Gateway or its id),
    ``outcome``, ``since`` (``timestamp >= since``), ``until`` (``timestamp < until``)."""
    filters = filters or {}
    rows = DecisionLog.objects.for_tenant(tenant)
    for key in ("agent", "tool", "server", "decision_id", "outcome"):
        value = filters.get(key)
        if value not in (None, ""):
            rows = rows.filter(**{key: value})
    gateway = filters.get("gateway")
    if gateway not in (None, ""):
        rows = rows.filter(gateway_id=getattr(gateway, "pk", gateway))
    if filters.get("since"):
        rows = rows.filter(timestamp__gte=filters["since"])
    if filters.get("until"):
        rows = rows.filter(timestamp__lt=filters["until"])
    return rows.select_related("gateway").order_by("-timestamp", "-id")


def keyset_page(rows: QuerySet[DecisionLog], *, before: tuple[datetime, int] | None = None,
                after: tuple[datetime, int] | None = None, size: int = 50
                ) -> tuple[list[DecisionLog], bool, bool]:
    """One page of ``search`` rows by keyset (no COUNT over millions of rows): the ``size``
    rows older than ``before`` (or newer than ``after``, or the newest), and whether older and
    newer rows exist beyond them."""
    if after is not None:
        when, pk = after
        newer = rows.filter(Q(timestamp__gt=when) | Q(timestamp=when, id__gt=pk))
        found = list(newer.order_by("timestamp", "id")[:size + 1])
        has_newer = len(found) > size
        found = found[:size][::-1]
        return found, True, has_newer
    if before is not None:
        when, pk = before
        rows = rows.filter(Q(timestamp__lt=when) | Q(timestamp=when, id__lt=pk))
    found = list(rows[:size + 1])
    return found[:size], len(found) > size, before is not None


def decision_links(tenant: Tenant, decision: DecisionLog) -> dict[str, Any]:
    """What a decision names that still exists in its tenant: the bundle of its revision, its
    grant and its escalation (each None when unknown here)."""
    from approvals.models import Escalation
    from bundles.models import Bundle
    from registry.models import Grant

    links: dict[str, Any] = {"bundle": None, "grant": None, "escalation": None}
    if decision.bundle_revision is not None:
        links["bundle"] = (Bundle.objects.for_tenant(tenant)
                           .filter(revision_number=decision.bundle_revision).first())
    if decision.grant_id is not None:
        links["grant"] = (Grant.objects.for_tenant(tenant).select_related("agent", "scope")
                          .filter(pk=decision.grant_id).first())
    if decision.escalation_id is not None:
        links["escalation"] = (Escalation.objects.for_tenant(tenant)
                               .filter(pk=uuid.UUID(str(decision.escalation_id))).first())
    return links


def replay_runs(tenant: Tenant) -> QuerySet[ReplayRun]:
    """The tenant's shadow replays, newest first (without their lists of changes)."""
    return ReplayRun.objects.for_tenant(tenant).defer("changes").order_by("-created_at", "-pk")
