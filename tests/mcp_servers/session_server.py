"""A stateful MCP server (the official SDK's ``MCPServer``, streamable HTTP) for proxy tests.

Run: ``python tests/mcp_servers/session_server.py --state-dir DIR [--port 0]``; it prints
``PORT <n>`` once it listens on 127.0.0.1:<n>. Started again on the same port and state
directory, it is "the upstream restarted": every session is gone, the files remain.

Tools:
- ``count``: a counter per MCP session (two sessions never share it); answers the new value.
- ``append`` (not idempotent) / ``append_again`` (``idempotentHint: true``): append ``text`` to
  ``DIR/<name>.log`` at once, then (the first time a text is appended) wait ``seconds`` before
  answering — a test kills the server during the wait and reads the file to know how many
  times the call ran.
- ``progress``: three progress notifications, then ``done``.
- ``ask``: a ``sampling/createMessage`` request to the client; answers with the client's text.
- ``confirm``: an ``elicitation/create`` request; ``roots``: a ``roots/list`` request.
- ``grow``: adds a tool ``extra`` and sends ``notifications/tools/list_changed``.
Resource ``note://hello`` (text ``hello from the upstream``); prompt ``greet``.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import SamplingMessage, TextContent, ToolAnnotations
from pydantic import BaseModel


class Confirmation(BaseModel):
    ok: bool


def build(state_dir: Path) -> MCPServer:
    server = MCPServer("tollgate-session-test-server", version="2.0.0")
    counters: dict[str | None, int] = {}

    @server.tool()
    def count(ctx: Context) -> str:
        """Count calls in this session."""
        key = (ctx.headers or {}).get("mcp-session-id")
        counters[key] = counters.get(key, 0) + 1
        return str(counters[key])

    async def _append(name: str, text: str, seconds: float) -> str:
        path = state_dir / f"{name}.log"
        again = path.exists() and text in path.read_text().split()
        with path.open("a") as log:
            log.write(text + "\n")
        if not again:  # slow only the first time: a call sent again answers at once
            await anyio.sleep(seconds)
        return f"appended {text}"

    @server.tool(annotations=ToolAnnotations(idempotentHint=False))
    async def append(text: str, seconds: float = 0) -> str:
        """Append text to a log (not idempotent)."""
        return await _append("append", text, seconds)

    @server.tool(annotations=ToolAnnotations(idempotentHint=True))
    async def append_again(text: str, seconds: float = 0) -> str:
        """Append text to a log (declared idempotent)."""
        return await _append("append_again", text, seconds)

    @server.tool()
    async def progress(ctx: Context) -> str:
        """Report progress three times."""
        for step in range(1, 4):
            await ctx.report_progress(step, 3, f"step {step}")
        return "done"

    @server.tool()
    async def ask(question: str, ctx: Context) -> str:
        """Ask the client's model."""
        result = await ctx.session.create_message(
            messages=[SamplingMessage(role="user",
                                      content=TextContent(type="text", text=question))],
            max_tokens=50, related_request_id=ctx.request_id)
        return f"the client said: {getattr(result.content, 'text', result.content)}"

    @server.tool()
    async def confirm(ctx: Context) -> str:
        """Ask the user to confirm (elicitation)."""
        answer = await ctx.elicit("Proceed with the payment?", Confirmation)
        return f"{answer.action}: {getattr(getattr(answer, 'data', None), 'ok', None)}"

    @server.tool()
    async def roots(ctx: Context) -> str:
        """List the client's roots."""
        listed = await ctx.session.list_roots()
        return " ".join(str(root.uri) for root in listed.roots)

    @server.tool()
    async def grow(ctx: Context) -> str:
        """Add a tool and tell the client."""
        def extra() -> str:
            """An extra tool."""
            return "extra"

        server.add_tool(extra, name="extra")
        await ctx.session.send_tool_list_changed()
        return "grown"

    @server.resource("note://hello")
    def hello() -> str:
        """A note."""
        return "hello from the upstream"

    @server.prompt()
    def greet(name: str) -> str:
        """Greet someone."""
        return f"Say hello to {name}."

    return server


async def serve(state_dir: Path, port: int) -> None:
    app = build(state_dir).streamable_http_app(host="127.0.0.1")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    await server.serve(sockets=[sock])


def main(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    anyio.run(serve, args.state_dir, args.port)


if __name__ == "__main__":
    sys.exit(main())
