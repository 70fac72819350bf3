"""A tenant with something in every dashboard panel and metric family, seeded through the real
services (decision-log ingestion, bundle publishing, approvals), for the dashboard, /metrics and
the browser test. Times are relative to the moment of seeding; nothing asserts on wall time."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from approvals import selectors as approval_selectors
from approvals import services as approvals
from approvals.models import Escalation
from bundles.models import Gateway
from bundles.publish import bundle_publish
from decision_logs.services import decisions_ingest
from tests.bundle_support import SYSTEM, decision_world, make_gateway
from tests.factories import AgentFactory

EVIL_AGENT = '<script>alert("pwned")</script>'
SHA = hashlib.sha256(b"{}").hexdigest()


def event(decision_id: str, *, outcome: str, agent: str, at, server: str = "payroll",
          tool: str = "pay", revision: int | None = 2) -> dict:
    """One OPA decision-log event with the MCP fields of DESIGN.md §5."""
    return {
        "decision_id": decision_id,
        "timestamp": at.isoformat().replace("+00:00", "Z"),
        "labels": {"id": "edge-1", "version": "1.0"},
        "bundles": {"tollgate": {"revision": str(revision)}} if revision else {},
        "input": {"agent": agent, "principal": {"issuer": "https://idp.example",
                                                "subject": agent},
                  "server": server, "tool": tool, "arguments_sha256": SHA},
        "result": {"outcome": outcome, "reason": f"{outcome} by test"},
    }


def ingest(tenant, events, gateway=None) -> int:
    with transaction.atomic():
        result = decisions_ingest(tenant_id=tenant.pk, gateway_id=gateway.pk if gateway else None,
                                  events=events)
    return result.accepted


# What seeded_world logs, by outcome, in the last 24 hours and in the 6 days before them.
RECENT = {"allow": 5, "escalate": 1, "deny": 5}
OLDER = {"allow": 4, "deny": 2}
DENIED_BY_AGENT = {EVIL_AGENT: 3, "bot": 2}


def seeded_world(tenant, *, owner, requester) -> dict:
    """decision_world (``export`` drifted → quarantined), two bundle revisions, one gateway
    per freshness state plus a disabled one, one expired and one pending access request, an
    overdue and a pending escalation, and decisions inside and outside the last 24 hours."""
    world = decision_world(tenant, owner=owner)
    now = timezone.now()
    first = bundle_publish(tenant=tenant, trigger="test")
    AgentFactory(tenant=tenant, name="reporter", owner=owner)
    second = bundle_publish(tenant=tenant, trigger="registry change")
    assert (first.revision_number, second.revision_number) == (1, 2)

    gateways = {}
    for name, contact, revision in (
        ("gw-current", now - timedelta(seconds=30), 2),
        ("gw-behind", now - timedelta(seconds=45), 1),
        ("gw-stale", now - timedelta(hours=2), 2),
        ("gw-never", None, None),
        ("gw-off", now - timedelta(days=3), 1),
    ):
        gateway, _ = make_gateway(tenant, name=name)
        Gateway.objects.filter(pk=gateway.pk).update(last_contact_at=contact,
                                                     active_revision=revision)
        gateways[name] = gateway
    Gateway.objects.filter(pk=gateways["gw-off"].pk).update(status=Gateway.Status.DISABLED)

    # An access request nobody decided: the deadline sweep expires it (a breach).
    approvals.access_request_create(tenant=tenant, actor=SYSTEM, requester=requester,
                                    agent=world["bot"], scope=world["scope"],
                                    duration_minutes=60, justification="quarterly payroll run")
    assert approvals.deadlines_due(now=now + timedelta(days=3)) == 1
    pending = approvals.access_request_create(
        tenant=tenant, actor=SYSTEM, requester=requester, agent=world["bot"],
        scope=world["scope"], duration_minutes=60, justification="payroll corrections")
    overdue = Escalation.objects.create(
        tenant=tenant, gateway=gateways["gw-current"], call_id="call-late", agent=world["bot"],
        scope=world["scope"], server="payroll", tool="pay", arguments_sha256=SHA,
        stages=approval_selectors.BUILT_IN_STAGES, created_at=now - timedelta(minutes=40),
        deadline=now - timedelta(minutes=10))
    soon = Escalation.objects.create(
        tenant=tenant, gateway=gateways["gw-current"], call_id="call-soon", agent=world["bot"],
        scope=world["scope"], server="payroll", tool="read", arguments_sha256=SHA,
        stages=approval_selectors.BUILT_IN_STAGES, deadline=now + timedelta(minutes=15))

    recent = now - timedelta(minutes=5)
    older = now - timedelta(days=3)
    events, n = [], 0
    for outcome, agent, count, at in (
        ("allow", "bot", RECENT["allow"], recent),
        ("escalate", "bot", RECENT["escalate"], recent),
        ("deny", EVIL_AGENT, DENIED_BY_AGENT[EVIL_AGENT], recent),
        ("deny", "bot", DENIED_BY_AGENT["bot"], recent),
        ("allow", "bot", OLDER["allow"], older),
        ("deny", "old", OLDER["deny"], older),
    ):
        for _ in range(count):
            n += 1
            events.append(event(f"{tenant.slug}-d-{n}", outcome=outcome, agent=agent, at=at))
    assert ingest(tenant, events, gateways["gw-current"]) == len(events)
    return {**world, "gateways": gateways, "pending_request": pending, "overdue": overdue,
            "soon": soon, "bundles": (first, second), "now": now}
