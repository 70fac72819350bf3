"""Live tool discovery: ask an MCP server for its tools with the official ``mcp`` SDK.

Plain Python (no Django): the registry calls :func:`discover_tools` from a Celery task or a
management command and stores what comes back.

Public API
----------
- :func:`discover_tools` (synchronous) and :func:`discover_tools_async`, :class:`DiscoveryResult`
- in ``registry/tool_definition.py``: :class:`ToolDefinition` (``from_wire`` / ``to_wire``),
  :func:`canonical_definition` and the **definition hash** :func:`definition_sha256`, a
  cross-component contract
- in ``registry/discovery_errors.py``: :class:`DiscoveryError`, its ``code`` values, and the
  translation of a failed attempt into a message
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, TextIO

import anyio
import httpx2
import mcp_types
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from pydantic import TypeAdapter

from registry.discovery_errors import (
    DUPLICATE_TOOL,
    PAGINATION_LOOP,
    PROTOCOL,
    TOO_MANY_TOOLS,
    Attempt,
    DiscoveryError,
    HttpTransportFactory,
    describe_command,
    excerpt,
)
from registry.tool_definition import ToolDefinition, canonical_definition

__all__ = ["TRANSPORTS", "DiscoveryError", "DiscoveryResult", "discover_tools",
           "discover_tools_async"]  # DiscoveryError: what callers of discover_tools catch

logger = logging.getLogger(__name__)

TRANSPORTS: Final = ("streamable-http", "sse", "stdio")
"""The transports :func:`discover_tools` speaks (the same values as ``McpServer.transport``)."""

_CLIENT_INFO: Final = mcp_types.Implementation(name="tollgate-discovery", version="1.0")
_RAW_RESULT: Final = TypeAdapter(dict[str, Any])


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
    target = url if transport != "stdio" else describe_command(command or [])
    attempt = Attempt(transport=transport, target=target, timeout=timeout,
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
    attempt: Attempt,
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
    session: ClientSession, attempt: Attempt, max_tools: int, max_pages: int
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
                    f"{attempt.who} lists two tools named {excerpt(tool.name)!r}; tool names "
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
