"""Registry state → the bundle's ``mcp/data.json`` (DESIGN.md §5), deterministically.

The compiler reads one tenant's registry with a fixed number of queries and returns plain JSON
values keyed by names (servers, agents and scopes are unique by name in a tenant; tools are
``<server>/<tool>``), so two revisions can be diffed by a person. ``bundles.packaging.bundle_json``
writes it with sorted keys and no insignificant whitespace: the same state gives byte-identical
files.

What goes in: every agent (with its status, so gateways can say *why* a suspended agent is
refused), every server that is not retired, the approved tools still listed by active servers
(quarantined, blocked, pending and vanished tools are simply absent: default deny), every scope
with the tools of it that are in the bundle, and the grants in force at compile time.
Agents known by an OAuth client id (principals of kind ``client``, delegation) are listed in
``clients`` (``{issuer: {client id: agent}}``), a key that is absent when no agent has one.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import orjson
from django.db.models import Q, TextField
from django.db.models.functions import Cast

from bundles.packaging import rfc3339
from gateway.constraints import schema_version_for
from gateway.decision import tool_key
from governance.tenancy.models import Tenant
from registry.models import Agent, AgentPrincipal, Grant, McpServer, Tool, ToolScope

__all__ = ["compile_data", "escalation_settings"]


def _json(raw: str | None) -> Any:
    """A JSON column fetched as text: most are empty, and orjson decodes the rest fast (the
    standard library takes what orjson refuses, such as integers beyond 64 bits)."""
    if raw is None or raw == "null":
        return None
    if raw == "{}":
        return {}
    if raw == "[]":
        return []
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _text(field: str) -> Cast:
    return Cast(field, TextField())


def compile_data(tenant: Tenant, *, at: datetime) -> dict[str, Any]:
    """The ``mcp/data.json`` document of ``tenant`` as of ``at``.

    Reads plain rows (``values_list``), never model instances: a tenant of 10,000 agents and
    50,000 grants is a few hundred thousand tuples, which is what keeps compiling fast."""
    agent_names: dict[int, str] = {}
    agents: dict[str, Any] = {}
    for pk, name, status, owner, environment in (
            Agent.objects.for_tenant(tenant).values_list(
                "pk", "name", "status", "owner__username", "environment")):
        agent_names[pk] = name
        agents[name] = {"status": status, "owner": owner, "environment": environment,
                        "principals": []}
    principals: dict[str, dict[str, str]] = {}
    # OAuth client ids (principals of kind "client"): in their own table, so a token's client
    # is never confused with its subject; present only when a tenant uses them.
    clients: dict[str, dict[str, str]] = {}
    for agent_id, issuer, subject, kind in (
            AgentPrincipal.objects.filter(tenant=tenant).order_by("issuer", "subject")
            .values_list("agent_id", "issuer", "subject", "kind")):
        name = agent_names[agent_id]
        if kind == AgentPrincipal.Kind.CLIENT:
            agents[name].setdefault("clients", []).append([issuer, subject])
            clients.setdefault(issuer, {})[subject] = name
            continue
        agents[name]["principals"].append([issuer, subject])
        principals.setdefault(issuer, {})[subject] = name

    servers = {
        name: {"status": status, "transport": transport, "url": url, "version": version,
               "risk_tier": risk_tier, "data_classes": sorted(data_classes),
               # Optional (older gateways ignore it): what is forwarded besides tools.
               **({"forward": sorted(forward)} if forward else {})}
        for name, status, transport, url, version, risk_tier, data_classes, forward in (
            McpServer.objects.for_tenant(tenant).exclude(status=McpServer.Status.RETIRED)
            .values_list("name", "status", "transport", "url", "version", "risk_tier",
                         "data_classes", "forward"))
    }

    # One pass over the tenant's tools (of servers that are not retired): approved tools of
    # active servers go in; quarantined and blocked ones are named as withheld, so gateways
    # (and the Cedar policy) can say *why* a call is refused.
    tools: dict[str, Any] = {}
    withheld: dict[str, str] = {}
    keys_by_id: dict[int, str] = {}
    approved: list[tuple[str, dict[str, Any]]] = []
    for pk, server, server_status, name, title, sha, hints, status, present in (
            Tool.objects.for_tenant(tenant).exclude(server__status=McpServer.Status.RETIRED)
            .annotate(hints_text=_text("annotations"))
            .values_list("pk", "server__name", "server__status", "name", "title",
                         "definition_sha256", "hints_text", "status", "present")):
        key = tool_key(server, name)
        if status in (Tool.Status.QUARANTINED, Tool.Status.BLOCKED):
            withheld[key] = status
        elif (status == Tool.Status.APPROVED and present
              and server_status == McpServer.Status.ACTIVE):
            keys_by_id[pk] = key
            approved.append((key, {"server": server, "name": name, "title": title,
                                   "definition_sha256": sha, "annotations": _json(hints)}))
    # Server names may contain "/" (MCP registry names), so ("a", "b/c") and ("a/b", "c") share
    # a key. Such tools are withheld rather than letting one stand for the other: fail closed.
    ambiguous: set[str] = set()
    for key, entry in approved:
        if key in tools or key in withheld:
            ambiguous.add(key)
        tools[key] = entry
    for key in ambiguous:
        del tools[key]
        withheld[key] = "ambiguous"

    scope_tools: dict[int, list[str]] = {}
    links = ToolScope.tools.through.objects.filter(toolscope__tenant=tenant).values_list(
        "toolscope_id", "tool_id")
    for scope_id, tool_id in links:
        key = keys_by_id.get(tool_id)
        if key is not None and key in tools:
            scope_tools.setdefault(scope_id, []).append(key)
    scope_names: dict[int, str] = {}
    scopes = {}
    for pk, name, risk_level, data_classes in ToolScope.objects.for_tenant(tenant).values_list(
            "pk", "name", "risk_level", "data_classes"):
        scope_names[pk] = name
        scopes[name] = {"risk_level": risk_level, "data_classes": sorted(data_classes),
                        "tools": sorted(scope_tools.get(pk, []))}

    in_force = Q(status=Grant.Status.ACTIVE) & (Q(expires_at__isnull=True) | Q(expires_at__gt=at))
    grants = [
        {
            "id": str(pk),
            "agent": agent_names[agent_id],
            "scope": scope_names[scope_id],
            "calls_per_minute": per_minute,
            "calls_per_day": per_day,
            "window": None if start is None else {
                "start": start.isoformat(timespec="minutes"),
                "end": end.isoformat(timespec="minutes"),
                "days": sorted(_json(days) or []),
                "tz": tz,
            },
            "argument_constraints": _json(constraints),
            "approval_mode": mode,
            "approval_condition": _json(condition),
            "expires_at": rfc3339(expires) if expires else None,
            # Only when set (schema version 3): bundles without it stay byte for byte the same.
            **({"on_behalf_of_group": group} if group else {}),
        }
        for (pk, agent_id, scope_id, per_minute, per_day, start, end, days, tz, constraints,
             mode, condition, expires, group) in (
            Grant.objects.for_tenant(tenant).filter(in_force).order_by("pk")
            .annotate(days_text=_text("window_days"), constraints_text=_text(
                "argument_constraints"), condition_text=_text("approval_condition"))
            .values_list(
                "pk", "agent_id", "scope_id", "calls_per_minute", "calls_per_day",
                "window_start", "window_end", "days_text", "window_tz",
                "constraints_text", "approval_mode", "condition_text", "expires_at",
                "on_behalf_of_group"))
    ]
    data = {
        "schema_version": schema_version_for(grants),
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
    if clients:
        data["clients"] = clients
    return data


def escalation_settings(tenant: Tenant) -> dict[str, Any]:
    """What gateways need to run the escalation contract (DESIGN.md §5) for this tenant."""
    return {**tenant.escalation_settings(), "endpoint": "/api/v1/gateway/escalations"}
