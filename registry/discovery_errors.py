"""Discovery's errors: the DiscoveryError codes and the translation of what went wrong
during one attempt (transport, SDK or server failures) into a message people can act on.

Plain Python (no Django), like :mod:`registry.discovery`.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TextIO

import anyio
import httpx2
import mcp_types
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

logger = logging.getLogger(__name__)

HttpTransportFactory = Callable[[], httpx2.AsyncBaseTransport]
"""Makes the httpx transport of one discovery's HTTP client (see ``http_transport``)."""

# DiscoveryError codes.
UNREACHABLE: Final = "unreachable"
TIMEOUT: Final = "timeout"
PROTOCOL: Final = "protocol"
TOO_MANY_TOOLS: Final = "too_many_tools"
PAGINATION_LOOP: Final = "pagination_loop"
DUPLICATE_TOOL: Final = "duplicate_tool"
# Raised by the caller's ``http_transport`` when it refuses the address (an SSRF guard).
BLOCKED_ADDRESS: Final = "blocked_address"
ERROR_CODES: Final = (
    UNREACHABLE,
    TIMEOUT,
    PROTOCOL,
    TOO_MANY_TOOLS,
    PAGINATION_LOOP,
    DUPLICATE_TOOL,
    BLOCKED_ADDRESS,
)


_STDERR_TAIL_CHARS: Final = 500
_EXCERPT_CHARS: Final = 200


class DiscoveryError(Exception):
    """Discovery failed; ``code`` is one of ERROR_CODES, ``message`` is shown to people."""

    def __init__(self, code: str, message: str) -> None:
        """Keep the machine-readable code and the human-readable message."""
        if code not in ERROR_CODES:
            raise ValueError(f"unknown DiscoveryError code {code!r}")
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        """The human-readable message."""
        return self.message


@dataclass
class Attempt:
    """The state of one discovery: where it got to and what went wrong, for the messages."""

    transport: str
    target: str | None
    timeout: float
    stage: str = "connect"
    scope: anyio.CancelScope | None = None
    stream_error: Exception | None = None
    errlog: TextIO | None = None
    http_error: int | None = None
    http_transport: HttpTransportFactory | None = None

    @property
    def who(self) -> str:
        """How messages name the server."""
        if self.transport == "stdio":
            return f"The server command {self.target}"
        return f"The server at {self.target}"

    async def on_message(self, message: Any) -> None:
        """Fail fast on output that is not MCP (the session would otherwise wait for ever)."""
        if isinstance(message, Exception) and self.stream_error is None:
            self.stream_error = message
            if self.scope is not None:
                self.scope.cancel()

    async def on_http_response(self, response: httpx2.Response) -> None:
        """Remember an HTTP error answering a message (the SDK's JSON-RPC error drops it)."""
        if response.status_code >= 400 and response.request.method == "POST":
            self.http_error = response.status_code

    def http_error_text(self) -> str:
        """'HTTP 401 Unauthorized' and what to check, or '' when no HTTP error was seen."""
        if self.http_error is None:
            return ""
        try:
            reason = httpx2.codes.get_reason_phrase(self.http_error)
        except ValueError:
            reason = ""
        hint = {
            401: " Check the credentials (headers) configured for this server.",
            403: " Check the credentials (headers) configured for this server.",
            404: " Check the URL: is this the server's MCP endpoint?",
            405: " Check the URL: is this the server's MCP endpoint?",
        }.get(self.http_error, "")
        return f"HTTP {self.http_error} {reason}".rstrip() + "." + hint

    def stderr_tail(self) -> str:
        """The end of what a stdio server wrote on stderr, as a sentence (or '')."""
        if self.errlog is None or self.transport != "stdio":
            return ""
        try:
            self.errlog.flush()
            self.errlog.seek(0, os.SEEK_END)
            size = self.errlog.tell()
            self.errlog.seek(max(0, size - 4 * _STDERR_TAIL_CHARS))
            text = self.errlog.read().strip()
        except (OSError, ValueError):
            return ""
        if not text:
            return ""
        return f" Its last output on stderr: {text[-_STDERR_TAIL_CHARS:]}"

    def timeout_error(self) -> DiscoveryError:
        """The deadline passed."""
        waiting = {
            "connect": "connecting",
            "initialize": "waiting for its answer to initialize",
            "tools/list": "waiting for its tool list",
        }[self.stage]
        return DiscoveryError(
            TIMEOUT,
            f"{self.who} did not finish answering within {self.timeout:g} s "
            f"(gave up while {waiting}).{self.stderr_tail()}",
        )

    def bad_output_error(self) -> DiscoveryError:
        """The server wrote something that is not a JSON-RPC message."""
        detail = excerpt(_describe_exception(self.stream_error)) if self.stream_error else ""
        return DiscoveryError(
            PROTOCOL,
            f"{self.who} sent something that is not an MCP (JSON-RPC) message"
            f"{' (' + detail + ')' if detail else ''}.{self.stderr_tail()}",
        )

    def translate(self, exc: BaseException) -> DiscoveryError:
        """Map whatever the SDK raised to a DiscoveryError with a readable message."""
        leaves = list(_leaf_exceptions(exc))
        for leaf in leaves:
            if isinstance(leaf, DiscoveryError):
                return leaf
        if self.stream_error is not None:
            return self.bad_output_error()
        if self.scope is not None and self.scope.cancel_called:
            return self.timeout_error()
        for leaf in leaves:
            if isinstance(leaf, httpx2.TimeoutException):
                return self.timeout_error()
        for leaf in leaves:
            if isinstance(leaf, httpx2.ConnectError | ConnectionError) or (
                isinstance(leaf, OSError) and self.stage == "connect"
            ):
                return self._unreachable(leaf)
        for leaf in leaves:
            if isinstance(leaf, httpx2.HTTPStatusError):
                self.http_error = leaf.response.status_code
                return DiscoveryError(
                    PROTOCOL,
                    f"{self.who} answered the SSE connection with {self.http_error_text()}",
                )
        for leaf in leaves:
            if isinstance(leaf, httpx2.SSEError):
                return DiscoveryError(
                    PROTOCOL,
                    f"{self.who} did not open an MCP event stream "
                    f"({excerpt(_describe_exception(leaf))}). Is this its SSE endpoint?",
                )
        for leaf in leaves:
            if isinstance(leaf, MCPError):
                return self._mcp_error(leaf)
        for leaf in leaves:
            if isinstance(leaf, ValidationError):
                return DiscoveryError(
                    PROTOCOL,
                    f"{self.who} sent a malformed answer to {self.stage} "
                    f"({excerpt(_first_validation_problem(leaf))}).",
                )
        first = leaves[0] if leaves else exc
        logger.warning("unexpected error during MCP discovery", exc_info=exc)
        return DiscoveryError(
            PROTOCOL,
            f"{self.who} could not be queried ({self.stage} failed: "
            f"{excerpt(_describe_exception(first))}).{self.stderr_tail()}",
        )

    def _unreachable(self, leaf: BaseException) -> DiscoveryError:
        """Connection refused, unknown host, command not found…"""
        reason = _describe_exception(leaf)
        if self.transport == "stdio":
            return DiscoveryError(
                UNREACHABLE, f"{self.who} could not be started: {excerpt(reason)}."
            )
        return DiscoveryError(UNREACHABLE, f"{self.who} could not be reached: {excerpt(reason)}.")

    def _mcp_error(self, error: MCPError) -> DiscoveryError:
        """A JSON-RPC error, real or synthesised by the SDK's transport."""
        if error.code == mcp_types.CONNECTION_CLOSED:
            if self.transport == "stdio":
                return DiscoveryError(
                    PROTOCOL,
                    f"{self.who} exited or closed its output before answering {self.stage}."
                    f"{self.stderr_tail()}",
                )
            return DiscoveryError(
                PROTOCOL, f"{self.who} closed the connection before answering {self.stage}."
            )
        if error.code == mcp_types.REQUEST_TIMEOUT:
            return self.timeout_error()
        if self.http_error is not None:
            return DiscoveryError(
                PROTOCOL, f"{self.who} answered {self.stage} with {self.http_error_text()}"
            )
        if self.stage == "initialize":
            return DiscoveryError(
                PROTOCOL,
                f"{self.who} did not accept the MCP initialize request: "
                f"{excerpt(error.message)} (JSON-RPC error {error.code}). Is it an MCP server?",
            )
        return DiscoveryError(
            PROTOCOL,
            f"{self.who} refused {self.stage}: {excerpt(error.message)} "
            f"(JSON-RPC error {error.code}).",
        )


def _leaf_exceptions(exc: BaseException) -> list[BaseException]:
    """Flatten (nested) exception groups, keeping the order."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaf_exceptions(inner)]
    return [exc]


def _describe_exception(exc: BaseException) -> str:
    """A short, readable reason for an exception (the OS error behind a connect failure)."""
    chain = [exc]
    while len(chain) < 10:  # httpx2 → httpcore2 → OSError → ConnectionRefusedError …
        cause = chain[-1].__cause__ or chain[-1].__context__
        if cause is None or cause in chain:
            break
        chain.append(cause)
    for link in chain:
        if isinstance(link, socket.gaierror):
            return "its host name could not be resolved"
        if isinstance(link, ConnectionRefusedError):
            return "connection refused (is the server running, and is the port right?)"
    for link in chain:
        if isinstance(link, OSError) and link.errno is not None and link.strerror:
            reason = link.strerror[:1].lower() + link.strerror[1:]
            return f"{reason} ({link.filename})" if link.filename else reason
    if isinstance(exc, ValidationError):
        return _first_validation_problem(exc)
    text = str(exc).strip()
    return text or type(exc).__name__


def _first_validation_problem(error: ValidationError) -> str:
    """The first pydantic error as 'where: what', or the offending text for invalid JSON."""
    problems = error.errors()
    if not problems:
        return "invalid"
    first = problems[0]
    if first.get("type") == "json_invalid" and isinstance(first.get("input"), str):
        return f"it wrote {excerpt(first['input'], 80)!r}"
    where = ".".join(str(part) for part in first.get("loc", ()))
    message = str(first.get("msg", "invalid"))
    return f"{where}: {message}" if where else message


def describe_command(command: Sequence[str]) -> str:
    """The command line, quoted for messages."""
    return f"`{excerpt(' '.join(command))}`"


def excerpt(text: str, limit: int = _EXCERPT_CHARS) -> str:
    """`text` on one line, shortened to `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
