"""The reference gateway's MCP proxy (gateway/proxy.py) on real MCP traffic.

A real upstream MCP server (the official SDK's low-level server over streamable HTTP, in a
thread), a bundle built, signed and published by the control plane and verified with the
reference verifier, the proxy served by uvicorn, and the official SDK client as the agent.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx2
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec
from mcp.client.session import ClientSession
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

from bundles import selectors
from bundles.packaging import public_jwk
from bundles.publish import bundle_publish
from gateway.canonical import definition_sha256 as gateway_sha256
from gateway.counters import MemoryCounters, RedisCounters
from gateway.identity import JwtIdentities, Principal, StaticIdentities
from gateway.proxy import NO_BUNDLE_REASON, build_app, listable
from gateway.receipts import arguments_sha256
from gateway.verify import VerifiedBundle, verify_bundle
from governance.audit.services import Actor
from registry import services as registry
from registry.discovery import discover_tools
from registry.models import Tool
from registry.tool_definition import ToolDefinition
from registry.tool_definition import definition_sha256 as control_plane_sha256
from tests.factories import (
    AgentFactory,
    GrantFactory,
    ScopeFactory,
    ServerFactory,
    ToolFactory,
)
from tests.mcp_support import as_agent

REPO = Path(__file__).resolve().parents[2]
SYSTEM = Actor.system("test")
IDP = "https://idp.example"
BOT_TOKEN = "bot-secret-token"
STRANGER_TOKEN = "stranger-token"
SERVER = "payroll"


def wire_tool(name: str, **properties: Any) -> dict[str, Any]:
    return {
        "name": name,
        "title": f"{name.title()} tool",
        "description": f"Does {name}.",
        "inputSchema": {"type": "object", "properties": properties or {"id": {"type": "string"}}},
        "annotations": {"readOnlyHint": name == "read", "unknownHint": None},
    }


UPSTREAM_TOOLS = [
    wire_tool("pay", amount={"type": "number"}, to={"type": "string"}),
    wire_tool("read"),
    wire_tool("refund"),
    wire_tool("secret"),
]


# ------------------------------------------------------------------------------------------
# Real servers in threads
# ------------------------------------------------------------------------------------------


class Served:
    """An ASGI app served by uvicorn on a free loopback port in a thread."""

    def __init__(self, app: Any, path: str = "/mcp", port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}{path}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                pytest.fail("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


class Upstream:
    """A real MCP server whose tools a test can change; tools/call echoes what it got."""

    def __init__(self) -> None:
        self.tools = [dict(t) for t in UPSTREAM_TOOLS]
        self.calls: list[tuple[str, dict[str, Any]]] = []

        async def list_tools(ctx: Any, params: Any) -> dict[str, Any]:
            return {"tools": self.tools}

        async def call_tool(ctx: Any, params: Any) -> dict[str, Any]:
            self.calls.append((params.name, dict(params.arguments or {})))
            text = f"upstream {params.name} done: {json.dumps(params.arguments, sort_keys=True)}"
            return {"content": [{"type": "text", "text": text}], "isError": False}

        server = Server("payroll-upstream", version="1.0", on_list_tools=list_tools,
                        on_call_tool=call_tool)
        self.app = server.streamable_http_app(host="127.0.0.1")


@pytest.fixture
def upstream_served() -> Iterator[tuple[Upstream, Served]]:
    server = Upstream()
    with Served(server.app) as served:
        yield server, served


@pytest.fixture
def upstream(upstream_served) -> tuple[Upstream, str]:
    return upstream_served[0], upstream_served[1].url


# ------------------------------------------------------------------------------------------
# The policy: built, signed and published by the control plane, verified like a gateway does
# ------------------------------------------------------------------------------------------


def publish_world(tenant, upstream_url: str) -> VerifiedBundle:
    """payroll (active) discovered live: pay, read, refund, secret approved.
    bot (principal IDP/bot) holds: payroll:pay (amount ≤ 100), payroll:read (2/minute,
    2/day), payroll:refund (approval always). secret is in no scope."""
    server = ServerFactory(tenant=tenant, name=SERVER, url=upstream_url)
    found = discover_tools(transport="streamable-http", url=upstream_url, timeout=15)
    tools = ToolFactory.listed(server, found.tools,
                               approved=sorted(d.name for d in found.tools))
    bot = AgentFactory(tenant=tenant, name="bot", principals=[(IDP, "bot")])
    scopes = {name: ScopeFactory(tenant=tenant, name=f"payroll:{name}", tools=[tools[name]])
              for name in ("pay", "read", "refund")}
    GrantFactory(tenant=tenant, agent=bot, scope=scopes["pay"],
                 argument_constraints={"pay": {"amount": {"maximum": 100}}})
    GrantFactory(tenant=tenant, agent=bot, scope=scopes["read"], calls_per_minute=2,
                 calls_per_day=2)
    GrantFactory(tenant=tenant, agent=bot, scope=scopes["refund"], approval_mode="always")
    bundle = bundle_publish(tenant=tenant, trigger="test")
    return verify_bundle(bytes(bundle.blob.content), jwks=selectors.jwks(tenant.pk),
                         tenant=tenant.slug)


@pytest.fixture
def bundle(tenant_a, upstream) -> VerifiedBundle:
    return publish_world(tenant_a, upstream[1])


IDENTITIES = StaticIdentities({BOT_TOKEN: (IDP, "bot"), STRANGER_TOKEN: (IDP, "nobody")})


class Gateway:
    """The proxy under test, serving in a thread, with the decisions it reported."""

    def __init__(self, url: str, events: list[dict[str, Any]]) -> None:
        self.url = url
        self.events = events


@pytest.fixture
def serve_gateway(upstream) -> Iterator[Callable[..., Gateway]]:
    stack: list[Served] = []

    def start(bundle_source: Callable[[], VerifiedBundle | None], **options: Any) -> Gateway:
        events: list[dict[str, Any]] = []
        options.setdefault("identities", IDENTITIES)
        options.setdefault("tools_ttl", 0)
        app = build_app(bundle_source=bundle_source, server_name=SERVER,
                        upstream_url=upstream[1], decision_sink=events.append, **options)
        served = Served(app).__enter__()
        stack.append(served)
        return Gateway(served.url, events)

    yield start
    for served in reversed(stack):
        served.__exit__(None, None, None)


async def tool_names(session: ClientSession) -> list[str]:
    return sorted(t.name for t in (await session.list_tools()).tools)


def call(name: str, arguments: dict[str, Any] | None = None):
    async def work(session: ClientSession):
        return await session.call_tool(name, arguments or {})
    return work


def text_of(result) -> str:
    return " ".join(getattr(part, "text", "") for part in result.content)


# ------------------------------------------------------------------------------------------
# The definition hash is the control plane's
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tool", [
    *UPSTREAM_TOOLS,
    {"name": "x", "inputSchema": {"type": "object"}, "title": None, "annotations": None},
    {"name": "ü", "inputSchema": {"type": "object", "properties": {"n": {"maximum": 1.0}}},
     "outputSchema": {"type": "object"}, "icons": [{"src": "a.png"}], "_meta": {"k": 1}},
])
def test_the_gateway_hashes_a_wire_tool_exactly_like_the_control_plane(tool):
    assert gateway_sha256(tool) == control_plane_sha256(ToolDefinition.from_wire(tool))


# ------------------------------------------------------------------------------------------
# Enforcement
# ------------------------------------------------------------------------------------------


def test_allowed_call_returns_the_upstream_result_and_is_logged(bundle, serve_gateway, upstream):
    gateway = serve_gateway(lambda: bundle)
    result = as_agent(gateway.url, BOT_TOKEN, call("pay", {"amount": 40, "to": "ann"}))
    assert not result.is_error
    assert text_of(result) == 'upstream pay done: {"amount": 40, "to": "ann"}'
    assert upstream[0].calls == [("pay", {"amount": 40, "to": "ann"})]
    [event] = gateway.events
    assert event["outcome"] == "allow"
    assert event["agent"] == "bot"
    assert event["principal"] == {"issuer": IDP, "subject": "bot"}
    assert (event["server"], event["tool"]) == (SERVER, "pay")
    assert event["bundle_revision"] == bundle.revision_number
    assert event["grant"] and event["reason"] == f"grant {event['grant']}"
    assert event["arguments_sha256"] == arguments_sha256({"amount": 40, "to": "ann"})
    assert len(event["call_id"]) == 32


def test_tools_list_shows_only_the_tools_the_agent_may_call(bundle, serve_gateway):
    gateway = serve_gateway(lambda: bundle)
    assert as_agent(gateway.url, BOT_TOKEN, tool_names) == ["pay", "read", "refund"]
    # A known credential whose principal is no agent of the bundle sees nothing.
    assert as_agent(gateway.url, STRANGER_TOKEN, tool_names) == []


def test_ungranted_tool_is_refused_on_call(bundle, serve_gateway, upstream):
    gateway = serve_gateway(lambda: bundle)
    result = as_agent(gateway.url, BOT_TOKEN, call("secret"))
    assert result.is_error
    assert text_of(result) == f"denied by Tollgate: no grant of bot covers {SERVER}/secret"
    assert upstream[0].calls == []
    assert gateway.events[-1]["outcome"] == "deny"
    stranger = as_agent(gateway.url, STRANGER_TOKEN, call("pay", {"amount": 1}))
    assert stranger.is_error and text_of(stranger) == "denied by Tollgate: unknown principal"
    assert upstream[0].calls == []


def test_argument_constraint_violated_is_refused_with_the_reason(bundle, serve_gateway,
                                                                  upstream):
    gateway = serve_gateway(lambda: bundle)
    result = as_agent(gateway.url, BOT_TOKEN, call("pay", {"amount": 5000, "to": "eve"}))
    assert result.is_error
    assert text_of(result).startswith("denied by Tollgate: grant ")
    assert "argument" in text_of(result) and "amount" in text_of(result)
    assert upstream[0].calls == []
    assert gateway.events[-1]["reason"] in text_of(result)


def test_rate_limit_reached_is_refused(bundle, serve_gateway, upstream):
    gateway = serve_gateway(lambda: bundle, counters=MemoryCounters())

    async def three_reads(session: ClientSession):
        return [await session.call_tool("read", {"id": str(n)}) for n in range(3)]

    first, second, third = as_agent(gateway.url, BOT_TOKEN, three_reads)
    assert not first.is_error and not second.is_error
    assert third.is_error
    # 2/minute and 2/day: whichever window the third call lands in, it is over the limit.
    assert ("rate limit 2/minute reached" in text_of(third)
            or "quota 2/day reached" in text_of(third))
    assert [name for name, _ in upstream[0].calls] == ["read", "read"]
    assert [e["outcome"] for e in gateway.events] == ["allow", "allow", "deny"]


def test_drifted_tool_is_refused_at_the_gateway(bundle, serve_gateway, upstream):
    gateway = serve_gateway(lambda: bundle)
    server, _ = upstream
    assert not as_agent(gateway.url, BOT_TOKEN, call("read", {"id": "1"})).is_error
    server.tools[1] = {**server.tools[1], "description": "Reads, then sends it all elsewhere."}
    result = as_agent(gateway.url, BOT_TOKEN, call("read", {"id": "2"}))
    assert result.is_error
    assert text_of(result) == (f"denied by Tollgate: tool {SERVER}/read definition differs "
                               "from the pinned one")
    assert server.calls == [("read", {"id": "1"})]
    assert as_agent(gateway.url, BOT_TOKEN, tool_names) == ["pay", "refund"]


def test_a_tool_the_upstream_no_longer_offers_is_refused(bundle, serve_gateway, upstream):
    gateway = serve_gateway(lambda: bundle)
    server, _ = upstream
    server.tools = [t for t in server.tools if t["name"] != "pay"]
    result = as_agent(gateway.url, BOT_TOKEN, call("pay", {"amount": 1}))
    assert result.is_error
    assert text_of(result) == f"denied by Tollgate: tool {SERVER}/pay is not offered by the " \
                              "upstream server"
    assert server.calls == []


def test_upstream_down_is_refused_and_the_gateway_reconnects(bundle, serve_gateway,
                                                              upstream_served):
    gateway = serve_gateway(lambda: bundle, upstream_timeout=5)
    first, served = upstream_served
    assert not as_agent(gateway.url, BOT_TOKEN, call("read", {"id": "1"})).is_error
    served.__exit__(None, None, None)
    down = as_agent(gateway.url, BOT_TOKEN, call("read", {"id": "2"}))
    assert down.is_error
    assert text_of(down).startswith("denied by Tollgate: upstream MCP server unavailable")
    assert gateway.events[-1]["outcome"] == "deny"
    second = Upstream()  # the server comes back on the same address
    with Served(second.app, port=served.port):
        deadline = time.monotonic() + 30
        while True:
            result = as_agent(gateway.url, BOT_TOKEN, call("pay", {"amount": 2}))
            if not result.is_error or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert not result.is_error, text_of(result)
    assert second.calls == [("pay", {"amount": 2})]


def test_escalated_call_is_not_forwarded_and_says_approval_is_required(bundle, serve_gateway,
                                                                        upstream):
    gateway = serve_gateway(lambda: bundle)
    result = as_agent(gateway.url, BOT_TOKEN, call("refund", {"id": "7"}))
    assert result.is_error
    assert text_of(result).startswith("approval required: grant ")
    assert "requires approval (always)" in text_of(result)
    assert upstream[0].calls == []
    assert gateway.events[-1]["outcome"] == "escalate"


def test_no_bundle_fails_closed(bundle, serve_gateway, upstream):
    current: dict[str, VerifiedBundle | None] = {"bundle": None}
    gateway = serve_gateway(lambda: current["bundle"])
    assert as_agent(gateway.url, BOT_TOKEN, tool_names) == []
    result = as_agent(gateway.url, BOT_TOKEN, call("pay", {"amount": 1}))
    assert result.is_error and text_of(result) == f"denied by Tollgate: {NO_BUNDLE_REASON}"
    assert upstream[0].calls == []
    event = gateway.events[-1]
    assert (event["outcome"], event["bundle_revision"], event["agent"]) == ("deny", None, None)
    # The bundle arrives: the same gateway starts allowing.
    current["bundle"] = bundle
    assert as_agent(gateway.url, BOT_TOKEN, tool_names) == ["pay", "read", "refund"]


def test_missing_or_unknown_bearer_is_401_before_mcp(bundle, serve_gateway, upstream):
    gateway = serve_gateway(lambda: bundle)
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}}
    headers = {"Accept": "application/json, text/event-stream"}
    for extra in ({}, {"Authorization": "Bearer not-a-known-token"},
                  {"Authorization": f"Basic {BOT_TOKEN}"}):
        response = httpx2.post(gateway.url, json=initialize, headers=headers | extra)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith('Bearer realm="tollgate"')
    ok = httpx2.post(gateway.url, json=initialize,
                     headers=headers | {"Authorization": f"Bearer {BOT_TOKEN}"})
    assert ok.status_code == 200
    # The official client cannot even initialize: its initialize request was answered 401.
    with pytest.raises(BaseExceptionGroup) as caught:
        as_agent(gateway.url, "wrong", tool_names)
    assert caught.group_contains(MCPError, match="error response", depth=None)
    assert gateway.events == []


def test_a_third_party_stdio_upstream_is_enforced_too(tenant_a, everything_js):
    """npm @modelcontextprotocol/server-everything, spawned over stdio by the gateway."""
    command = ["node", str(everything_js), "stdio"]
    server = registry.server_create(tenant=tenant_a, actor=SYSTEM, name="everything",
                                    transport="stdio", command=command)
    registry.server_transition(tenant=tenant_a, actor=SYSTEM, server=server, status="active")
    found = discover_tools(transport="stdio", command=command, timeout=30)
    registry.tools_record_discovery(tenant=tenant_a, actor=SYSTEM, server=server,
                                    definitions=[(d, d.definition_sha256) for d in found.tools])
    tools = {t.name: t for t in Tool.objects.filter(server=server)}
    for name in ("echo", "get-sum"):
        registry.tool_approve(tenant=tenant_a, actor=SYSTEM, tool=tools[name])
    bot = registry.agent_create(tenant=tenant_a, actor=SYSTEM, name="bot", owner=None)
    registry.agent_principal_add(tenant=tenant_a, actor=SYSTEM, agent=bot, issuer=IDP,
                                 subject="bot")
    scope = registry.scope_create(tenant=tenant_a, actor=SYSTEM, name="everything:echo",
                                  tools=[tools["echo"]])
    registry.grant_create(tenant=tenant_a, actor=SYSTEM, agent=bot, scope=scope)
    published = bundle_publish(tenant=tenant_a, trigger="test")
    verified = verify_bundle(bytes(published.blob.content), jwks=selectors.jwks(tenant_a.pk),
                             tenant=tenant_a.slug)
    events: list[dict[str, Any]] = []
    app = build_app(bundle_source=lambda: verified, server_name="everything",
                    upstream_cmd=command, identities=IDENTITIES, decision_sink=events.append)
    with Served(app) as gateway:
        assert as_agent(gateway.url, BOT_TOKEN, tool_names) == ["echo"]
        echoed = as_agent(gateway.url, BOT_TOKEN, call("echo", {"message": "through tollgate"}))
        assert not echoed.is_error and "through tollgate" in text_of(echoed)
        summed = as_agent(gateway.url, BOT_TOKEN, call("get-sum", {"a": 1, "b": 2}))
        assert summed.is_error
        assert text_of(summed) == "denied by Tollgate: no grant of bot covers everything/get-sum"
    assert [e["outcome"] for e in events] == ["allow", "deny"]


# ------------------------------------------------------------------------------------------
# JWT identities against a JWKS served over HTTP
# ------------------------------------------------------------------------------------------


@pytest.fixture
def jwks_endpoint() -> Iterator[tuple[str, Any]]:
    key = ec.generate_private_key(ec.SECP256R1())
    document = json.dumps({"keys": [public_jwk(key.public_key(), "idp-1")]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(document)))
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/jwks.json", key
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def test_jwt_identity_checked_against_the_issuers_jwks(bundle, serve_gateway, jwks_endpoint,
                                                       upstream):
    jwks_url, key = jwks_endpoint
    gateway = serve_gateway(lambda: bundle, identities=JwtIdentities(
        issuer=IDP, jwks_url=jwks_url, audience="tollgate-gateway"))
    now = datetime.now(UTC)

    def token(signing_key=key, **claims: Any) -> str:
        body = {"iss": IDP, "sub": "bot", "aud": "tollgate-gateway", "iat": now,
                "exp": now + timedelta(minutes=5)} | claims
        return jwt.encode(body, signing_key, algorithm="ES256", headers={"kid": "idp-1"})

    result = as_agent(gateway.url, token(), call("pay", {"amount": 3}))
    assert not result.is_error and upstream[0].calls == [("pay", {"amount": 3})]
    assert gateway.events[-1]["principal"] == {"issuer": IDP, "subject": "bot"}
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}}
    headers = {"Accept": "application/json, text/event-stream"}
    stranger = ec.generate_private_key(ec.SECP256R1())
    for bad in (token(exp=now - timedelta(minutes=5)), token(iss="https://evil.example"),
                token(aud="someone-else"), token(signing_key=stranger)):
        response = httpx2.post(gateway.url, json=initialize,
                               headers=headers | {"Authorization": f"Bearer {bad}"})
        assert response.status_code == 401


def test_static_identities_reject_an_empty_token():
    with pytest.raises(ValueError):
        StaticIdentities({"": (IDP, "bot")})
    assert anyio.run(StaticIdentities({"t": Principal(IDP, "bot")}).identify, "t") == \
        Principal(IDP, "bot")


# ------------------------------------------------------------------------------------------
# Counters
# ------------------------------------------------------------------------------------------


def test_memory_counters_count_per_minute_and_per_day():
    counters = MemoryCounters()
    at = datetime(2026, 11, 24, 10, 0, 30, tzinfo=UTC)

    async def scenario():
        taken = [await counters.reserve("g", at), await counters.reserve(
            "g", at + timedelta(seconds=10), per_minute=2)]
        same_minute = await counters.usage(["g", "other"], at + timedelta(seconds=20))
        full = await counters.reserve("g", at + timedelta(seconds=25), per_minute=2)
        next_minute = await counters.usage(["g"], at + timedelta(minutes=1))
        quota = await counters.reserve("g", at + timedelta(minutes=1), per_minute=2, per_day=2)
        next_day = await counters.usage(["g"], at + timedelta(days=1))
        return taken, same_minute, full, next_minute, quota, next_day

    taken, same_minute, full, next_minute, quota, next_day = anyio.run(scenario)
    assert taken == [None, None]
    assert same_minute == {"g": (2, 2), "other": (0, 0)}
    assert full == "minute"  # nothing counted
    assert next_minute == {"g": (0, 2)}
    assert quota == "day"
    assert next_day == {"g": (0, 0)}


def test_concurrent_reservations_on_two_redis_replicas_never_overshoot(replica_redis):
    prefix = f"tollgate:gw-test:{uuid.uuid4().hex}"
    at = datetime.now(UTC)

    async def race():
        replicas = [RedisCounters(replica_redis, prefix=prefix) for _ in range(2)]
        results: list[str | None] = []

        async def take(counters: RedisCounters) -> None:
            results.append(await counters.reserve("g", at, per_minute=5, per_day=100))

        async with anyio.create_task_group() as group:
            for i in range(40):
                group.start_soon(take, replicas[i % 2])
        usage = await replicas[0].usage(["g"], at)
        for counters in replicas:
            await counters.aclose()
        return results, usage

    results, usage = anyio.run(race)
    assert results.count(None) == 5 and results.count("minute") == 35
    assert usage == {"g": (5, 5)}


@pytest.fixture
def replica_redis() -> str:
    """A Redis database for gateway replicas' counters: REDIS_URL's database + 4 (mod 16), so
    never a database of the control plane's tests, whose every test starts by clearing
    ``tollgate:*`` (tests/xdist_env.py puts the other xdist worker at + 8)."""
    base = os.environ.get("REDIS_URL")
    if not base:
        pytest.skip("needs Redis: set REDIS_URL=redis://…")
    parts = urlsplit(base)
    url = urlunsplit(parts._replace(path=f"/{(int(parts.path.strip('/') or 0) + 4) % 16}"))
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError:
        pytest.skip(f"needs Redis at {url}")
    return url


def test_redis_counters_are_shared_by_two_gateway_replicas(bundle, serve_gateway, upstream,
                                                           replica_redis):
    prefix = f"tollgate:gw-test:{uuid.uuid4().hex}"
    first = serve_gateway(lambda: bundle, counters=RedisCounters(replica_redis, prefix=prefix))
    second = serve_gateway(lambda: bundle, counters=RedisCounters(replica_redis, prefix=prefix))
    assert not as_agent(first.url, BOT_TOKEN, call("read", {"id": "1"})).is_error
    assert not as_agent(second.url, BOT_TOKEN, call("read", {"id": "2"})).is_error
    third = as_agent(first.url, BOT_TOKEN, call("read", {"id": "3"}))
    assert third.is_error
    assert ("rate limit 2/minute reached" in text_of(third)
            or "quota 2/day reached" in text_of(third))
    fourth = as_agent(second.url, BOT_TOKEN, call("read", {"id": "4"}))
    assert fourth.is_error
    assert [args for _, args in upstream[0].calls] == [{"id": "1"}, {"id": "2"}]
    import redis

    client = redis.Redis.from_url(replica_redis)
    keys = list(client.scan_iter(f"{prefix}:*"))
    assert keys and all(0 < client.ttl(k) for k in keys)  # every window key expires
    client.delete(*keys)


# ------------------------------------------------------------------------------------------
# The listing rule, on the bundle's own data
# ------------------------------------------------------------------------------------------


def test_listable_hides_drifted_unapproved_and_expired(bundle):
    data = bundle.data
    at = datetime.now(UTC)
    pinned = {name: data["tools"][f"{SERVER}/{name}"]["definition_sha256"]
              for name in ("pay", "read")}

    def shown(tool: str, sha: str | None, d=data) -> bool:
        return listable(d, issuer=IDP, subject="bot", server=SERVER, tool=tool, at=at,
                        live_sha256=sha)

    assert shown("pay", pinned["pay"]) and shown("read", pinned["read"])
    assert not shown("read", "0" * 64)  # drifted
    assert not shown("nope", None)  # not in the bundle
    expired = json.loads(json.dumps(data))
    for grant in expired["grants"]:
        grant["expires_at"] = (at - timedelta(minutes=1)).isoformat()
    assert not shown("pay", pinned["pay"], expired)


def test_the_proxy_modules_never_import_django():
    import subprocess
    import sys

    code = ("import sys, gateway.proxy, gateway.identity, gateway.counters, gateway.canonical; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'django', 'governance', 'registry', 'approvals'}); print(bad); sys.exit(bool(bad))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
