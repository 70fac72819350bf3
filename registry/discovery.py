"""Live tool discovery: ask an MCP server for its tools with the official ``mcp`` SDK.

Plain Python (no Django): the registry calls :func:`discover_tools` from a Celery task or a
management command and stores what comes back. The module also owns the **definition hash**,
which is a cross-component contract, see :func:`definition_sha256`.

Public API
----------
- :class:`ToolDefinition` (``from_wire`` / ``to_wire``), :func:`canonical_definition`,
  :func:`definition_sha256`
- :func:`discover_tools` (synchronous) and :func:`discover_tools_async`
- :class:`DiscoveryResult`, :class:`DiscoveryError` and its ``code`` values
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import hashlib
import logging
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

import anyio
import httpx2
import mcp_types
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from pydantic import TypeAdapter, ValidationError

from gateway import canonical

logger = logging.getLogger(__name__)

TRANSPORTS: Final = ("streamable-http", "sse", "stdio")
"""The transports :func:`discover_tools` speaks (the same values as ``McpServer.transport``)."""
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

CANONICAL_KEYS: Final = (
    "name",
    "title",
    "description",
    "inputSchema",
    "outputSchema",
    "annotations",
)
"""The wire keys of a Tool that the definition hash covers (and nothing else: not icons, _meta)."""

_CLIENT_INFO: Final = mcp_types.Implementation(name="tollgate-discovery", version="1.0")
_RAW_RESULT: Final = TypeAdapter(dict[str, Any])
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


# --------------------------------------------------------------------------------------------
# Tool definitions and the definition hash
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolDefinition:
    """One tool as a server declared it, normalised for hashing (see :func:`definition_sha256`).

    Absent ``title``/``description`` are ``""``, absent ``output_schema`` is None, absent
    ``annotations`` is ``{}``: the field names and types of ``registry.models.Tool``.
    """

    name: str
    title: str = ""
    description: str = ""
    input_schema: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    output_schema: dict[str, Any] | None = None
    annotations: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_wire(cls, tool: Mapping[str, Any]) -> ToolDefinition:
        """Build from the JSON of an MCP ``Tool`` (camelCase keys); ValueError if malformed."""
        wire = canonical.normalised_tool(tool)
        return cls(
            name=wire["name"],
            title=wire["title"],
            description=wire["description"],
            input_schema=copy.deepcopy(wire["inputSchema"]),
            output_schema=copy.deepcopy(wire["outputSchema"]),
            annotations=copy.deepcopy(wire["annotations"]),
        )

    def to_wire(self) -> dict[str, Any]:
        """The exact object that is canonicalised and hashed (camelCase, every key present)."""
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "inputSchema": self.input_schema,
            "outputSchema": self.output_schema,
            "annotations": self.annotations,
        }

    @property
    def definition_sha256(self) -> str:
        """Shorthand for :func:`definition_sha256` of this tool."""
        return definition_sha256(self)


def canonical_definition(tool: ToolDefinition | Mapping[str, Any]) -> bytes:
    """The canonical JSON bytes of a tool's definition (the input of the definition hash).

    ``tool`` is a :class:`ToolDefinition` or the wire JSON of an MCP Tool; the rules live in
    ``gateway/canonical.py``, shared with the reference gateway.
    """
    return canonical.canonical_bytes(tool.to_wire() if isinstance(tool, ToolDefinition)
                                     else tool)


def definition_sha256(tool: ToolDefinition | Mapping[str, Any]) -> str:
    """Lower-case hex SHA-256 of :func:`canonical_definition` — a CROSS-COMPONENT CONTRACT.

    The control plane pins this hash when a tool is approved and ships it in the policy
    bundle; the reference gateway recomputes it from the live ``tools/list`` result and denies
    the call when the two differ. Both call ``gateway/canonical.py`` (its docstring states the
    rules); any change there is a breaking change of the bundle.
    """
    return hashlib.sha256(canonical_definition(tool)).hexdigest()


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiscoveryResult:
    """What a server said about itself and its tools, in the order it listed them."""

    server_name: str
    server_version: str
    protocol_version: str
    tools: list[ToolDefinition]
    pages: int = 1


def discover_tools(
    *,
    transport: str,
    url: str | None = None,
    command: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    max_tools: int = 5000,
    max_pages: int = 1000,
    http_transport: HttpTransportFactory | None = None,
) -> DiscoveryResult:
    """Connect, ``initialize``, page through ``tools/list``; all within ``timeout`` seconds.

    ``transport`` is one of TRANSPORTS: ``url`` for the HTTP ones (``headers`` are sent with
    every request, e.g. ``Authorization``; ``http_transport`` makes the httpx transport the
    client connects through, e.g. one pinned to checked addresses), ``command`` (argv) and
    ``env`` for stdio. Raises :class:`DiscoveryError` for every failure of the server;
    ValueError for bad arguments.

    ``timeout`` is one deadline for the whole operation, not per request. The one exception is
    stdio: when it fires, the SDK still stops the child the way the MCP spec asks (close its
    stdin, wait up to 2 s, SIGTERM its process group, then SIGKILL), which may add a few
    seconds but never leaves the process running. Safe to call from a thread that runs an
    event loop (it then runs in a worker thread).
    """
    kwargs: dict[str, Any] = {
        "transport": transport,
        "url": url,
        "command": command,
        "env": env,
        "headers": headers,
        "timeout": timeout,
        "max_tools": max_tools,
        "max_pages": max_pages,
    }
    _check_arguments(**kwargs)
    kwargs["http_transport"] = http_transport
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return anyio.run(_run_with_kwargs, kwargs)
    # Called from async code (e.g. an async view): anyio.run() needs a thread without a loop.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(anyio.run, _run_with_kwargs, kwargs).result()


async def _run_with_kwargs(kwargs: dict[str, Any]) -> DiscoveryResult:
    """Adapter for anyio.run, which passes positional arguments only."""
    return await discover_tools_async(**kwargs)


async def discover_tools_async(
    *,
    transport: str,
    url: str | None = None,
    command: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    max_tools: int = 5000,
    max_pages: int = 1000,
    http_transport: HttpTransportFactory | None = None,
) -> DiscoveryResult:
    """The async form of :func:`discover_tools` (same arguments, same errors)."""
    _check_arguments(
        transport=transport,
        url=url,
        command=command,
        env=env,
        headers=headers,
        timeout=timeout,
        max_tools=max_tools,
        max_pages=max_pages,
    )
    target = url if transport != "stdio" else _describe_command(command or [])
    attempt = _Attempt(transport=transport, target=target, timeout=timeout,
                       http_transport=http_transport)
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as errlog:
        attempt.errlog = errlog
        result: DiscoveryResult | None = None
        with anyio.CancelScope(deadline=anyio.current_time() + timeout) as scope:
            attempt.scope = scope
            try:
                async with _connect(attempt, url, command, env, headers, errlog) as (
                    read_stream,
                    write_stream,
                ):
                    async with ClientSession(
                        read_stream,
                        write_stream,
                        client_info=_CLIENT_INFO,
                        message_handler=attempt.on_message,
                    ) as session:
                        result = await _initialize_and_list(session, attempt, max_tools, max_pages)
            except Exception as exc:  # every failure of the server becomes a DiscoveryError
                if result is None:
                    raise attempt.translate(exc) from exc
                # The tools are in hand; a failure while hanging up does not undo that.
                logger.debug("ignoring an error while closing the MCP connection", exc_info=True)
        if result is not None:
            return result
        if attempt.stream_error is not None:
            raise attempt.bad_output_error()
        if scope.cancelled_caught:
            raise attempt.timeout_error()
        raise DiscoveryError(PROTOCOL, f"{attempt.who} closed the connection without answering.")


def _check_arguments(
    *,
    transport: str,
    url: str | None,
    command: Sequence[str] | None,
    env: Mapping[str, str] | None,
    headers: Mapping[str, str] | None,
    timeout: float,
    max_tools: int,
    max_pages: int,
) -> None:
    """ValueError for a call that cannot be right whatever the server does."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
    if transport == "stdio":
        if not command or isinstance(command, str) or not all(isinstance(a, str) for a in command):
            raise ValueError("stdio discovery needs command, a non-empty list of strings")
    elif not url or not url.startswith(("http://", "https://")):
        raise ValueError(f"{transport} discovery needs an http:// or https:// url")
    if not timeout > 0:
        raise ValueError("timeout must be positive")
    if max_tools < 1 or max_pages < 1:
        raise ValueError("max_tools and max_pages must be at least 1")
    if env is not None and not isinstance(env, Mapping):
        raise ValueError("env must be a mapping")
    if headers is not None and not isinstance(headers, Mapping):
        raise ValueError("headers must be a mapping")


@asynccontextmanager
async def _connect(
    attempt: _Attempt,
    url: str | None,
    command: Sequence[str] | None,
    env: Mapping[str, str] | None,
    headers: Mapping[str, str] | None,
    errlog: TextIO,
) -> AsyncIterator[tuple[Any, Any]]:
    """Open the SDK transport and yield its (read, write) streams."""
    if attempt.transport == "stdio":
        if not command:
            raise ValueError("stdio discovery needs command")
        params = StdioServerParameters(
            command=command[0], args=list(command[1:]), env=dict(env) if env else None
        )
        async with stdio_client(params, errlog=errlog) as streams:
            yield streams
        return
    if not url:
        raise ValueError(f"{attempt.transport} discovery needs url")

    def client_factory(
        headers: dict[str, str] | None = None,
        timeout: httpx2.Timeout | None = None,
        auth: httpx2.Auth | None = None,
    ) -> httpx2.AsyncClient:
        """The SDK's HTTP client, bounded by our timeout, noting HTTP errors for the message."""
        # What the SDK's create_mcp_http_client makes, through the caller's transport if any.
        client = httpx2.AsyncClient(
            headers=headers, timeout=httpx2.Timeout(attempt.timeout), auth=auth,
            transport=attempt.http_transport() if attempt.http_transport else None,
        )
        client.event_hooks = {"response": [attempt.on_http_response]}
        return client

    if attempt.transport == "sse":
        async with sse_client(
            url,
            headers=dict(headers or {}),
            timeout=attempt.timeout,
            sse_read_timeout=attempt.timeout,
            httpx_client_factory=client_factory,
        ) as streams:
            yield streams
    else:
        client = client_factory(headers=dict(headers or {}))
        async with client, streamable_http_client(url, http_client=client) as streams:
            yield streams


async def _initialize_and_list(
    session: ClientSession, attempt: _Attempt, max_tools: int, max_pages: int
) -> DiscoveryResult:
    """The MCP conversation: initialize, then tools/list until there is no nextCursor."""
    attempt.stage = "initialize"
    init = await session.initialize()
    attempt.stage = "tools/list"
    if init.capabilities.tools is None:
        # Not advertising tools is legal (a resources-only server); ask anyway, leniently.
        logger.info("%s does not advertise the tools capability", attempt.who)
    tools: list[ToolDefinition] = []
    names: set[str] = set()
    seen_cursors: set[str] = set()
    cursor: str | None = None
    pages = 0
    while True:
        if pages >= max_pages:
            raise DiscoveryError(
                PAGINATION_LOOP,
                f"{attempt.who} kept returning more pages of tools: stopped after {pages} pages "
                f"(the limit is {max_pages}).",
            )
        params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor is not None else None
        # The raw result, not session.list_tools(): the hash must cover what the server sent
        # (unknown annotation keys included), exactly as the gateway sees it on the wire.
        # send_request still validates the result against the negotiated protocol's schema.
        page = await session.send_request(mcp_types.ListToolsRequest(params=params), _RAW_RESULT)
        pages += 1
        next_cursor = page.get("nextCursor")
        raw_tools = page.get("tools")
        if not isinstance(raw_tools, list) or not isinstance(next_cursor, str | None):
            raise DiscoveryError(PROTOCOL, f"{attempt.who} sent a malformed tools/list result.")
        # A repeated cursor first: a looping server repeats its tools too, and the loop is the
        # better diagnosis than the duplicate names it causes.
        if next_cursor is not None and (next_cursor in seen_cursors or next_cursor == cursor):
            raise DiscoveryError(
                PAGINATION_LOOP,
                f"{attempt.who} sent the same tools/list cursor twice (after {pages} pages), so "
                "paging through its tools would never end.",
            )
        if len(tools) + len(raw_tools) > max_tools:
            more = " and said there were more" if next_cursor is not None else ""
            raise DiscoveryError(
                TOO_MANY_TOOLS,
                f"{attempt.who} lists more tools than the limit of {max_tools}: it had listed "
                f"{len(tools) + len(raw_tools)} in {pages} page{'s' if pages != 1 else ''}{more} "
                "when discovery stopped.",
            )
        for raw in raw_tools:
            try:
                tool = ToolDefinition.from_wire(raw)
                canonical_definition(tool)
            except ValueError as exc:
                raise DiscoveryError(
                    PROTOCOL, f"{attempt.who} listed a malformed tool: {exc}."
                ) from exc
            if tool.name in names:
                raise DiscoveryError(
                    DUPLICATE_TOOL,
                    f"{attempt.who} lists two tools named {_excerpt(tool.name)!r}; tool names "
                    "must be unique, so neither can be told apart from the other.",
                )
            names.add(tool.name)
            tools.append(tool)
        if next_cursor is None:
            break
        seen_cursors.add(next_cursor)
        cursor = next_cursor
    server_info = init.server_info
    return DiscoveryResult(
        server_name=server_info.name,
        server_version=server_info.version,
        protocol_version=init.protocol_version,
        tools=tools,
        pages=pages,
    )


@dataclass
class _Attempt:
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
        detail = _excerpt(_describe_exception(self.stream_error)) if self.stream_error else ""
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
                    f"({_excerpt(_describe_exception(leaf))}). Is this its SSE endpoint?",
                )
        for leaf in leaves:
            if isinstance(leaf, MCPError):
                return self._mcp_error(leaf)
        for leaf in leaves:
            if isinstance(leaf, ValidationError):
                return DiscoveryError(
                    PROTOCOL,
                    f"{self.who} sent a malformed answer to {self.stage} "
                    f"({_excerpt(_first_validation_problem(leaf))}).",
                )
        first = leaves[0] if leaves else exc
        logger.warning("unexpected error during MCP discovery", exc_info=exc)
        return DiscoveryError(
            PROTOCOL,
            f"{self.who} could not be queried ({self.stage} failed: "
            f"{_excerpt(_describe_exception(first))}).{self.stderr_tail()}",
        )

    def _unreachable(self, leaf: BaseException) -> DiscoveryError:
        """Connection refused, unknown host, command not found…"""
        reason = _describe_exception(leaf)
        if self.transport == "stdio":
            return DiscoveryError(
                UNREACHABLE, f"{self.who} could not be started: {_excerpt(reason)}."
            )
        return DiscoveryError(UNREACHABLE, f"{self.who} could not be reached: {_excerpt(reason)}.")

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
                f"{_excerpt(error.message)} (JSON-RPC error {error.code}). Is it an MCP server?",
            )
        return DiscoveryError(
            PROTOCOL,
            f"{self.who} refused {self.stage}: {_excerpt(error.message)} "
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
        return f"it wrote {_excerpt(first['input'], 80)!r}"
    where = ".".join(str(part) for part in first.get("loc", ()))
    message = str(first.get("msg", "invalid"))
    return f"{where}: {message}" if where else message


def _describe_command(command: Sequence[str]) -> str:
    """The command line, quoted for messages."""
    return f"`{_excerpt(' '.join(command))}`"


def _excerpt(text: str, limit: int = _EXCERPT_CHARS) -> str:
    """`text` on one line, shortened to `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
