"""The reference gateway's discovery reports (gateway/discovery.py): the upstream's tools, listed
over the gateway's own MCP session with a real stdio MCP server (tests/mcp_servers/
mutable_server.py --stdio, whose tools come from a file and which sends
notifications/tools/list_changed when the file changes), reported to a local HTTP server that
stands in for the control plane and records every request (tests/gateway_support.StubServer)."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.__main__ import ConfigError, _parser, settings_from
from gateway.client import BundleClient
from gateway.discovery import DiscoveryReporter, requested_servers
from gateway.proxy import Upstream
from tests.e2e_support import free_port
from tests.gateway_support import StubServer
from tests.mcp_support import MUTABLE_SERVER, tool

DISCOVERY = ("POST", "/api/v1/gateway/discovery")
STATUS = ("POST", "/api/v1/gateway/status")
TOKEN = "gateway-token-for-discovery"  # noqa: S105 - a test credential
RECORDED = (200, {"Content-Type": "application/json"}, json.dumps({
    "server": "acme-hr", "sync": {"id": 7, "status": "succeeded", "added": 0, "changed": 0,
                                  "removed": 0, "quarantined": 0}}).encode())
WAIT = 60.0  # generous: starting the stdio server imports the MCP SDK


def serve_tools(tools_file: Path, tools: list[dict[str, Any]], **spec: Any) -> None:
    """Replace the stdio server's tool list (it notices and sends tools/list_changed)."""
    temporary = tools_file.with_suffix(".tmp")
    temporary.write_text(json.dumps({"tools": tools, **spec}), encoding="utf-8")
    temporary.replace(tools_file)


def upstream_for(tools_file: Path, **options: Any) -> Upstream:
    return Upstream(url=None, command=[sys.executable, str(MUTABLE_SERVER), "--stdio",
                                       "--tools-file", str(tools_file)], **options)


def reports(stub: StubServer) -> list[dict[str, Any]]:
    return [json.loads(gzip.decompress(body)) for method, path, _, body in stub.requests
            if (method, path) == DISCOVERY]


async def until(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    pytest.fail(f"gave up waiting for {what}")


@asynccontextmanager
async def gateway(stub_url: str, upstream: Upstream, **options: Any
                  ) -> AsyncIterator[DiscoveryReporter]:
    """The upstream session and a reporter attached to it, running until the block ends."""
    options.setdefault("interval", 0)
    options.setdefault("min_gap", 0.1)  # tests need not wait the default 5 s between reports
    reporter = DiscoveryReporter(stub_url, TOKEN, "acme-hr", upstream, **options)
    reporter.attach(upstream)
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(upstream.run()), asyncio.ensure_future(reporter.run(stop))]
    try:
        yield reporter
    finally:
        stop.set()
        tasks[0].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def test_the_reporter_loads_no_django():
    # A gateway vendor runs it without the control plane's code.
    code = ("import sys, gateway.discovery, gateway.__main__, gateway.escalations, gateway.proxy\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('django', 'governance', 'registry', 'approvals')))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2],
                            capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout == "[]\n"


@pytest.fixture
def tools_file(tmp_path: Path) -> Path:
    path = tmp_path / "tools.json"
    serve_tools(path, [tool("lookup"), tool("refund", description="Refunds an order.")])
    return path


def test_the_gateway_reports_its_upstreams_tools_once_the_upstream_is_up(tools_file):
    async def scenario():
        with StubServer({DISCOVERY: [RECORDED]}) as stub:
            async with gateway(stub.url, upstream_for(tools_file)) as reporter:
                await until(lambda: reporter.reports == 1, "the start report")
                return stub.requests, reports(stub)

    requests, sent = asyncio.run(scenario())
    assert sent == [{
        "server": "acme-hr",
        "tools": [tool("lookup"), tool("refund", description="Refunds an order.")],
        "server_info": {"name": "tollgate-mutable-test-server", "version": "1.2.3"},
    }]
    assert [(m, p) for m, p, _, _ in requests] == [DISCOVERY]
    assert requests[0][2]["Authorization"] == f"Bearer {TOKEN}"
    assert (requests[0][2]["Content-Type"], requests[0][2]["Content-Encoding"]) == (
        "application/json", "gzip")


def test_a_list_changed_notification_is_reported(tools_file):
    changed = [tool("lookup"), tool("refund", description="Refunds ALL orders, no questions.")]

    async def scenario():
        with StubServer({DISCOVERY: [RECORDED]}) as stub:
            async with gateway(stub.url, upstream_for(tools_file)) as reporter:
                await until(lambda: reporter.reports == 1, "the start report")
                serve_tools(tools_file, changed)
                await until(lambda: reporter.reports == 2, "the list_changed report")
                return reports(stub)

    assert [r["tools"] for r in asyncio.run(scenario())] == [
        [tool("lookup"), tool("refund", description="Refunds an order.")], changed]


def test_a_list_changed_notification_makes_the_proxy_list_the_tools_again(tools_file):
    changed = [tool("lookup", description="Looks up anything at all.")]

    async def scenario():
        # tools_ttl of an hour: only the notification can make the proxy list the tools again.
        upstream = upstream_for(tools_file, tools_ttl=3600)
        notified = asyncio.Event()
        upstream.on_tools_changed = notified.set
        task = asyncio.ensure_future(upstream.run())
        try:
            before = await upstream.tools()
            serve_tools(tools_file, changed)
            await asyncio.wait_for(notified.wait(), WAIT)
            return before, await upstream.tools()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    before, after = asyncio.run(scenario())
    assert [t["name"] for t in before] == ["lookup", "refund"]
    assert after == changed  # a drifted definition is seen (and refused) at once


def test_the_tools_are_reported_again_every_interval(tools_file, caplog):
    caplog.set_level(logging.INFO, logger="gateway.discovery")

    async def scenario():
        with StubServer({DISCOVERY: [RECORDED]}) as stub:
            async with gateway(stub.url, upstream_for(tools_file), interval=0.2) as reporter:
                await until(lambda: reporter.reports >= 3, "two periodic reports")
                return reports(stub)

    sent = asyncio.run(scenario())
    assert len({json.dumps(r, sort_keys=True) for r in sent}) == 1  # the same tools each time
    assert "discovery report for acme-hr (periodic) recorded: 2 tools, sync 7 (added 0, " \
           "changed 0, removed 0, quarantined 0)" in caplog.messages


def test_reports_are_never_closer_than_the_minimum_gap(tools_file):
    async def scenario():
        upstream = upstream_for(tools_file)
        started: list[float] = []
        list_tools = upstream.list_tools

        async def timed() -> list[Any]:
            started.append(time.monotonic())
            return await list_tools()

        upstream.list_tools = timed  # the real listing, with the time each report began
        with StubServer({DISCOVERY: [RECORDED]}) as stub:
            # Due every 0.05 s and told of a change in between: still 1 s apart.
            async with gateway(stub.url, upstream, interval=0.05, min_gap=1.0) as reporter:
                await until(lambda: reporter.reports >= 2, "the second report")
                reporter.request("tools/list_changed")
                await until(lambda: reporter.reports >= 4, "two more reports")
        return started

    started = asyncio.run(scenario())
    assert len(started) >= 4
    assert min(b - a for a, b in zip(started, started[1:], strict=False)) >= 1.0


def test_a_status_answer_naming_the_server_asks_for_a_report(tools_file, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gateway.discovery")
    other = (204, {"X-Tollgate-Discovery-Requested": "payroll"}, b"")
    ours = (204, {"X-Tollgate-Discovery-Requested": "payroll, acme-hr"}, b"")

    async def scenario():
        with StubServer({DISCOVERY: [RECORDED], STATUS: [other, ours]}) as stub:
            async with gateway(stub.url, upstream_for(tools_file)) as reporter:
                await until(lambda: reporter.reports == 1, "the start report")
                client = BundleClient(stub.url, "acme", TOKEN, tmp_path / "bundle",
                                      status_listener=reporter.status_answer)
                try:
                    assert await client.report_status() is True
                    asked_for_other = reporter.due
                    assert await client.report_status() is True
                    asked_for_ours = reporter.due
                    await until(lambda: reporter.reports == 2, "the requested report")
                finally:
                    await client.aclose()
                return asked_for_other, asked_for_ours

    assert asyncio.run(scenario()) == (False, True)
    assert "discovery report for acme-hr (requested by the control plane) recorded: 2 tools, " \
           "sync 7 (added 0, changed 0, removed 0, quarantined 0)" in caplog.messages
    assert requested_servers({"X-Tollgate-Discovery-Requested": " a ,b,, c"}) == ["a", "b", "c"]
    assert requested_servers({}) == []


def test_a_refused_report_is_logged_once_and_made_again(tools_file, caplog):
    caplog.set_level(logging.INFO, logger="gateway.discovery")
    busy = (503, {"Content-Type": "application/json"},
            b'{"error": {"code": "unavailable", "message": "The registry is busy."}}')
    unbound = (404, {"Content-Type": "application/json"},
               b'{"code": "not_found", "message": "No server acme-hr for this gateway."}')

    async def scenario():
        with StubServer({DISCOVERY: [busy, unbound, RECORDED]}) as stub:
            async with gateway(stub.url, upstream_for(tools_file), retry_base=0.05) as reporter:
                await until(lambda: reporter.reports == 1, "the report, retried")
                return reporter.failures, reports(stub)

    failures, sent = asyncio.run(scenario())
    assert failures == 2
    assert len(sent) == 3 and sent[0] == sent[1] == sent[2]
    warnings = [(r.levelname, r.getMessage()) for r in caplog.records
                if r.name == "gateway.discovery" and r.levelno >= logging.WARNING]
    assert warnings == [
        ("WARNING", "discovery report for acme-hr (upstream initialised) refused (503): "
                    "The registry is busy."),
        ("WARNING", "discovery report for acme-hr (retry) refused (404): "
                    "No server acme-hr for this gateway."),
    ]


def test_an_unreachable_control_plane_never_stops_the_proxy(tools_file, caplog):
    down = f"http://127.0.0.1:{free_port()}"

    async def scenario():
        upstream = upstream_for(tools_file)
        async with gateway(down, upstream, retry_base=0.05) as reporter:
            await until(lambda: reporter.failures >= 2, "two failed attempts")
            return await upstream.tools()

    assert [t["name"] for t in asyncio.run(scenario())] == ["lookup", "refund"]
    warning = next(r.getMessage() for r in caplog.records
                   if r.name == "gateway.discovery" and r.levelno == logging.WARNING)
    assert warning.startswith(f"discovery report for acme-hr (upstream initialised): "
                              f"POST {down}/api/v1/gateway/discovery failed: ConnectError(")


def test_every_page_of_tools_list_is_reported(tmp_path):
    tools_file = tmp_path / "tools.json"
    many = [tool(f"tool_{n}") for n in range(7)]
    serve_tools(tools_file, many, page_size=2)

    async def scenario():
        with StubServer({DISCOVERY: [RECORDED]}) as stub:
            async with gateway(stub.url, upstream_for(tools_file)) as reporter:
                await until(lambda: reporter.reports == 1, "the start report")
                return reports(stub)

    assert [r["tools"] for r in asyncio.run(scenario())] == [many]


def test_a_tool_list_that_never_ends_is_not_reported(tmp_path, caplog):
    tools_file = tmp_path / "tools.json"
    serve_tools(tools_file, [tool("a"), tool("b")], page_size=1, cursor="loop")

    async def scenario():
        with StubServer({DISCOVERY: [RECORDED]}) as stub:
            async with gateway(stub.url, upstream_for(tools_file)) as reporter:
                await until(lambda: reporter.failures == 1, "the refused listing")
                return reports(stub)

    assert asyncio.run(scenario()) == []  # a partial list would report the rest as removed
    assert [r.getMessage() for r in caplog.records
            if r.name == "gateway.discovery" and r.levelno == logging.WARNING] == [
        "discovery report for acme-hr (upstream initialised) not sent: cannot list the "
        "upstream's tools: tools/list still had more pages after 100"]


def test_the_discovery_interval_option(tmp_path):
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps({"t": {"issuer": "i", "subject": "s"}}))
    base = ["run", "--control-plane", "http://cp", "--tenant", "acme", "--server-name", "hr",
            "--token-file", str(token), "--upstream", "http://up/mcp", "--identities", str(ids)]

    def interval(*argv: str) -> float:
        return settings_from(_parser().parse_args([*base, *argv])).discovery_interval

    assert interval() == 300.0
    assert interval("--discovery-interval", "0") == 0.0
    assert interval("--discovery-interval", "45") == 45.0
    for bad in ("5", "-1", "86401"):
        with pytest.raises(ConfigError, match=r"^--discovery-interval: 0 \(off\) or between 10 "
                                              r"and 86400 seconds\.$"):
            interval("--discovery-interval", bad)
    config = tmp_path / "gateway.toml"
    config.write_text('discovery-interval = "soon"\n')
    with pytest.raises(ConfigError, match=r"^--discovery-interval: a number of seconds "
                                          r"\(0: off\)\.$"):
        settings_from(_parser().parse_args([*base, "--config", str(config)]))
    config.write_text("discovery_interval = 600\n")
    assert settings_from(_parser().parse_args([*base, "--config", str(config)])
                         ).discovery_interval == 600.0
