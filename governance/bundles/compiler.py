"""Registry state → the bundle's ``mcp/data.json`` (DESIGN.md §5), deterministically.

The compiler reads one tenant's registry with a fixed number of queries and returns plain JSON
values keyed by names (servers, agents and scopes are unique by name in a tenant; tools are
``<server>/<tool>``), so two revisions can be diffed by a person. ``canonical_json`` writes it
with sorted keys and no insignificant whitespace: the same state gives byte-identical files.

What goes in: every agent (with its status, so gateways can say *why* a suspended agent is
refused), every server that is not retired, the approved tools still listed by active servers
(quarantined, blocked, pending and vanished tools are simply absent: default deny), every scope
with the tools of it that are in the bundle, and the grants in force at compile time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Prefetch, Q

from gateway.decision import tool_key
from governance.bundles.packaging import canonical_json, rfc3339
from governance.tenancy.models import Tenant
from registry.models import Agent, AgentPrincipal, Grant, McpServer, Tool, ToolScope

SCHEMA_VERSION = 1


__all__ = ["SCHEMA_VERSION", "canonical_json", "compile_data", "escalation_settings"]


def compile_data(tenant: Tenant, *, at: datetime) -> dict[str, Any]:
    """The ``mcp/data.json`` document of ``tenant`` as of ``at``."""
    agents: dict[str, Any] = {}
    principals: dict[str, dict[str, str]] = {}
    agent_rows = (
        Agent.objects.for_tenant(tenant)
        .select_related("owner")
        .prefetch_related(Prefetch("principals", queryset=AgentPrincipal.objects.order_by(
            "issuer", "subject")))
    )
    for agent in agent_rows:
        pairs = [[p.issuer, p.subject] for p in agent.principals.all()]
        agents[agent.name] = {
            "status": agent.status,
            "owner": agent.owner.get_username() if agent.owner else None,
            "environment": agent.environment,
            "principals": pairs,
        }
        for issuer, subject in pairs:
            principals.setdefault(issuer, {})[subject] = agent.name

    servers = {
        s.name: {
            "status": s.status,
            "transport": s.transport,
            "url": s.url,
            "version": s.version,
            "risk_tier": s.risk_tier,
            "data_classes": sorted(s.data_classes),
        }
        for s in McpServer.objects.for_tenant(tenant).exclude(status=McpServer.Status.RETIRED)
    }

    tool_rows = Tool.objects.for_tenant(tenant).filter(
        status=Tool.Status.APPROVED, present=True, server__status=McpServer.Status.ACTIVE
    ).select_related("server")
    # Tools the registry holds back on purpose: named so gateways (and the Cedar policy) can say
    # *why* a call is refused, never callable.
    withheld = {
        tool_key(t.server.name, t.name): t.status
        for t in Tool.objects.for_tenant(tenant).filter(
            status__in=[Tool.Status.QUARANTINED, Tool.Status.BLOCKED]
        ).exclude(server__status=McpServer.Status.RETIRED).select_related("server")
    }
    tools: dict[str, Any] = {}
    ambiguous: set[str] = set()
    for t in tool_rows:
        key = tool_key(t.server.name, t.name)
        if key in tools or key in withheld:
            ambiguous.add(key)
        tools[key] = {
            "server": t.server.name,
            "name": t.name,
            "title": t.title,
            "definition_sha256": t.definition_sha256,
            "annotations": t.annotations,
        }
    # Server names may contain "/" (MCP registry names), so ("a", "b/c") and ("a/b", "c") share
    # a key. Such tools are withheld rather than letting one stand for the other: fail closed.
    for key in ambiguous:
        del tools[key]
        withheld[key] = "ambiguous"

    scopes = {}
    for scope in ToolScope.objects.for_tenant(tenant).prefetch_related(
        Prefetch("tools", queryset=Tool.objects.select_related("server"))
    ):
        keys = sorted(
            k for k in (tool_key(t.server.name, t.name) for t in scope.tools.all()) if k in tools
        )
        scopes[scope.name] = {
            "risk_level": scope.risk_level,
            "data_classes": sorted(scope.data_classes),
            "tools": keys,
        }

    in_force = Q(status=Grant.Status.ACTIVE) & (Q(expires_at__isnull=True) | Q(expires_at__gt=at))
    grants = [
        {
            "id": str(g.pk),
            "agent": g.agent.name,
            "scope": g.scope.name,
            "calls_per_minute": g.calls_per_minute,
            "calls_per_day": g.calls_per_day,
            "window": None if g.window_start is None else {
                "start": g.window_start.isoformat(timespec="minutes"),
                "end": g.window_end.isoformat(timespec="minutes"),
                "days": sorted(g.window_days),
                "tz": g.window_tz,
            },
            "argument_constraints": g.argument_constraints,
            "approval_mode": g.approval_mode,
            "approval_condition": g.approval_condition,
            "expires_at": rfc3339(g.expires_at) if g.expires_at else None,
        }
        for g in Grant.objects.for_tenant(tenant).filter(in_force)
        .select_related("agent", "scope").order_by("pk")
    ]
    return {
        "schema_version": SCHEMA_VERSION,
        "tenant": tenant.slug,
        "agents": agents,
        "principals": principals,
        "servers": servers,
        "tools": tools,
        "withheld_tools": withheld,
        "scopes": scopes,
        "grants": grants,
        "escalation": escalation_settings(tenant),
    }


ESCALATION_DEFAULTS = {
    # How long a held call waits for a human before it is expired (a denial).
    "decision_timeout_seconds": 900,
    # How long a gateway holds the agent's call before answering "pending, retry".
    "hold_seconds": 60,
}


def escalation_settings(tenant: Tenant) -> dict[str, Any]:
    """What gateways need to run the escalation contract (DESIGN.md §5) for this tenant."""
    configured = tenant.settings.get("escalation", {}) if isinstance(tenant.settings, dict) else {}
    values = {k: configured.get(k, default) for k, default in ESCALATION_DEFAULTS.items()}
    return {**values, "endpoint": "/api/v1/gateway/escalations"}
