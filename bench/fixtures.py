"""The bench's data: small tenants built through the services (as an admin would), and the
synthetic large tenants of the compile benchmark, built with ``bulk_create``.

``bulk_create`` skips validation and the audit trail on purpose: it is a benchmark fixture (tens
of thousands of rows in seconds), not a way to write the registry. The rows are shaped as the
services would write them, so the compiler sees what it sees in production.
"""

# ruff: noqa: S311 - random only shapes synthetic benchmark data

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import time, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.utils import timezone

from bundles import publish, services
from bundles.models import Gateway
from governance.audit.services import Actor
from governance.tenancy.models import Tenant
from governance.tenancy.services import tenant_create
from registry import services as registry
from registry.models import Agent, AgentPrincipal, Grant, McpServer, Tool, ToolScope
from registry.tool_definition import ToolDefinition, definition_sha256

SYSTEM = Actor.system("bench")
IDP = "https://idp.bench.example"


@dataclass
class SmallTenant:
    tenant: Tenant
    agent: Agent
    scope: ToolScope


def small_tenant(slug: str) -> SmallTenant:
    """A tenant with an active server, two approved tools in a scope, an agent with a grant —
    made through the services, like the tests' small registry."""
    tenant = tenant_create(actor=SYSTEM, slug=slug, name=f"Bench {slug}")
    server = registry.server_create(tenant=tenant, actor=SYSTEM, name="payroll",
                                    transport="streamable-http", url="https://p.example/mcp")
    registry.server_transition(tenant=tenant, actor=SYSTEM, server=server, status="active")
    definitions = [ToolDefinition(name=name, description=f"{name} payroll",
                                  input_schema={"type": "object",
                                                "properties": {"amount": {"type": "number"}}})
                   for name in ("read", "pay")]
    registry.tools_record_discovery(tenant=tenant, actor=SYSTEM, server=server,
                                    definitions=[(d, definition_sha256(d)) for d in definitions])
    tools = list(Tool.objects.filter(server=server))
    for tool in tools:
        registry.tool_approve(tenant=tenant, actor=SYSTEM, tool=tool)
    scope = registry.scope_create(tenant=tenant, actor=SYSTEM, name="payroll:all", tools=tools)
    agent = registry.agent_create(tenant=tenant, actor=SYSTEM, name="bot", owner=None)
    registry.agent_principal_add(tenant=tenant, actor=SYSTEM, agent=agent, issuer=IDP,
                                 subject=f"{slug}-bot")
    registry.grant_create(tenant=tenant, actor=SYSTEM, agent=agent, scope=scope,
                          calls_per_minute=60)
    return SmallTenant(tenant, agent, scope)


def gateways_with_tokens(tenant: Tenant, count: int, prefix: str) -> list[tuple[int, str]]:
    """``count`` gateways of ``tenant``, one token each: [(gateway id, plaintext token)]."""
    found = []
    for i in range(count):
        gateway = services.gateway_create(tenant=tenant, actor=SYSTEM, name=f"{prefix}-{i:03d}",
                                          labels={"bench": prefix})
        _, plaintext = services.gateway_token_issue(tenant=tenant, actor=SYSTEM,
                                                    gateway=gateway, name="bench")
        found.append((gateway.pk, plaintext))
    return found


def publish_now(tenant: Tenant, *, force: bool = True) -> dict[str, Any]:
    """Publish the tenant's bundle now (no worker involved); its hot-store pointer."""
    publish.bundle_publish(tenant=tenant, trigger="bench", force=force)
    pointer = publish.current_pointer(tenant.slug)
    assert pointer is not None  # noqa: S101 - bundle_publish just committed one
    return pointer


def gateway_ids(tenant: Tenant, prefix: str) -> list[int]:
    return list(Gateway.objects.for_tenant(tenant).filter(name__startswith=prefix)
                .values_list("pk", flat=True))


# --- Synthetic large tenants (bulk_create: benchmark fixture only) ------------------------------

FULL = {"agents": 10_000, "servers": 1_000, "tools": 20_000, "scopes": 2_000, "grants": 50_000}
TIME_ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def synthetic_tenant(slug: str, scale: float, *, seed: int = 7) -> dict[str, int]:
    """A tenant of ``scale`` × FULL rows, every agent with a principal, every tool approved and
    in at least one scope, grants with a mix of limits, windows, constraints, approval modes and
    expiries (plus 1 % withheld tools and 2 % revoked grants, which the bundle leaves out).
    Returns the row counts."""
    rng = random.Random(seed)
    n = {k: max(1, round(v * scale)) for k, v in FULL.items()}
    tenant = tenant_create(actor=SYSTEM, slug=slug, name=f"Bench synthetic {scale:g}")
    users = _owners(20)
    now = timezone.now()
    batch = 5000

    servers = McpServer.objects.bulk_create([
        McpServer(tenant=tenant, name=f"srv-{i:04d}", transport="streamable-http",
                  url=f"https://srv-{i:04d}.bench.example/mcp", version="1.0.0",
                  data_classes=rng.sample(["pii", "phi", "pci", "financial"], rng.randint(0, 2)),
                  risk_tier=rng.choice(["low", "medium", "high", "critical"]),
                  status=McpServer.Status.ACTIVE)
        for i in range(n["servers"])
    ], batch_size=batch)

    per_server = -(-n["tools"] // n["servers"])
    tool_rows, tool_names = [], []
    schema = {"type": "object", "properties": {"amount": {"type": "number"},
                                               "region": {"type": "string"},
                                               "ref": {"type": "string"}}}
    for i in range(n["tools"]):
        server = servers[i // per_server]
        name = f"op_{i % per_server:02d}"
        annotations = {"readOnlyHint": i % 3 == 0, "destructiveHint": i % 7 == 0}
        definition = ToolDefinition(name=name, title=f"Operation {i}", description="does a "
                                    "thing for the benchmark", input_schema=schema,
                                    annotations=annotations)
        tool_rows.append(Tool(tenant=tenant, server=server, name=name, title=definition.title,
                              description=definition.description, input_schema=schema,
                              annotations=annotations, status=Tool.Status.APPROVED,
                              definition_sha256=_sha(f"{server.name}/{name}/{i}")))
        tool_names.append(name)
    withheld = max(1, n["tools"] // 100)
    for i in range(withheld):
        server = servers[i % len(servers)]
        tool_rows.append(Tool(tenant=tenant, server=server, name=f"held_{i:04d}",
                              status=rng.choice([Tool.Status.QUARANTINED, Tool.Status.BLOCKED]),
                              definition_sha256=_sha(f"held/{i}")))
    tools = Tool.objects.bulk_create(tool_rows, batch_size=batch)[:n["tools"]]

    scopes = ToolScope.objects.bulk_create([
        ToolScope(tenant=tenant, name=f"scope-{i:04d}:{rng.choice(['read', 'write', 'admin'])}",
                  risk_level=rng.choice(["low", "medium", "high"]),
                  data_classes=rng.sample(["pii", "financial", "public"], rng.randint(0, 2)))
        for i in range(n["scopes"])
    ], batch_size=batch)
    # Every tool in one scope (consecutive blocks), plus a few more shared across scopes.
    members: dict[int, set[int]] = {i: set() for i in range(n["scopes"])}
    for t in range(n["tools"]):
        members[t * n["scopes"] // n["tools"]].add(t)
    for s in range(n["scopes"]):
        members[s].update(rng.sample(range(n["tools"]), min(2, n["tools"])))
    Through = ToolScope.tools.through
    Through.objects.bulk_create([
        Through(toolscope_id=scopes[s].pk, tool_id=tools[t].pk)
        for s, ts in members.items() for t in sorted(ts)
    ], batch_size=batch)
    scope_tool_names = {s: sorted({tool_names[t] for t in ts}) for s, ts in members.items()}

    agents = Agent.objects.bulk_create([
        Agent(tenant=tenant, name=f"agent-{i:05d}", owner=users[i % len(users)],
              purpose="benchmark", environment=rng.choice(["prod", "staging", "dev"]),
              status=Agent.Status.SUSPENDED if rng.random() < 0.02 else Agent.Status.ACTIVE)
        for i in range(n["agents"])
    ], batch_size=batch)
    AgentPrincipal.objects.bulk_create([
        AgentPrincipal(tenant=tenant, agent=agent, issuer=IDP, subject=f"{slug}-client-{i}")
        for i, agent in enumerate(agents)
    ], batch_size=batch)

    grants = []
    for i in range(n["grants"]):
        s = rng.randrange(n["scopes"])
        names = scope_tool_names[s]
        g = Grant(tenant=tenant, agent=agents[i % n["agents"]], scope=scopes[s], created_at=now)
        roll = rng.random()
        if roll < 0.20:
            g.calls_per_minute, g.calls_per_day = rng.choice([10, 60, 600]), rng.choice(
                [None, 1000, 10_000])
        if rng.random() < 0.10:
            g.window_start, g.window_end = time(8, 0), time(18, 0)
            g.window_days, g.window_tz = [0, 1, 2, 3, 4], rng.choice(TIME_ZONES)
        if rng.random() < 0.15:
            tool = rng.choice(names)
            rules: dict[str, Any] = {"amount": {"minimum": 0, "maximum": rng.choice([100, 1e4])},
                                     "region": {"enum": ["eu", "us"]}}
            if rng.random() < 0.2:  # not expressible in Cedar: the header says so
                rules["ref"] = {"pattern": "^[A-Z]{3}-[0-9]+$", "maxLength": 20}
            g.argument_constraints = {tool: rules}
        mode = rng.random()
        if mode < 0.10:
            g.approval_mode = Grant.ApprovalMode.ALWAYS
        elif mode < 0.25:
            g.approval_mode = Grant.ApprovalMode.WHEN
            g.approval_condition = {rng.choice(names): {"amount": {"minimum": 500}}}
        if rng.random() < 0.10:
            g.expires_at = now + timedelta(days=rng.randint(1, 90))
        if rng.random() < 0.02:
            g.status, g.revoked_at = Grant.Status.REVOKED, now
        grants.append(g)
    Grant.objects.bulk_create(grants, batch_size=batch)
    return {**n, "withheld_tools": withheld,
            "scope_memberships": sum(len(ts) for ts in members.values())}


def _owners(count: int) -> list:
    User = get_user_model()
    existing = list(User.objects.filter(username__startswith="bench-owner-").order_by("pk"))
    if len(existing) >= count:
        return existing[:count]
    User.objects.bulk_create([User(username=f"bench-owner-{i:02d}")
                              for i in range(len(existing), count)])
    return list(User.objects.filter(username__startswith="bench-owner-").order_by("pk"))
