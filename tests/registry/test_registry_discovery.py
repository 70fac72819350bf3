"""Live tool discovery (registry/discovery.py) against real MCP servers and against impostors.

The MCP servers are real: tests/mcp_servers/mutable_server.py (the official Python SDK over
streamable HTTP, tools read from a JSON file on every tools/list) and the reference
``@modelcontextprotocol/server-everything`` (TypeScript SDK) over stdio and SSE, installed
with ``npm ci --prefix tests/mcp``. No database is used.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from registry.discovery import DiscoveryResult, discover_tools
from registry.discovery_errors import DiscoveryError
from registry.tool_definition import (
    CANONICAL_KEYS,
    ToolDefinition,
    canonical_definition,
    definition_sha256,
)
from tests.mcp_servers.not_mcp import CannedHttpServer, HandRolledMcpServer, SilentServer
from tests.mcp_support import STARTUP_SECONDS, MutableServer, tool


def _free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen[bytes], deadline: float) -> None:
    """Wait until something accepts connections on 127.0.0.1:`port`."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server-everything exited early with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"server-everything did not listen on port {port}")


def hashes(result: DiscoveryResult) -> dict[str, str]:
    """Tool name → definition hash."""
    return {t.name: t.definition_sha256 for t in result.tools}


# ------------------------------------------------------------------------------------------
# The definition hash (the contract with the gateway)
# ------------------------------------------------------------------------------------------

REFUND_WIRE = {
    "name": "refund",
    "title": "Refund",
    "description": "Refund an order — partially or fully",
    "inputSchema": {
        "type": "object",
        "required": ["order_id"],
        "properties": {
            "order_id": {"type": "string"},
            "amount": {"type": "number", "minimum": 0},
        },
    },
    "annotations": {"destructiveHint": True, "readOnlyHint": False, "title": None},
    "icons": [{"src": "https://example.com/refund.png"}],
    "_meta": {"vendor/build": 7},
}
REFUND_CANONICAL = (
    '{"annotations":{"destructiveHint":true,"readOnlyHint":false},'
    '"description":"Refund an order — partially or fully",'
    '"inputSchema":{"properties":{"amount":{"minimum":0,"type":"number"},'
    '"order_id":{"type":"string"}},"required":["order_id"],"type":"object"},'
    '"name":"refund","outputSchema":null,"title":"Refund"}'
).encode()
REFUND_SHA256 = "a5c08f451cf39634edd4089f93513ebbad8c01bf84d2098e26b551f0f4e20147"


def test_canonical_definition_is_pinned() -> None:
    """Golden bytes and hash: changing either breaks every pinned hash in every bundle."""
    assert canonical_definition(REFUND_WIRE) == REFUND_CANONICAL
    assert definition_sha256(REFUND_WIRE) == REFUND_SHA256
    assert hashlib.sha256(REFUND_CANONICAL).hexdigest() == REFUND_SHA256
    parsed = ToolDefinition.from_wire(REFUND_WIRE)
    assert parsed == ToolDefinition(
        name="refund",
        title="Refund",
        description="Refund an order — partially or fully",
        input_schema=REFUND_WIRE["inputSchema"],
        output_schema=None,
        annotations={"destructiveHint": True, "readOnlyHint": False},
    )
    assert parsed.definition_sha256 == definition_sha256(parsed) == REFUND_SHA256
    assert tuple(parsed.to_wire()) == CANONICAL_KEYS
    # UTF-8, not \u escapes.
    assert "—".encode() in canonical_definition(parsed)


def test_hash_normalisation_rules() -> None:
    """Absent and null are the same; key order, icons and _meta do not count; the rest does."""
    minimal = {"name": "ping", "inputSchema": {"type": "object"}}
    explicit_nulls = {
        "name": "ping",
        "title": None,
        "description": None,
        "inputSchema": {"type": "object"},
        "outputSchema": None,
        "annotations": None,
    }
    assert definition_sha256(minimal) == definition_sha256(explicit_nulls)
    assert definition_sha256(minimal) == definition_sha256(
        {**minimal, "title": "", "description": ""}
    )
    assert canonical_definition(minimal) == (
        b'{"annotations":{},"description":"","inputSchema":{"type":"object"},'
        b'"name":"ping","outputSchema":null,"title":""}'
    )
    assert definition_sha256(minimal) == definition_sha256({**minimal, "annotations": {}})
    assert definition_sha256(minimal) == definition_sha256(
        {**minimal, "annotations": {"readOnlyHint": None}}
    )
    reordered = dict(reversed(list(REFUND_WIRE.items())))
    reordered["inputSchema"] = dict(reversed(list(REFUND_WIRE["inputSchema"].items())))
    assert definition_sha256(reordered) == REFUND_SHA256

    def changed(path: tuple[str, ...], value: Any) -> str:
        wire = copy.deepcopy(REFUND_WIRE)
        target = wire
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return definition_sha256(wire)

    different = {
        changed(("description",), "Refund an order"),
        changed(("description",), "Refund an order — partially or fully "),
        changed(("title",), "Refund!"),
        changed(("inputSchema", "properties", "amount", "minimum"), 1),
        changed(("inputSchema", "required"), ["order_id", "amount"]),
        changed(("outputSchema",), {"type": "object"}),
        changed(("annotations", "destructiveHint"), False),
        changed(("annotations", "openWorldHint"), True),
        changed(("annotations", "x-vendor-risk"), "high"),  # unknown keys count, as sent
    }
    assert REFUND_SHA256 not in different
    assert len(different) == 9
    assert changed(("icons",), []) == REFUND_SHA256
    assert changed(("_meta",), {"vendor/build": 8}) == REFUND_SHA256
    assert changed(("execution",), {"taskSupport": "optional"}) == REFUND_SHA256


@pytest.mark.parametrize(
    "wire",
    [
        {"inputSchema": {"type": "object"}},
        {"name": "", "inputSchema": {"type": "object"}},
        {"name": "x"},
        {"name": "x", "inputSchema": "object"},
        {"name": "x", "inputSchema": {}, "description": 3},
        {"name": "x", "inputSchema": {}, "annotations": ["readOnlyHint"]},
        {"name": "x", "inputSchema": {"maximum": float("nan")}},
        ["not", "an", "object"],
    ],
)
def test_from_wire_rejects_malformed_tools(wire: Any) -> None:
    """What cannot be hashed unambiguously is an error, not a guess."""
    with pytest.raises(ValueError):
        definition_sha256(wire)


# ------------------------------------------------------------------------------------------
# A real MCP server (official Python SDK, streamable HTTP)
# ------------------------------------------------------------------------------------------


def test_discovers_every_tool_with_its_definition(mcp_server: MutableServer) -> None:
    """Name, title, description, schemas and annotations arrive exactly as the server sent them."""
    wire = [
        tool("lookup_employee"),
        tool(
            "run_payroll",
            title=None,
            description="Runs payroll for a period. Irreversible.",
            outputSchema={"type": "object", "properties": {"batch": {"type": "string"}}},
            annotations={
                "title": "Run payroll",
                "readOnlyHint": False,
                "destructiveHint": True,
                "idempotentHint": False,
                "openWorldHint": True,
            },
        ),
        {"name": "bare", "inputSchema": {"type": "object"}},
        tool("ünïcode", description="Zahlt Gehälter aus — 給与"),
    ]
    mcp_server.serve(wire)

    result = mcp_server.discover()

    assert result.server_name == "tollgate-mutable-test-server"
    assert result.server_version == "1.2.3"
    assert result.protocol_version == "2025-11-25"
    assert result.pages == 1
    assert [t.name for t in result.tools] == ["lookup_employee", "run_payroll", "bare", "ünïcode"]
    payroll = result.tools[1]
    assert payroll.title == ""
    assert payroll.description == "Runs payroll for a period. Irreversible."
    assert payroll.input_schema == wire[1]["inputSchema"]
    assert payroll.output_schema == {"type": "object", "properties": {"batch": {"type": "string"}}}
    assert payroll.annotations == wire[1]["annotations"]
    bare = result.tools[2]
    assert (bare.title, bare.description, bare.output_schema, bare.annotations) == (
        "",
        "",
        None,
        {},
    )
    # What the gateway computes from the raw wire JSON is what discovery computed.
    for sent, got in zip(wire, result.tools, strict=True):
        assert got == ToolDefinition.from_wire(sent)
        assert got.definition_sha256 == definition_sha256(sent)


def test_hash_is_stable_and_moves_only_with_the_definition(mcp_server: MutableServer) -> None:
    """Drift: description, inputSchema and annotations changes move that tool's hash only."""
    base = [tool("alpha"), tool("beta"), tool("gamma")]
    mcp_server.serve(base)
    first = hashes(mcp_server.discover())
    assert hashes(mcp_server.discover()) == first
    assert len(set(first.values())) == 3

    # Same definitions, different JSON key order and ignored keys: nothing moves.
    shuffled = [dict(reversed(list(t.items()))) for t in base]
    shuffled[0]["icons"] = [{"src": "https://example.com/a.png"}]
    shuffled[1]["_meta"] = {"build": 2}
    mcp_server.serve(shuffled)
    assert hashes(mcp_server.discover()) == first

    def drifted(**overrides: Any) -> dict[str, str]:
        mcp_server.serve([tool("alpha"), tool("beta", **overrides), tool("gamma")])
        now = hashes(mcp_server.discover())
        assert now["alpha"] == first["alpha"]
        assert now["gamma"] == first["gamma"]
        assert now["beta"] != first["beta"]
        return now

    drifted(description="Does beta. Also emails the result to an external address.")
    drifted(
        inputSchema={
            "type": "object",
            "properties": {"id": {"type": "string", "maxLength": 64}, "cc": {"type": "string"}},
            "required": ["id"],
        }
    )
    drifted(annotations={"readOnlyHint": False, "openWorldHint": False})
    drifted(annotations={"readOnlyHint": True, "openWorldHint": False, "destructiveHint": True})

    # Back to the original definition: back to the original hash.
    mcp_server.serve(base)
    assert hashes(mcp_server.discover()) == first


def test_follows_next_cursor_across_pages(mcp_server: MutableServer) -> None:
    """Seven tools, three per page: three tools/list calls, every tool once, in order."""
    names = [f"tool_{i}" for i in range(7)]
    mcp_server.serve([tool(n) for n in names], page_size=3)

    result = mcp_server.discover()

    assert result.pages == 3
    assert [t.name for t in result.tools] == names


def test_one_tool_per_page(mcp_server: MutableServer) -> None:
    """Many small pages work too."""
    mcp_server.serve([tool(f"t{i}") for i in range(25)], page_size=1)

    result = mcp_server.discover()

    assert result.pages == 25
    assert len(result.tools) == 25


def test_too_many_tools(mcp_server: MutableServer) -> None:
    """10,000 tools against a limit of 5,000: a typed error, without fetching them all."""
    mcp_server.serve(
        [{"name": f"tool_{i:05d}", "inputSchema": {"type": "object"}} for i in range(10_000)],
        page_size=1000,
    )

    started = time.monotonic()
    with pytest.raises(DiscoveryError) as caught:
        mcp_server.discover(max_tools=5000)
    elapsed = time.monotonic() - started

    assert caught.value.code == "too_many_tools"
    assert "5000" in caught.value.message and "6000 in 6 pages" in caught.value.message
    assert elapsed < 10


def test_too_many_tools_on_one_page(mcp_server: MutableServer) -> None:
    """The limit holds when a server sends everything at once, and says how many it saw."""
    mcp_server.serve([{"name": f"t{i}", "inputSchema": {"type": "object"}} for i in range(10_000)])

    with pytest.raises(DiscoveryError) as caught:
        mcp_server.discover(max_tools=5000)

    assert caught.value.code == "too_many_tools"
    assert "10000" in caught.value.message


def test_exactly_max_tools_is_fine(mcp_server: MutableServer) -> None:
    """The limit is inclusive."""
    mcp_server.serve([tool(f"t{i}") for i in range(10)], page_size=4)

    assert len(mcp_server.discover(max_tools=10).tools) == 10


def test_repeated_cursor_is_a_pagination_loop(mcp_server: MutableServer) -> None:
    """A server that answers every page with the same nextCursor is caught at once."""
    mcp_server.serve([tool("a"), tool("b")], page_size=1, cursor="loop")

    with pytest.raises(DiscoveryError) as caught:
        mcp_server.discover()

    assert caught.value.code == "pagination_loop"
    assert "same tools/list cursor" in caught.value.message


def test_too_many_pages_is_a_pagination_loop(mcp_server: MutableServer) -> None:
    """Fresh cursors for ever are stopped by max_pages."""
    mcp_server.serve([tool(f"t{i}") for i in range(10)], page_size=1)

    with pytest.raises(DiscoveryError) as caught:
        mcp_server.discover(max_pages=3)

    assert caught.value.code == "pagination_loop"
    assert "3 pages" in caught.value.message


def test_duplicate_tool_names(mcp_server: MutableServer) -> None:
    """Two tools with one name (here on different pages) cannot both be governed."""
    mcp_server.serve(
        [tool("refund"), tool("audit"), tool("refund", description="Evil twin.")], page_size=2
    )

    with pytest.raises(DiscoveryError) as caught:
        mcp_server.discover()

    assert caught.value.code == "duplicate_tool"
    assert "'refund'" in caught.value.message


def test_server_that_cannot_produce_a_valid_listing(mcp_server: MutableServer) -> None:
    """The SDK server refuses to send a tool without inputSchema: a protocol error."""
    mcp_server.serve([tool("fine"), {"name": "broken", "description": "no schema"}])

    with pytest.raises(DiscoveryError) as caught:
        mcp_server.discover()

    assert caught.value.code == "protocol"
    assert "tools/list" in caught.value.message


@pytest.mark.parametrize(
    ("tools_list_result", "expected"),
    [
        ({"tools": [{"name": "broken", "description": "no schema"}]}, "inputSchema"),
        ({"tools": [{"name": "x", "inputSchema": {"type": "object"}, "title": 7}]}, "title"),
        ({"tools": "all of them"}, "tools"),
        ({"tools": [], "nextCursor": 2}, "nextCursor"),
        ({"tools": [{"name": "", "inputSchema": {"type": "object"}}]}, "name"),
    ],
)
def test_malformed_tools_list_result_is_a_protocol_error(
    tools_list_result: dict[str, Any], expected: str
) -> None:
    """The client validates what it is sent; a server that does not validate is caught."""
    with HandRolledMcpServer(tools_list_result) as server:
        with pytest.raises(DiscoveryError) as caught:
            discover_tools(transport="streamable-http", url=server.url, timeout=10)

    assert caught.value.code == "protocol"
    assert expected in caught.value.message


def test_hand_rolled_server_works_when_well_formed() -> None:
    """The control for the test above: the same server with a valid result is discovered."""
    wire = tool("only", annotations={"readOnlyHint": True, "x-vendor-risk": "low"})
    with HandRolledMcpServer({"tools": [wire]}) as server:
        result = discover_tools(transport="streamable-http", url=server.url, timeout=10)

    assert result.server_name == "hand-rolled"
    assert result.tools == [ToolDefinition.from_wire(wire)]
    assert result.tools[0].annotations["x-vendor-risk"] == "low"


def test_works_when_called_from_a_running_event_loop(mcp_server: MutableServer) -> None:
    """Async callers (an async view) get the same result instead of 'loop already running'."""
    mcp_server.serve([tool("a")])

    async def from_async_code() -> DiscoveryResult:
        return mcp_server.discover()

    assert [t.name for t in asyncio.run(from_async_code()).tools] == ["a"]


# ------------------------------------------------------------------------------------------
# Servers that are down, hung or not MCP at all
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
def test_connection_refused_is_unreachable(transport: str) -> None:
    """Nothing listens on the port."""
    url = f"http://127.0.0.1:{_free_port()}/mcp"

    started = time.monotonic()
    with pytest.raises(DiscoveryError) as caught:
        discover_tools(transport=transport, url=url, timeout=10)

    assert caught.value.code == "unreachable"
    assert "connection refused" in caught.value.message
    assert url in caught.value.message
    assert time.monotonic() - started < 5


def test_unknown_host_is_unreachable() -> None:
    """.invalid never resolves (RFC 6761)."""
    with pytest.raises(DiscoveryError) as caught:
        discover_tools(transport="streamable-http", url="http://tollgate.invalid/mcp", timeout=10)

    assert caught.value.code == "unreachable"
    assert "host name could not be resolved" in caught.value.message


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
def test_server_that_never_answers_times_out(transport: str) -> None:
    """Accepts the connection, then silence: the overall deadline ends it."""
    with SilentServer() as silent:
        started = time.monotonic()
        with pytest.raises(DiscoveryError) as caught:
            discover_tools(transport=transport, url=silent.url, timeout=1.5)
        elapsed = time.monotonic() - started

    assert caught.value.code == "timeout"
    assert "within 1.5 s" in caught.value.message
    assert 1.4 < elapsed < 2.5
    assert silent.connections, "the client never connected"


@pytest.mark.parametrize(
    ("status", "content_type", "body", "expected"),
    [
        (200, "text/html", b"<!doctype html><h1>Welcome to nginx!</h1>", "text/html"),
        (200, "application/json", b'{"hello": "world"}', "initialize"),
        (200, "application/json", b"this is not json", "initialize"),
        (404, "text/html", b"<h1>Not Found</h1>", "HTTP 404 Not Found. Check the URL"),
        (500, "text/plain", b"Internal Server Error", "HTTP 500 Internal Server Error"),
    ],
)
def test_http_server_that_is_not_mcp_is_a_protocol_error(
    status: int, content_type: str, body: bytes, expected: str
) -> None:
    """A web page, arbitrary JSON, an error page: 'protocol', never a hang."""
    with CannedHttpServer(status=status, content_type=content_type, body=body) as web:
        started = time.monotonic()
        with pytest.raises(DiscoveryError) as caught:
            discover_tools(transport="streamable-http", url=web.url, timeout=10)

    assert caught.value.code == "protocol"
    assert expected in caught.value.message
    assert web.url in caught.value.message
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, b"<h1>hello</h1>", "did not open an MCP event stream"),
        (404, b"<h1>Not Found</h1>", "HTTP 404 Not Found"),
    ],
)
def test_sse_endpoint_that_is_not_mcp_is_a_protocol_error(
    status: int, body: bytes, expected: str
) -> None:
    """The SSE transport expects an event stream announcing its endpoint."""
    with CannedHttpServer(status=status, content_type="text/html", body=body) as web:
        started = time.monotonic()
        with pytest.raises(DiscoveryError) as caught:
            discover_tools(transport="sse", url=web.url, timeout=10)

    assert caught.value.code == "protocol", caught.value.message
    assert expected in caught.value.message
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
def test_headers_are_sent(transport: str) -> None:
    """headers= (e.g. a bearer token for the server) go out with the MCP requests."""
    with CannedHttpServer(status=401, content_type="text/plain", body=b"no") as web:
        with pytest.raises(DiscoveryError) as caught:
            discover_tools(
                transport=transport,
                url=web.url,
                headers={"Authorization": "Bearer s3cret"},
                timeout=5,
            )

    assert web.seen_headers
    assert web.seen_headers[0]["authorization"] == "Bearer s3cret"
    assert caught.value.code == "protocol"
    assert "HTTP 401 Unauthorized" in caught.value.message
    assert "Check the credentials" in caught.value.message


@pytest.mark.parametrize(
    "kwargs",
    [
        {"transport": "websocket", "url": "ws://x"},
        {"transport": "streamable-http"},
        {"transport": "sse", "url": "file:///etc/passwd"},
        {"transport": "stdio"},
        {"transport": "stdio", "command": "node server.js"},
        {"transport": "stdio", "command": ["node"], "timeout": 0},
        {"transport": "stdio", "command": ["node"], "max_tools": 0},
    ],
)
def test_bad_arguments_are_value_errors(kwargs: dict[str, Any]) -> None:
    """Programming errors are not discovery errors."""
    with pytest.raises(ValueError):
        discover_tools(**kwargs)


# ------------------------------------------------------------------------------------------
# Third-party server: @modelcontextprotocol/server-everything (TypeScript SDK)
# ------------------------------------------------------------------------------------------


def _assert_everything_tools(result: DiscoveryResult) -> None:
    """The tools server-everything 2026.8.31 always registers, with their schemas."""
    assert result.server_name == "mcp-servers/everything"
    by_name = {t.name: t for t in result.tools}
    assert {
        "echo",
        "get-sum",
        "get-env",
        "get-tiny-image",
        "trigger-long-running-operation",
    } <= set(by_name)
    echo = by_name["echo"]
    assert echo.title == "Echo Tool"
    assert echo.description == "Echoes back the input string"
    assert echo.input_schema["type"] == "object"
    assert echo.input_schema["properties"]["message"]["type"] == "string"
    assert echo.input_schema["required"] == ["message"]
    assert echo.annotations == {
        "readOnlyHint": True,
        "destructiveHint": False,
        "idempotentHint": True,
        "openWorldHint": False,
    }
    get_sum = by_name["get-sum"]
    assert get_sum.input_schema["properties"]["a"]["type"] == "number"
    assert get_sum.input_schema["properties"]["b"]["type"] == "number"
    assert sorted(get_sum.input_schema["required"]) == ["a", "b"]


def test_everything_server_over_stdio(everything_js: Path) -> None:
    """The reference server's tools, twice (two processes), with identical hashes."""
    command = ["node", str(everything_js), "stdio"]

    first = discover_tools(transport="stdio", command=command, timeout=20)
    second = discover_tools(transport="stdio", command=command, timeout=20)

    _assert_everything_tools(first)
    assert hashes(first) == hashes(second)


def test_everything_server_over_sse(everything_js: Path) -> None:
    """The deprecated HTTP+SSE transport, against the same reference server."""
    port = _free_port()
    process = subprocess.Popen(
        ["node", str(everything_js), "sse"],
        env={**os.environ, "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, process, time.monotonic() + STARTUP_SECONDS)
        result = discover_tools(transport="sse", url=f"http://127.0.0.1:{port}/sse", timeout=20)
    finally:
        process.terminate()
        process.wait(timeout=10)

    _assert_everything_tools(result)


def test_stdio_command_that_exits_at_once() -> None:
    """Exits before the handshake: protocol error, with what it said on stderr."""
    command = [
        sys.executable,
        "-c",
        "import os, sys; sys.stderr.write('missing ' + os.environ['WHAT'] + '\\n'); sys.exit(3)",
    ]

    started = time.monotonic()
    with pytest.raises(DiscoveryError) as caught:
        discover_tools(transport="stdio", command=command, env={"WHAT": "API_KEY"}, timeout=10)

    assert caught.value.code == "protocol"
    assert "exited" in caught.value.message
    assert "missing API_KEY" in caught.value.message  # env= reached the child; stderr is shown
    assert time.monotonic() - started < 5


def test_stdio_command_that_prints_garbage() -> None:
    """Output that is not JSON-RPC fails fast, even if the process stays alive."""
    command = [
        sys.executable,
        "-c",
        "import sys, time; print('Welcome to my server!', flush=True); time.sleep(60)",
    ]

    started = time.monotonic()
    with pytest.raises(DiscoveryError) as caught:
        discover_tools(transport="stdio", command=command, timeout=20)

    assert caught.value.code == "protocol"
    assert "Welcome to my server!" in caught.value.message
    assert time.monotonic() - started < 6  # includes the SDK's 2 s grace before SIGTERM


def test_stdio_command_not_found() -> None:
    """A command that cannot be started is unreachable."""
    with pytest.raises(DiscoveryError) as caught:
        discover_tools(transport="stdio", command=["/nonexistent/mcp-server"], timeout=5)

    assert caught.value.code == "unreachable"
    assert "/nonexistent/mcp-server" in caught.value.message


def test_hung_stdio_server_times_out_and_is_killed(tmp_path: Path) -> None:
    """A child that never answers (and ignores stdin closing) is killed, not leaked."""
    pid_file = tmp_path / "pid"
    command = [
        sys.executable,
        "-c",
        "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)",
        str(pid_file),
    ]

    started = time.monotonic()
    with pytest.raises(DiscoveryError) as caught:
        # Long enough for the child to start and write its pid on a loaded machine.
        discover_tools(transport="stdio", command=command, timeout=5)
    elapsed = time.monotonic() - started

    assert caught.value.code == "timeout"
    # The deadline, then close stdin, 2 s grace, SIGTERM: far from the child's 120 s sleep,
    # with room for a loaded machine.
    assert elapsed < 5 + 60
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
