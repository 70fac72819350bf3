"""A real MCP server (official SDK, streamable HTTP) whose tools come from a JSON file.

Run: ``python tests/mcp_servers/mutable_server.py --tools-file tools.json [--port 0]``.
It prints ``PORT <n>`` on stdout once it is listening on 127.0.0.1:<n>.
With ``--stdio`` it speaks MCP on stdin/stdout instead (a stdio upstream, as a gateway runs it).

Either way it announces ``tools.listChanged`` and, when the file's content changes, sends
``notifications/tools/list_changed`` to every session that has listed its tools (it looks at
the file every 0.1 s).

The file is re-read on every ``tools/list``, so a test can edit it between two
discoveries (drift). Its shape::

    {"tools": [<MCP Tool objects, wire JSON>],
     "page_size": 2,          # optional: tools per page (default: all on one page)
     "cursor": "paginate"}    # optional: "loop" answers every page with the same nextCursor

Tools are served as written (a raw dict result), so the wire carries exactly the file's JSON.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.stdio import stdio_server
from mcp_types import PaginatedRequestParams


def build_server(tools_file: Path, listeners: set[Any] | None = None) -> Server[Any]:
    """The low-level SDK server whose tools/list reads `tools_file` on every call; the session
    of each tools/list is added to `listeners` (to be told when the list changes)."""

    async def list_tools(
        ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> dict[str, Any]:
        if listeners is not None:
            listeners.add(ctx.session)
        spec = json.loads(tools_file.read_text(encoding="utf-8"))
        tools: list[dict[str, Any]] = spec["tools"]
        page_size = int(spec.get("page_size") or max(len(tools), 1))
        cursor = params.cursor if params is not None else None
        if spec.get("cursor") == "loop":
            return {"tools": tools[:page_size], "nextCursor": "same-page-again"}
        start = int(cursor) if cursor else 0
        end = start + page_size
        result: dict[str, Any] = {"tools": tools[start:end]}
        if end < len(tools):
            result["nextCursor"] = str(end)
        return result

    return Server("tollgate-mutable-test-server", version="1.2.3", on_list_tools=list_tools)


async def watch(tools_file: Path, listeners: set[Any]) -> None:
    """Send tools/list_changed to `listeners` whenever the file's content changes."""
    last = tools_file.read_bytes()
    while True:
        await anyio.sleep(0.1)
        try:
            content = tools_file.read_bytes()
        except FileNotFoundError:
            continue
        if content == last:
            continue
        last = content
        for session in list(listeners):
            try:
                await session.send_tool_list_changed()
            except Exception:  # noqa: BLE001 - a closed session: forget it
                listeners.discard(session)


async def serve(tools_file: Path, port: int) -> None:
    """Serve streamable HTTP on 127.0.0.1:`port` (0: any free port), announcing the port."""
    listeners: set[Any] = set()
    app = build_server(tools_file, listeners).streamable_http_app(host="127.0.0.1")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    async with anyio.create_task_group() as group:
        group.start_soon(watch, tools_file, listeners)
        await server.serve(sockets=[sock])
        group.cancel_scope.cancel()


async def serve_stdio(tools_file: Path) -> None:
    """Serve MCP on stdin/stdout until the client closes it."""
    listeners: set[Any] = set()
    server = build_server(tools_file, listeners)
    options = server.create_initialization_options(NotificationOptions(tools_changed=True))
    async with stdio_server() as (read, write), anyio.create_task_group() as group:
        group.start_soon(watch, tools_file, listeners)
        await server.run(read, write, options)
        group.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools-file", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--stdio", action="store_true", help="speak MCP on stdin/stdout")
    args = parser.parse_args(argv)
    if args.stdio:
        anyio.run(serve_stdio, args.tools_file)
    else:
        anyio.run(serve, args.tools_file, args.port)


if __name__ == "__main__":
    sys.exit(main())
