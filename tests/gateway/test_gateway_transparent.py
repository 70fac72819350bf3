"""The reference gateway as a transparent MCP proxy, end to end (issue 22).

A real upstream — tests/mcp_servers/session_server.py, the official SDK's ``MCPServer`` over
streamable HTTP, run as its own process so a test can kill and restart it — behind the proxy
(served by uvicorn), a bundle published by the control plane and verified like a gateway does,
and the official SDK client as the agents. Each agent session has its own upstream session; an
upstream restart is survived without sending a non-idempotent call twice; notifications and
sampling are relayed; resources are forwarded only once the registration enables them.
"""

from __future__ import annotations

import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CreateMessageResult,
    ElicitResult,
    ListRootsResult,
    Root,
    TextContent,
    ToolListChangedNotification,
)
from mcp_types.version import LATEST_HANDSHAKE_VERSION as VERSION

from bundles import selectors
from bundles.publish import bundle_publish
from gateway.identity import StaticIdentities
from gateway.proxy import build_app
from gateway.verify import VerifiedBundle, verify_bundle
from governance.audit.services import Actor
from registry import services as registry
from registry.discovery import discover_tools
from tests.factories import AgentFactory, GrantFactory, ScopeFactory, ServerFactory, ToolFactory
from tests.gateway.test_gateway_proxy import Served

REPO = Path(__file__).resolve().parents[2]
SESSION_SERVER = REPO / "tests" / "mcp_servers" / "session_server.py"
SYSTEM = Actor.system("test")
IDP = "https://idp.example"
ANN, BOB = "ann-token", "bob-token"
SERVER = "sessions"
WAIT = 30.0


class UpstreamProcess:
    """session_server.py as a child process: killed and started again on the same port."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.port = 0
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> None:
        process = subprocess.Popen(
            [sys.executable, str(SESSION_SERVER), "--state-dir", str(self.state_dir),
             "--port", str(self.port)], stdout=subprocess.PIPE, text=True, cwd=REPO)
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 0.2)
            if ready:
                line = process.stdout.readline()
                if line.startswith("PORT "):
                    self.port, self.process = int(line.split()[1]), process
                    break
            if process.poll() is not None:
                break
        else:
            process.kill()
        if self.process is not process:
            pytest.fail("the session server did not start")
        # Listening: an MCP POST without a session answers (400, not a refused connection).
        while time.monotonic() < deadline:
            try:
                httpx2.get(self.url, timeout=2)
                return
            except httpx2.HTTPError:
                time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def log(self, name: str) -> list[str]:
        path = self.state_dir / f"{name}.log"
        return path.read_text().split() if path.exists() else []


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[UpstreamProcess]:
    process = UpstreamProcess(tmp_path)
    process.start()
    yield process
    process.kill()


def publish(tenant) -> VerifiedBundle:
    bundle = bundle_publish(tenant=tenant, trigger="test")
    return verify_bundle(bytes(bundle.blob.content), jwks=selectors.jwks(tenant.pk),
                         tenant=tenant.slug)


@pytest.fixture
def world(tenant_a, upstream) -> dict[str, Any]:
    """Server ``sessions`` with every tool approved; agents ann and bob granted all of them."""
    server = ServerFactory(tenant=tenant_a, name=SERVER, url=upstream.url)
    found = discover_tools(transport="streamable-http", url=upstream.url, timeout=15)
    tools = ToolFactory.listed(server, found.tools, approved=[d.name for d in found.tools])
    scope = ScopeFactory(tenant=tenant_a, name="sessions:all", tools=list(tools.values()))
    for name in ("ann", "bob"):
        agent = AgentFactory(tenant=tenant_a, name=name, principals=[(IDP, name)])
        GrantFactory(tenant=tenant_a, agent=agent, scope=scope)
    return {"tenant": tenant_a, "server": server, "bundle": {"current": publish(tenant_a)}}


@pytest.fixture
def gateway(world, upstream) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    events: list[dict[str, Any]] = []
    app = build_app(bundle_source=lambda: world["bundle"]["current"], server_name=SERVER,
                    upstream_url=upstream.url, decision_sink=events.append,
                    identities=StaticIdentities({ANN: (IDP, "ann"), BOB: (IDP, "bob")}),
                    upstream_timeout=15)
    with Served(app) as served:
        yield served.url, events


@asynccontextmanager
async def agent(url: str, token: str, **options: Any):
    """An MCP session of the official SDK client, as an agent of the gateway."""
    client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                timeout=httpx2.Timeout(60))
    async with client, streamable_http_client(url, http_client=client) as (read, write):
        async with ClientSession(read, write, **options) as session:
            await session.initialize()
            yield session


def text_of(result: Any) -> str:
    return " ".join(getattr(part, "text", "") for part in result.content)


async def until(predicate: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await anyio.sleep(0.05)
    pytest.fail(f"gave up waiting for {what}")


# ------------------------------------------------------------------------------------------


def test_two_agents_have_separate_upstream_sessions(gateway):
    url, events = gateway

    async def scenario():
        async with agent(url, ANN) as ann, agent(url, BOB) as bob:
            first = [text_of(await ann.call_tool("count", {})) for _ in range(2)]
            other = text_of(await bob.call_tool("count", {}))
            third = text_of(await ann.call_tool("count", {}))
            return first, other, third

    assert anyio.run(scenario) == (["1", "2"], "1", "3")
    assert [(e["agent"], e["outcome"]) for e in events] == [
        ("ann", "allow"), ("ann", "allow"), ("bob", "allow"), ("ann", "allow")]


def test_an_upstream_restart_is_survived_and_a_call_in_flight_is_not_sent_twice(gateway,
                                                                                upstream):
    url, events = gateway

    async def scenario():
        async with agent(url, ANN) as session:
            assert text_of(await session.call_tool("count", {})) == "1"
            upstream.kill()
            upstream.start()  # same port: every upstream session is gone
            # The next call re-initialises the session (HTTP 404 → initialize) and succeeds.
            after_restart = text_of(await session.call_tool("count", {}))

            # A non-idempotent call in flight when the upstream dies.
            outcome: dict[str, Any] = {}

            async def call() -> None:
                try:
                    outcome["result"] = await session.call_tool(
                        "append", {"text": "once", "seconds": 60})
                except MCPError as error:
                    outcome["error"] = error

            async with anyio.create_task_group() as group:
                group.start_soon(call)
                await until(lambda: upstream.log("append"), "the call to reach the upstream")
                upstream.kill()
            upstream.start()
            next_call = await session.call_tool("append", {"text": "twice"})
            return after_restart, outcome, next_call

    after_restart, outcome, next_call = anyio.run(scenario)
    assert after_restart == "1"  # a new upstream session: the old counter is gone
    assert "result" not in outcome
    message = str(outcome["error"])
    assert "tools/call append was in flight" in message
    assert "may or may not have run" in message
    assert not next_call.is_error and text_of(next_call) == "appended twice"
    assert upstream.log("append") == ["once", "twice"]  # "once" ran once, never re-sent
    assert [e["outcome"] for e in events] == ["allow"] * 4


def test_an_idempotent_call_in_flight_is_sent_again_on_the_new_session(gateway, upstream):
    url, _ = gateway

    async def scenario():
        async with agent(url, ANN) as session:
            async with anyio.create_task_group() as group:
                result: dict[str, Any] = {}

                async def call() -> None:
                    result["value"] = await session.call_tool(
                        "append_again", {"text": "same", "seconds": 60})

                group.start_soon(call)
                await until(lambda: upstream.log("append_again"), "the call to reach upstream")
                upstream.kill()
                upstream.start()
            return result["value"]

    result = anyio.run(scenario)
    assert not result.is_error and text_of(result) == "appended same"
    assert upstream.log("append_again") == ["same", "same"]  # idempotentHint: sent again


def test_progress_list_changed_and_sampling_are_relayed(gateway):
    url, _ = gateway
    changed = anyio.Event()
    asked: list[str] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, ToolListChangedNotification):
            changed.set()

    async def sampling(context: Any, params: Any) -> CreateMessageResult:
        asked.append(params.messages[0].content.text)
        return CreateMessageResult(role="assistant", model="test-model",
                                   content=TextContent(type="text", text="forty-two"))

    async def scenario():
        progress: list[tuple[float, float | None, str | None]] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append((done, total, message))

        async with agent(url, ANN, message_handler=on_message,
                         sampling_callback=sampling) as session:
            done = await session.call_tool("progress", {}, progress_callback=on_progress)
            answer = await session.call_tool("ask", {"question": "the answer?"})
            grown = await session.call_tool("grow", {})
            with anyio.fail_after(WAIT):
                await changed.wait()
            listed = sorted(t.name for t in (await session.list_tools()).tools)
        return progress, done, answer, grown, listed

    progress, done, answer, grown, listed = anyio.run(scenario)
    assert text_of(done) == "done"
    assert progress == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]
    assert asked == ["the answer?"]
    assert text_of(answer) == "the client said: forty-two"
    assert text_of(grown) == "grown"
    assert "extra" not in listed  # relayed, and the new (unapproved) tool stays hidden
    assert "count" in listed


def test_elicitation_and_roots_requests_are_relayed_and_answered(gateway):
    url, _ = gateway

    async def elicit(context: Any, params: Any) -> ElicitResult:
        assert params.message == "Proceed with the payment?"
        return ElicitResult(action="accept", content={"ok": True})

    async def roots(context: Any) -> ListRootsResult:
        return ListRootsResult(roots=[Root(uri="file:///srv/agent", name="work")])

    async def scenario():
        async with agent(url, ANN, elicitation_callback=elicit,
                         list_roots_callback=roots) as session:
            return (text_of(await session.call_tool("confirm", {})),
                    text_of(await session.call_tool("roots", {})))

    assert anyio.run(scenario) == ("accept: True", "file:///srv/agent")


def test_a_resource_read_is_refused_until_the_registration_enables_resources(world, gateway):
    url, events = gateway

    async def read() -> Any:
        async with agent(url, ANN) as session:
            capabilities = session.server_capabilities
            try:
                return capabilities, await session.read_resource("note://hello")
            except MCPError as error:
                return capabilities, error

    capabilities, refused = anyio.run(read)
    assert capabilities.resources is None  # not advertised to the agent
    assert isinstance(refused, MCPError)
    assert str(refused) == (f"denied by Tollgate: resources of server {SERVER} are not "
                            "forwarded (its registration does not enable them)")
    event = events[-1]
    assert (event["outcome"], event["tool"], event["target"], event["agent"]) == (
        "deny", "resources/read", "note://hello", "ann")

    registry.server_update(tenant=world["tenant"], actor=SYSTEM, server=world["server"],
                           forward=["resources"])
    world["bundle"]["current"] = publish(world["tenant"])
    capabilities, allowed = anyio.run(read)
    assert capabilities.resources is not None
    assert [c.text for c in allowed.contents] == ["hello from the upstream"]
    event = events[-1]
    assert (event["outcome"], event["tool"], event["target"]) == (
        "allow", "resources/read", "note://hello")
    assert event["reason"].startswith(f"resources of server {SERVER} forwarded (grant ")

    async def prompt() -> Any:
        async with agent(url, ANN) as session:
            with pytest.raises(MCPError) as caught:
                await session.get_prompt("greet", {"name": "ann"})
            return str(caught.value)

    assert anyio.run(prompt).startswith(f"denied by Tollgate: prompts of server {SERVER}")
    assert (events[-1]["tool"], events[-1]["outcome"]) == ("prompts/get", "deny")


# ------------------------------------------------------------------------------------------
# A third-party stdio server: one child process per agent session
# ------------------------------------------------------------------------------------------


def children_running(script: Path) -> int:
    """Child processes of this test process running ``script`` (the gateway runs in a thread
    here, so its stdio upstreams are our children)."""
    import os

    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == os.getpid() and str(script).encode() in cmdline:
            count += 1
    return count


def test_a_stdio_upstream_runs_one_child_per_agent_session(tenant_a, everything_js):
    """npm @modelcontextprotocol/server-everything over stdio, through a real bundle."""
    command = ["node", str(everything_js), "stdio"]
    server = registry.server_create(tenant=tenant_a, actor=SYSTEM, name="everything",
                                    transport="stdio", command=command, forward=["resources"])
    registry.server_transition(tenant=tenant_a, actor=SYSTEM, server=server, status="active")
    found = discover_tools(transport="stdio", command=command, timeout=30)
    names = ("echo", "trigger-long-running-operation")
    tools = ToolFactory.listed(server, found.tools, approved=list(names))
    scope = ScopeFactory(tenant=tenant_a, name="everything:some",
                         tools=[tools[name] for name in names])
    for name in ("ann", "bob"):
        agent_ = AgentFactory(tenant=tenant_a, name=name, principals=[(IDP, name)])
        GrantFactory(tenant=tenant_a, agent=agent_, scope=scope)
    bundle = publish(tenant_a)
    events: list[dict[str, Any]] = []
    app = build_app(bundle_source=lambda: bundle, server_name="everything",
                    upstream_cmd=command, decision_sink=events.append,
                    identities=StaticIdentities({ANN: (IDP, "ann"), BOB: (IDP, "bob")}))

    async def scenario(url: str):
        progress: list[float] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append(done)

        async with agent(url, ANN) as ann, agent(url, BOB) as bob:
            # The gateway's own session (discovery) plus one child per agent session.
            during = await until(lambda: children_running(everything_js) == 3 and 3,
                                 "three children")
            echoed = await ann.call_tool("echo", {"message": "hi"})
            long = await ann.call_tool("trigger-long-running-operation",
                                       {"duration": 1, "steps": 3},
                                       progress_callback=on_progress)
            other = await bob.call_tool("echo", {"message": "bob here"})
            resources = await bob.list_resources()
            with pytest.raises(MCPError) as refused:
                await bob.list_prompts()
        after = await until(lambda: children_running(everything_js) == 1 and 1,
                            "the agent sessions' children to be reaped")
        return during, echoed, long, progress, other, resources, refused.value, after

    with Served(app) as served:
        during, echoed, long, progress, other, resources, refused, after = anyio.run(
            scenario, served.url)
    assert (during, after) == (3, 1)
    assert "hi" in text_of(echoed)
    assert not long.is_error and progress == [1, 2, 3]
    assert "bob here" in text_of(other)
    assert resources.resources  # enabled on the registration: forwarded
    assert str(refused).startswith("denied by Tollgate: prompts of server everything")
    assert [(e["tool"], e["outcome"]) for e in events] == [
        ("echo", "allow"), ("trigger-long-running-operation", "allow"),
        ("echo", "allow"), ("resources/list", "allow"),
        ("prompts/list", "deny")]


def test_a_session_belongs_to_its_principal_and_sessions_are_bounded(world, upstream):
    app = build_app(bundle_source=lambda: world["bundle"]["current"], server_name=SERVER,
                    upstream_url=upstream.url, max_sessions=1,
                    identities=StaticIdentities({ANN: (IDP, "ann"), BOB: (IDP, "bob")}))
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": VERSION, "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}}
    accept = {"Accept": "application/json, text/event-stream"}
    with Served(app) as served:
        opened = httpx2.post(served.url, json=initialize,
                             headers=accept | {"Authorization": f"Bearer {ANN}"})
        assert opened.status_code == 200
        session = opened.headers["mcp-session-id"]
        ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
        stolen = httpx2.post(served.url, json=ping, headers=accept | {
            "Authorization": f"Bearer {BOB}", "mcp-session-id": session,
            "mcp-protocol-version": VERSION})
        assert stolen.status_code == 404
        assert stolen.json()["error"]["message"] == "Session not found"
        full = httpx2.post(served.url, json=initialize,
                           headers=accept | {"Authorization": f"Bearer {BOB}"})
        assert full.status_code == 503
        assert full.json()["error"]["message"] == "Too many open sessions"
        ended = httpx2.delete(served.url, headers={"Authorization": f"Bearer {ANN}",
                                                   "mcp-session-id": session,
                                                   "mcp-protocol-version": VERSION})
        assert ended.status_code == 200
        again = httpx2.post(served.url, json=initialize,
                            headers=accept | {"Authorization": f"Bearer {BOB}"})
        assert again.status_code == 200
