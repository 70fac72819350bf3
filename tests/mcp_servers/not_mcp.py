"""Servers that are not MCP servers, run in a thread of the test process.

- :class:`SilentServer`: accepts TCP connections and never answers (a hung server).
- :class:`CannedHttpServer`: answers every request with the same status, type and body
  (an HTML page, JSON that is not JSON-RPC…) and records the request headers it saw.
- :class:`HandRolledMcpServer`: speaks just enough MCP to send a malformed tools/list result.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


class SilentServer:
    """A listening socket on 127.0.0.1 that accepts connections, reads, and never replies."""

    def __init__(self) -> None:
        """Bind a free port."""
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        """Accept until stopped; keep every connection open and unanswered."""
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(connection)

    def __enter__(self) -> SilentServer:
        """Start accepting."""
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop accepting and close everything."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for connection in self.connections:
            connection.close()


class CannedHttpServer:
    """An HTTP server on 127.0.0.1 that gives every GET and POST the same answer."""

    def __init__(self, *, status: int = 200, content_type: str, body: bytes) -> None:
        """Bind a free port; nothing is served until the context is entered."""
        canned = self
        self.seen_headers: list[dict[str, str]] = []

        class Handler(BaseHTTPRequestHandler):
            """Answer with the canned response."""

            def _answer(self) -> None:
                """Record the headers, drain the body, send the canned response."""
                canned.seen_headers.append({k.lower(): v for k, v in self.headers.items()})
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = _answer
            do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                """Keep the test output quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> CannedHttpServer:
        """Start serving."""
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class HandRolledMcpServer(CannedHttpServer):
    """Just enough streamable HTTP MCP (JSON responses) to send a tools/list result verbatim.

    The SDK's server validates what it sends; this one does not, so the tests can prove the
    client side rejects a malformed result instead of trusting it.
    """

    def __init__(self, tools_list_result: dict[str, Any]) -> None:
        """Answer initialize properly and every tools/list with `tools_list_result`."""
        super().__init__(content_type="application/json", body=b"")
        result_for_tools = tools_list_result

        class Handler(BaseHTTPRequestHandler):
            """A minimal JSON-RPC over HTTP POST responder."""

            def do_POST(self) -> None:
                """Answer one JSON-RPC message."""
                length = int(self.headers.get("content-length") or 0)
                message = json.loads(self.rfile.read(length) or b"{}")
                if "id" not in message:
                    self.send_response(202)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if message.get("method") == "initialize":
                    result: dict[str, Any] = {
                        "protocolVersion": "2025-11-25",
                        "capabilities": {"tools": {}},
                        "serverInfo": {"name": "hand-rolled", "version": "0.0.1"},
                    }
                else:
                    result = result_for_tools
                body = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body.encode())))
                self.end_headers()
                self.wfile.write(body.encode())

            def do_GET(self) -> None:
                """No server-to-client stream."""
                self.send_response(405)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_DELETE(self) -> None:
                """Sessions are not tracked."""
                self.do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                """Keep the test output quiet."""

        self._server.RequestHandlerClass = Handler
