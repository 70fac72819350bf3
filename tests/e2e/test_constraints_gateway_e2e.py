"""``within`` and ``url`` enforced end to end by the reference gateway (gateway/proxy.py).

A real upstream MCP server (the official SDK's low-level server over streamable HTTP, in a
thread) offering ``read_text_file(path)`` and ``fetch(url)``, discovered live; a grant with
``within`` and ``url`` constraints, published and signed by the control plane and verified with
the reference verifier; the proxy served by uvicorn; the official SDK client as the agent. The
escapes of issue 19 §1 never reach the upstream.

This upstream records every call it receives, so the test can assert that nothing refused
reached it, and it has a ``fetch`` tool for ``url``. ``within`` against the third-party
``@modelcontextprotocol/server-filesystem`` (which would serve the escapes), behind the gateway
as its own process, is tests/e2e/test_filesystem_server_e2e.py.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from mcp.client.session import ClientSession
from mcp.server.lowlevel import Server

from bundles import selectors
from bundles.publish import bundle_publish
from gateway.identity import StaticIdentities
from gateway.proxy import build_app
from gateway.verify import verify_bundle
from governance.audit.services import Actor
from registry import services as registry
from registry.discovery import discover_tools
from registry.models import Tool
from tests.mcp_support import as_agent

SYSTEM = Actor.system("test")
IDP = "https://idp.example"
TOKEN = "files-bot-token"
TOOLS = [
    {"name": "read_text_file", "description": "Reads a file.",
     "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}},
                     "required": ["path"], "additionalProperties": False}},
    {"name": "fetch", "description": "Fetches a URL.",
     "inputSchema": {"type": "object", "properties": {"url": {"type": "string"}},
                     "required": ["url"], "additionalProperties": False}},
]
CONSTRAINTS = {
    "read_text_file": {"path": {"within": ["/srv/files/public"]}},
    "fetch": {"url": {"url": {"schemes": ["https"], "hosts": ["good.example"]}}},
}


class Served:
    """An ASGI app served by uvicorn on a free loopback port in a thread."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/mcp"
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


@pytest.fixture
def upstream() -> Iterator[tuple[list, str]]:
    calls: list[tuple[str, dict]] = []

    async def list_tools(ctx: Any, params: Any) -> dict[str, Any]:
        return {"tools": TOOLS}

    async def call_tool(ctx: Any, params: Any) -> dict[str, Any]:
        calls.append((params.name, dict(params.arguments or {})))
        text = f"upstream {params.name}: {json.dumps(params.arguments, sort_keys=True)}"
        return {"content": [{"type": "text", "text": text}], "isError": False}

    server = Server("files-upstream", version="1.0", on_list_tools=list_tools,
                    on_call_tool=call_tool)
    with Served(server.streamable_http_app(host="127.0.0.1")) as served:
        yield calls, served.url


@pytest.fixture
def gateway_url(tenant_a, upstream) -> Iterator[str]:
    server = registry.server_create(tenant=tenant_a, actor=SYSTEM, name="files",
                                    transport="streamable-http", url=upstream[1])
    registry.server_transition(tenant=tenant_a, actor=SYSTEM, server=server, status="active")
    found = discover_tools(transport="streamable-http", url=upstream[1], timeout=15)
    registry.tools_record_discovery(tenant=tenant_a, actor=SYSTEM, server=server,
                                    definitions=[(d, d.definition_sha256) for d in found.tools])
    tools = list(Tool.objects.filter(server=server))
    for tool in tools:
        registry.tool_approve(tenant=tenant_a, actor=SYSTEM, tool=tool)
    bot = registry.agent_create(tenant=tenant_a, actor=SYSTEM, name="files-bot", owner=None)
    registry.agent_principal_add(tenant=tenant_a, actor=SYSTEM, agent=bot, issuer=IDP,
                                 subject="files-bot")
    scope = registry.scope_create(tenant=tenant_a, actor=SYSTEM, name="files", tools=tools)
    registry.grant_create(tenant=tenant_a, actor=SYSTEM, agent=bot, scope=scope,
                          argument_constraints=CONSTRAINTS)
    blob = bytes(bundle_publish(tenant=tenant_a, trigger="test").blob.content)
    bundle = verify_bundle(blob, jwks=selectors.jwks(tenant_a.pk), tenant=tenant_a.slug)
    app = build_app(bundle_source=lambda: bundle, server_name="files", upstream_url=upstream[1],
                    decision_sink=lambda event: None, tools_ttl=0,
                    identities=StaticIdentities({TOKEN: (IDP, "files-bot")}))
    with Served(app) as served:
        yield served.url


def _calls(*calls: tuple[str, dict]):
    async def work(session: ClientSession):
        return [await session.call_tool(name, arguments) for name, arguments in calls]
    return work


def _text(result) -> str:
    return " ".join(getattr(part, "text", "") for part in result.content)


ESCAPES = [
    ("read_text_file", {"path": "/srv/files/public/../secret/x"}),
    ("read_text_file", {"path": "/srv/files/public//../secret/x"}),
    ("read_text_file", {"path": "/srv/files/public/./../secret/x"}),
    ("read_text_file", {"path": "/srv/files/public/sub/../../secret/x"}),
    ("read_text_file", {"path": "/srv/files/publicity/x"}),
    ("fetch", {"url": "https://good.example@evil.example/"}),
    ("fetch", {"url": "https://evil.example\\@good.example"}),
    ("fetch", {"url": "https://good.example.evil.example/"}),
]
ALLOWED = [
    ("read_text_file", {"path": "/srv/files/public/readme.txt"}),
    ("read_text_file", {"path": "/srv/files/public/sub/../readme.txt"}),
    ("fetch", {"url": "https://GOOD.example./page"}),
]


def test_the_gateway_refuses_escapes_and_forwards_what_stays_inside(gateway_url, upstream):
    calls, _ = upstream
    results = as_agent(gateway_url, TOKEN, _calls(*ESCAPES, *ALLOWED))
    for (name, arguments), result in zip(ESCAPES, results, strict=False):
        assert result.is_error, (name, arguments)
        assert _text(result).startswith("denied by Tollgate: grant ")
        argument = next(iter(arguments))
        assert f"argument {argument}: must be a" in _text(result)
    for result in results[len(ESCAPES):]:
        assert not result.is_error, _text(result)
    assert calls == ALLOWED  # nothing refused reached the server
