"""What the approvals app tells people: the facts an approver (or an admin watching
break-glass) triages by, built once per event and shown by every channel (e-mail, Slack,
webhook; ``notifications.services.notify`` carries them), and the machine-readable ``data``
webhooks get beside them.

Pure reads and formatting: the services that announce call these, and ``notify``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.urls import reverse

from approvals.models import AccessRequest, Decidable
from governance.tenancy.models import Tenant
from registry.models import Agent, Grant, ToolScope

Facts = list[tuple[str, str]]
# At most this many of a scope's tools are named; the rest are counted.
TOOLS_NAMED = 8


def when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC" if moment else ""


def duration(minutes: int) -> str:
    if minutes % (24 * 60) == 0:
        days = minutes // (24 * 60)
        return f"{days} day{'s' if days != 1 else ''}"
    if minutes % 60 == 0:
        return f"{minutes // 60} h"
    return f"{minutes} min"


def risk(scope: ToolScope) -> str:
    """"high risk; data classes PII, financial" (or "no data classes")."""
    classes = ", ".join(scope.data_classes) if scope.data_classes else "none"
    return f"{scope.get_risk_level_display()} risk; data classes: {classes}"


def scope_tools(scope: ToolScope) -> str:
    names = [f"{server}/{tool}" for server, tool in scope.tools.order_by(
        "server__name", "name").values_list("server__name", "name")]
    if len(names) > TOOLS_NAMED:
        return ", ".join(names[:TOOLS_NAMED]) + f" (+{len(names) - TOOLS_NAMED} more)"
    return ", ".join(names) or "none yet"


def person(user) -> str:
    if user is None:
        return ""
    email = getattr(user, "email", "")
    return f"{user.get_username()} ({email})" if email else user.get_username()


def agent_label(agent: Agent) -> str:
    """"hr-assistant (production, owner dave)"."""
    details = [agent.environment, f"owner {agent.owner.get_username()}" if agent.owner_id else ""]
    details = [d for d in details if d]
    return f"{agent.name} ({', '.join(details)})" if details else agent.name


def item_facts(item: Decidable) -> Facts:
    """Who asks, why, for which agent and scope (and its tools) or tool, the risk, how long,
    the deadline — and once decided, the outcome and its reason."""
    if isinstance(item, AccessRequest):
        facts = [("Requester", person(item.requester)),
                 ("Justification", item.justification),
                 ("Ticket", item.ticket),
                 ("Agent", agent_label(item.agent)),
                 ("Scope", item.scope.name),
                 ("Tools", scope_tools(item.scope)),
                 ("Risk", risk(item.scope)),
                 ("Access for", duration(item.duration_minutes))]
    else:
        facts = [("Requester", f"gateway {item.gateway.name}, for agent {item.agent.name}"),
                 ("Justification", item.reason or "(the gateway gave no reason)"),
                 ("Agent", agent_label(item.agent)),
                 ("Tool", f"{item.server}/{item.tool}"),
                 ("Scope", item.scope.name),
                 ("Risk", risk(item.scope))]
    if item.status == Decidable.Status.PENDING:
        facts.append(("Deadline", when(item.deadline)))
        if len(item.stages) > 1:
            facts.append(("Stage", f"{item.current_stage + 1} of {len(item.stages)}"))
    else:
        facts.append(("Outcome", f"{item.get_status_display()} at {when(item.decided_at)}"))
        facts.append(("Reason", item.deny_reason))
    return facts


def item_data(item: Decidable) -> dict[str, Any]:
    """The same facts, machine-readable (a webhook's ``data``)."""
    data: dict[str, Any] = {
        "kind": "access_request" if isinstance(item, AccessRequest) else "escalation",
        "id": str(item.pk), "status": item.status, "deadline": item.deadline.isoformat(),
        "agent": item.agent.name, "scope": item.scope.name,
        "risk_level": item.scope.risk_level, "data_classes": list(item.scope.data_classes),
    }
    if isinstance(item, AccessRequest):
        data |= {"requester": item.requester.get_username(),
                 "justification": item.justification, "ticket": item.ticket,
                 "duration_minutes": item.duration_minutes}
    else:
        data |= {"requester": f"gateway:{item.gateway.name}", "justification": item.reason,
                 "server": item.server, "tool": item.tool}
    if item.deny_reason:
        data["reason"] = item.deny_reason
    return data


def item_path(tenant: Tenant, item: Decidable) -> str:
    """The path of the request's or escalation's page (where it is decided)."""
    name = "approvals:request" if isinstance(item, AccessRequest) else "approvals:escalation"
    return reverse(name, args=[tenant.slug, item.pk])


def item_summary(item: Decidable) -> str:
    """One sentence: who asks what for whom, and until when a decision is wanted."""
    if isinstance(item, AccessRequest):
        what = (f"{item.requester.get_username()} asks for scope {item.scope.name} "
                f"({item.scope.get_risk_level_display().lower()} risk) for agent "
                f"{item.agent.name} for {duration(item.duration_minutes)}")
    else:
        what = (f"Agent {item.agent.name} waits to call {item.server}/{item.tool} (scope "
                f"{item.scope.name}, {item.scope.get_risk_level_display().lower()} risk)")
    if item.status == Decidable.Status.PENDING:
        return f"{what}; decide by {when(item.deadline)}."
    reason = f" Reason: {item.deny_reason}" if item.deny_reason else ""
    return f"{what}: {item.get_status_display().lower()}.{reason}"


def break_glass_facts(grant: Grant, admin, minutes: int) -> Facts:
    return [("Requester", person(admin)),
            ("Justification", grant.justification),
            ("Agent", agent_label(grant.agent)),
            ("Scope", grant.scope.name),
            ("Tools", scope_tools(grant.scope)),
            ("Risk", risk(grant.scope)),
            ("Access for", duration(minutes)),
            ("Expires", when(grant.expires_at))]
