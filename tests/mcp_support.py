"""Real MCP servers for tests: the mutable streamable-HTTP server and npm server-everything.

``mcp_server`` (function fixture) is tests/mcp_servers/mutable_server.py — the official Python
SDK (``MCPServer``) over streamable HTTP — started once per module; it reads its tool list from
a JSON file on every ``tools/list``, so a test changes definitions behind the registry's back
with ``mcp_server.serve([...])``. ``everything_js`` is the reference TypeScript server.
"""

from __future__ import annotations

import json
import os
import select
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from registry.discovery import DiscoveryResult, discover_tools

REPO = Path(__file__).resolve().parent.parent
MUTABLE_SERVER = REPO / "tests" / "mcp_servers" / "mutable_server.py"
EVERYTHING_JS = (
    REPO / "tests/mcp/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
)
STARTUP_SECONDS = 60.0


# ------------------------------------------------------------------------------------------
# Servers
# ------------------------------------------------------------------------------------------


class MutableServer:
    """Handle on the running mutable_server.py: its URL and the file it serves tools from."""

    def __init__(self, url: str, tools_file: Path) -> None:
        """Remember where the server is and which file it reads."""
        self.url = url
        self.tools_file = tools_file

    def serve(
        self, tools: list[dict[str, Any]], *, page_size: int | None = None, cursor: str = ""
    ) -> None:
        """Replace the tool set (read again by the server on the next tools/list)."""
        spec: dict[str, Any] = {"tools": tools, "page_size": page_size, "cursor": cursor}
        tmp = self.tools_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(spec), encoding="utf-8")
        tmp.replace(self.tools_file)

    def discover(self, **kwargs: Any) -> DiscoveryResult:
        """Discover over streamable HTTP with a test-sized timeout."""
        kwargs.setdefault("timeout", 15.0)
        return discover_tools(transport="streamable-http", url=self.url, **kwargs)


def _read_port(process: subprocess.Popen[str], stderr_file: Path) -> int:
    """The port announced on the child's stdout, or fail with its stderr."""
    assert process.stdout is not None
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.1)
        if ready:
            line = process.stdout.readline()
            if line.startswith("PORT "):
                return int(line.split()[1])
            break
        if process.poll() is not None:
            break
    process.kill()
    process.wait(timeout=60)
    pytest.fail(f"the test MCP server did not start: {stderr_file.read_text()}")


@pytest.fixture(scope="module")
def _mutable_server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MutableServer]:
    """Start mutable_server.py once for the module (importing the SDK takes a while)."""
    directory = tmp_path_factory.mktemp("mcp")
    tools_file = directory / "tools.json"
    tools_file.write_text(json.dumps({"tools": []}), encoding="utf-8")
    stderr_file = directory / "stderr.log"
    with stderr_file.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(MUTABLE_SERVER), "--tools-file", str(tools_file)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=REPO,
        )
    try:
        port = _read_port(process, stderr_file)
        yield MutableServer(f"http://127.0.0.1:{port}/mcp", tools_file)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=60)
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture
def mcp_server(_mutable_server_process: MutableServer) -> MutableServer:
    """The mutable server, with no tools until the test serves some."""
    _mutable_server_process.serve([])
    return _mutable_server_process


def _readable_by_anyone(path: Path) -> bool:
    """Whether a user with no relation to the file can read it (every directory above it
    searchable by others)."""
    path = path.resolve()
    return all(p.stat().st_mode & stat.S_IXOTH for p in path.parents) and bool(
        path.stat().st_mode & stat.S_IROTH)


@pytest.fixture(scope="session")
def everything_stdio_wrapper(tmp_path_factory) -> Iterator[Path]:
    """An operator's wrapper that starts server-everything over stdio and takes nothing from its
    arguments — the kind of program STDIO_DISCOVERY_COMMANDS should list (docs/operations.md) —
    where an unprivileged user can run it: a worker running as root starts allowed commands as
    nobody."""
    if not EVERYTHING_JS.is_file():
        pytest.fail(f"{EVERYTHING_JS.relative_to(REPO)} is missing: run `npm ci --prefix "
                    "tests/mcp` (make test does it through scripts/test-deps).")
    directory = Path(tempfile.mkdtemp(prefix="tollgate-everything-"))
    directory.chmod(0o755)
    script = EVERYTHING_JS.resolve()
    if not _readable_by_anyone(script):  # e.g. a checkout under /root: use a readable copy
        modules = (REPO / "tests/mcp/node_modules").resolve()
        shutil.copytree(modules, directory / "node_modules", symlinks=True)
        script = directory / script.relative_to(modules.parent)
    node = os.path.realpath(shutil.which("node") or "/usr/bin/node")
    wrapper = directory / "mcp-everything"
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(node)} {shlex.quote(str(script))} stdio\n")
    wrapper.chmod(0o755)
    yield wrapper
    shutil.rmtree(directory)


@pytest.fixture(scope="module")
def everything_js() -> Path:
    """The reference server-everything entry point; fails (never skips) when not installed."""
    if not EVERYTHING_JS.is_file():
        pytest.fail(
            f"{EVERYTHING_JS.relative_to(REPO)} is missing: run `npm ci --prefix tests/mcp` "
            "(make test does it through scripts/test-deps)."
        )
    return EVERYTHING_JS


def tool(name: str, **overrides: Any) -> dict[str, Any]:
    """The wire JSON of a plausible tool, with `overrides` applied."""
    definition: dict[str, Any] = {
        "name": name,
        "title": f"{name.title()} tool",
        "description": f"Does {name}.",
        "inputSchema": {
            "type": "object",
            "properties": {"id": {"type": "string", "maxLength": 64}},
            "required": ["id"],
        },
        "annotations": {"readOnlyHint": True, "openWorldHint": False},
    }
    definition.update(overrides)
    return definition


def as_agent(url: str, token: str, work: Callable[[ClientSession], Awaitable[Any]]) -> Any:
    """Run ``work`` in an MCP session opened with the official SDK client (streamable HTTP)
    and ``Authorization: Bearer <token>`` — an agent talking to a gateway."""

    async def main() -> Any:
        client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                    timeout=httpx2.Timeout(30))
        async with client, streamable_http_client(url, http_client=client) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await work(session)

    return anyio.run(main)
