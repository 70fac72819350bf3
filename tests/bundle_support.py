"""Helpers for bundle and gateway tests: registries of a known shape (built with the factories
of tests/factories.py), gateways with tokens, verification."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

from bundles import selectors
from registry import services as registry
from tests.factories import (
    IDP,
    SYSTEM,
    AgentFactory,
    Def,
    GatewayFactory,
    GrantFactory,
    ScopeFactory,
    ServerFactory,
    ToolFactory,
    def_sha,
)


def small_registry(tenant, owner=None) -> dict:
    """An active server with two approved tools in a scope, an agent with a grant."""
    server = ServerFactory(tenant=tenant, name="payroll", url="https://p.example/mcp")
    tools = ToolFactory.listed(server, ["read", "pay"], approved=["pay", "read"])
    scope = ScopeFactory(tenant=tenant, name="payroll:all", tools=tools.values())
    agent = AgentFactory(tenant=tenant, name="bot", owner=owner, principals=[(IDP, "bot")])
    grant = GrantFactory(tenant=tenant, agent=agent, scope=scope)
    return {"server": server, "tools": tools, "scope": scope, "agent": agent, "grant": grant}


def decision_world(tenant, owner=None) -> dict:
    """payroll (active): read, pay (approved), export (approved, then drifted: quarantined),
    wipe (blocked), draft (pending); scope payroll with all of them; agents bot (active) and
    old (suspended, with a grant)."""
    server = ServerFactory(tenant=tenant, name="payroll", url="https://p.example/mcp")
    defs = [Def("read"), Def("pay"), Def("export"), Def("wipe"), Def("draft")]
    tools = ToolFactory.listed(server, defs, approved=["read", "pay", "export"],
                               blocked=["wipe"])
    drifted = Def("export", description="exports everything, anywhere")
    ToolFactory.listed(server, [*defs[:2], drifted, *defs[3:]])
    scope = ScopeFactory(tenant=tenant, name="payroll", tools=tools.values())
    bot = AgentFactory(tenant=tenant, name="bot", owner=owner, principals=[(IDP, "bot")])
    old = AgentFactory(tenant=tenant, name="old", principals=[(IDP, "old")])
    GrantFactory(tenant=tenant, agent=old, scope=scope)
    registry.agent_transition(tenant=tenant, actor=SYSTEM, agent=old, status="suspended")
    return {"tenant": tenant, "server": server, "scope": scope, "bot": bot, "tools": tools,
            "pinned": {d.name: def_sha(d) for d in defs}}


def payroll_world(tenant, owner=None) -> dict:
    """payroll (active) with an approved tool pay and a pending refund, both in scope
    payroll:write, granted to agent bot (10 calls/minute)."""
    server = ServerFactory(tenant=tenant, name="payroll", url="https://p.example/mcp")
    tools = ToolFactory.listed(server, ["pay", "refund"], approved=["pay"])
    scope = ScopeFactory(tenant=tenant, name="payroll:write", tools=list(tools.values()))
    bot = AgentFactory(tenant=tenant, name="bot", owner=owner)
    grant = GrantFactory(tenant=tenant, agent=bot, scope=scope, calls_per_minute=10)
    return {"server": server, "tools": tools, "scope": scope, "bot": bot, "grant": grant}


def publish_two_revisions(tenant, world) -> tuple:
    """r1 of ``payroll_world``; r2 after approving refund and raising the grant's limit."""
    from bundles.publish import bundle_publish

    first = bundle_publish(tenant=tenant, trigger="test")
    registry.tool_approve(tenant=tenant, actor=SYSTEM, tool=world["tools"]["refund"])
    registry.grant_update(tenant=tenant, actor=SYSTEM, grant=world["grant"], calls_per_minute=20)
    second = bundle_publish(tenant=tenant, trigger="registry change")
    return first, second


def make_gateway(tenant, name="edge-1"):
    """(gateway, plaintext token): ``GatewayFactory`` with a region label and a token."""
    gateway = GatewayFactory(tenant=tenant, name=name, labels={"region": "eu"})
    return gateway, gateway.plaintext_token


def jwks_of(tenant) -> dict:
    return selectors.jwks(tenant.pk)


def tar_files(content: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def data_of(content: bytes) -> dict:
    return json.loads(tar_files(content)["mcp/data.json"])


def with_data_json(tarball: bytes, data_json: bytes) -> bytes:
    """The same bundle (manifest and signature untouched, so it no longer verifies) with
    ``mcp/data.json`` replaced. Deterministic (gzip mtime 0): the same input, the same bytes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as source, \
            tarfile.open(fileobj=raw, mode="w:") as target:
        for member in source.getmembers():
            content = source.extractfile(member).read()
            if member.name == "mcp/data.json":
                content = data_json
                member.size = len(content)
            target.addfile(member, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), mtime=0)
