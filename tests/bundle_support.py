"""Helpers for bundle and gateway tests: a small registry, gateways with tokens, verification."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

from bundles import selectors, services
from governance.audit.services import Actor
from registry import services as registry
from registry.models import Tool
from tests.factories import Def, def_sha

SYSTEM = Actor.system("test")
IDP = "https://idp.example"


def small_registry(tenant, owner=None) -> dict:
    """An active server with two approved tools in a scope, an agent with a grant."""
    server = registry.server_create(tenant=tenant, actor=SYSTEM, name="payroll",
                                    transport="streamable-http", url="https://p.example/mcp")
    registry.server_transition(tenant=tenant, actor=SYSTEM, server=server, status="active")
    defs = [Def("read"), Def("pay")]
    registry.tools_record_discovery(tenant=tenant, actor=SYSTEM, server=server,
                                    definitions=[(d, def_sha(d)) for d in defs])
    tools = {t.name: t for t in Tool.objects.filter(server=server)}
    for tool in tools.values():
        registry.tool_approve(tenant=tenant, actor=SYSTEM, tool=tool)
    scope = registry.scope_create(tenant=tenant, actor=SYSTEM, name="payroll:all",
                                  tools=tools.values())
    agent = registry.agent_create(tenant=tenant, actor=SYSTEM, name="bot", owner=owner)
    registry.agent_principal_add(tenant=tenant, actor=SYSTEM, agent=agent, issuer=IDP,
                                 subject="bot")
    grant = registry.grant_create(tenant=tenant, actor=SYSTEM, agent=agent, scope=scope)
    return {"server": server, "tools": tools, "scope": scope, "agent": agent, "grant": grant}


def decision_world(tenant, owner=None) -> dict:
    """payroll (active): read, pay (approved), export (approved, then drifted: quarantined),
    wipe (blocked), draft (pending); scope payroll with all of them; agents bot (active) and
    old (suspended, with a grant)."""
    server = registry.server_create(tenant=tenant, actor=SYSTEM, name="payroll",
                                    transport="streamable-http", url="https://p.example/mcp")
    registry.server_transition(tenant=tenant, actor=SYSTEM, server=server, status="active")
    defs = [Def("read"), Def("pay"), Def("export"), Def("wipe"), Def("draft")]
    registry.tools_record_discovery(tenant=tenant, actor=SYSTEM, server=server,
                                    definitions=[(d, def_sha(d)) for d in defs])
    tools = {t.name: t for t in Tool.objects.filter(server=server)}
    for name in ("read", "pay", "export"):
        registry.tool_approve(tenant=tenant, actor=SYSTEM, tool=tools[name])
    registry.tool_block(tenant=tenant, actor=SYSTEM, tool=tools["wipe"])
    drifted = Def("export", description="exports everything, anywhere")
    listed = [*defs[:2], drifted, *defs[3:]]
    registry.tools_record_discovery(tenant=tenant, actor=SYSTEM, server=server,
                                    definitions=[(d, def_sha(d)) for d in listed])
    scope = registry.scope_create(tenant=tenant, actor=SYSTEM, name="payroll",
                                  tools=tools.values())
    bot = registry.agent_create(tenant=tenant, actor=SYSTEM, name="bot", owner=owner)
    registry.agent_principal_add(tenant=tenant, actor=SYSTEM, agent=bot, issuer=IDP,
                                 subject="bot")
    old = registry.agent_create(tenant=tenant, actor=SYSTEM, name="old", owner=None)
    registry.agent_principal_add(tenant=tenant, actor=SYSTEM, agent=old, issuer=IDP,
                                 subject="old")
    registry.grant_create(tenant=tenant, actor=SYSTEM, agent=old, scope=scope)
    registry.agent_transition(tenant=tenant, actor=SYSTEM, agent=old, status="suspended")
    return {"tenant": tenant, "server": server, "scope": scope, "bot": bot, "tools": tools,
            "pinned": {d.name: def_sha(d) for d in defs}}


def payroll_world(tenant, owner=None) -> dict:
    """payroll (active) with an approved tool pay and a pending refund, both in scope
    payroll:write, granted to agent bot (10 calls/minute)."""
    server = registry.server_create(tenant=tenant, actor=SYSTEM, name="payroll",
                                    transport="streamable-http", url="https://p.example/mcp")
    registry.server_transition(tenant=tenant, actor=SYSTEM, server=server, status="active")
    defs = [Def("pay"), Def("refund")]
    registry.tools_record_discovery(tenant=tenant, actor=SYSTEM, server=server,
                                    definitions=[(d, def_sha(d)) for d in defs])
    tools = {t.name: t for t in Tool.objects.filter(server=server)}
    registry.tool_approve(tenant=tenant, actor=SYSTEM, tool=tools["pay"])
    scope = registry.scope_create(tenant=tenant, actor=SYSTEM, name="payroll:write",
                                  tools=list(tools.values()))
    bot = registry.agent_create(tenant=tenant, actor=SYSTEM, name="bot", owner=owner)
    grant = registry.grant_create(tenant=tenant, actor=SYSTEM, agent=bot, scope=scope,
                                  calls_per_minute=10)
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
    """(gateway, plaintext token)."""
    gateway = services.gateway_create(tenant=tenant, actor=SYSTEM, name=name,
                                      labels={"region": "eu"})
    _, plaintext = services.gateway_token_issue(tenant=tenant, actor=SYSTEM, gateway=gateway,
                                                name="primary")
    return gateway, plaintext


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
