"""Sessions with the upstream MCP server: one per agent session, plus the gateway's own.

An :class:`UpstreamConnection` is one MCP session with the upstream, opened with the
``initialize`` parameters of the agent session it serves (its client info and capabilities), on
the official SDK's client transports (``streamable_http_client``, or ``stdio_client``: one child
process per connection). Messages travel as the SDK's raw JSON-RPC envelopes, never as typed
results: what the gateway does not inspect is not re-serialised beyond the transports' own
framing.

When the upstream loses the session — HTTP 404 on the session (it restarted), a broken
connection, a stdio child that exited — the next request opens a new transport and
initialises again with the same parameters (then ``notifications/initialized``), transparently:

- A request the upstream answered 404 never reached it: it is sent again on the new session.
- A request in flight when the connection broke has an unknown fate. It is sent again only when
  the caller says that is safe (``retry=True``: listings, reads, and ``tools/call`` of a tool
  annotated ``idempotentHint: true`` in the bundle); otherwise :class:`FateUnknown` is raised and
  the caller answers the agent with an error saying so. Nothing is ever sent twice otherwise.

:class:`Upstream` is the gateway's own session (client info ``tollgate-gateway``), kept open with
backoff: discovery reports list the tools over it (``gateway/discovery.py``).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp.shared.message import ClientMessageMetadata, SessionMessage
from mcp_types import (
    CONNECTION_CLOSED,
    JSONRPCError,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
)
from mcp_types.version import LATEST_HANDSHAKE_VERSION

logger = logging.getLogger(__name__)

MAX_TOOL_PAGES = 100
GATEWAY_CLIENT_INFO = {"name": "tollgate-gateway", "version": "1.0"}
_ids = itertools.count(1)  # upstream request ids: unique in the process, never an agent's
_LOST = object()  # a waiter's answer when the connection broke before the response came
_NOT_SENT = object()  # ... when it broke before the request could go out
Answer = JSONRPCResponse | JSONRPCError
MessageHandler = Callable[["UpstreamConnection", Any, Any], Awaitable[None]]


class UpstreamUnavailable(Exception):
    """The upstream MCP server cannot be reached right now (nothing was sent)."""


class FateUnknown(Exception):
    """The request was sent, and the connection broke before its answer came."""


class UpstreamTarget:
    """Where the upstream is and how to open a transport to it (shared by all connections)."""

    def __init__(self, *, url: str | None, command: Sequence[str] | None,
                 headers: Mapping[str, str] | None = None, timeout: float = 30.0) -> None:
        if (url is None) == (command is None):
            raise ValueError("give exactly one of upstream_url and upstream_cmd")
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError("upstream_url must be an http:// or https:// URL")
        if command is not None and (isinstance(command, str) or not command):
            raise ValueError("upstream_cmd must be a non-empty list of strings")
        self.url = url
        self.command = list(command) if command is not None else None
        self.headers = dict(headers or {})
        self.timeout = timeout
        self._client: httpx2.AsyncClient | None = None
        # Ids of requests the upstream answered HTTP 404 (session unknown): never processed.
        self._not_processed: set[Any] = set()

    @property
    def stdio(self) -> bool:
        return self.command is not None

    def _http_client(self) -> httpx2.AsyncClient:
        if self._client is None or self._client.is_closed:
            self._client = httpx2.AsyncClient(
                headers=self.headers, timeout=httpx2.Timeout(self.timeout, read=300.0),
                event_hooks={"response": [self._on_response]})
        return self._client

    async def _on_response(self, response: httpx2.Response) -> None:
        """Remember which request a 404 on a session answered: the upstream never saw it."""
        request = response.request
        if response.status_code != 404 or "mcp-session-id" not in request.headers:
            return
        try:
            sent = json.loads(request.content)
        except (ValueError, httpx2.HTTPError):
            return
        if isinstance(sent, dict) and "id" in sent:
            if len(self._not_processed) > 10_000:  # answers nobody waits for any more
                self._not_processed.clear()
            self._not_processed.add(sent["id"])

    def not_processed(self, request_id: Any) -> bool:
        if request_id in self._not_processed:
            self._not_processed.discard(request_id)
            return True
        return False

    @asynccontextmanager
    async def streams(self) -> AsyncIterator[tuple[Any, Any]]:
        if self.command is not None:
            params = StdioServerParameters(command=self.command[0], args=self.command[1:])
            async with stdio_client(params) as streams:
                yield streams
            return
        async with streamable_http_client(str(self.url), http_client=self._http_client()) as s:
            yield s

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class _Waiter:
    __slots__ = ("answer", "event")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.answer: Any = None

    def set(self, answer: Any) -> None:
        if not self.event.is_set():
            self.answer = answer
            self.event.set()


class _Live:
    """One open transport (a generation of the connection)."""

    def __init__(self) -> None:
        self.write: Any = None
        self.pending: dict[Any, _Waiter] = {}
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.dead = False
        self.error = ""
        self.connect_failed = False


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _describe(error: BaseException) -> str:
    leaves = _leaves(error)
    return "; ".join(f"{type(e).__name__}: {e}" for e in leaves[:3])


class UpstreamConnection:
    """One MCP session with the upstream for one agent session (module docstring)."""

    def __init__(self, target: UpstreamTarget, task_group: Any, *,
                 on_message: MessageHandler | None = None, tools_ttl: float = 2.0) -> None:
        self.target = target
        self.on_message = on_message  # upstream requests and notifications: (self, live, msg)
        self.tools_ttl = tools_ttl
        self.init_params: dict[str, Any] | None = None
        self.initialize_result: dict[str, Any] | None = None
        self.last_error = ""
        self.on_ready: Callable[[], None] | None = None
        self.on_tools_changed: Callable[[], None] | None = None
        self._tg = task_group
        self._live: _Live | None = None
        self._lock = anyio.Lock()
        self._metadata: ClientMessageMetadata | None = None
        self._tools: list[dict[str, Any]] | None = None
        self._tools_at = 0.0
        self._tools_generation = 0
        self._closed = False

    # ---- lifecycle ------------------------------------------------------------------------

    async def open(self, params: dict[str, Any], *, send_initialized: bool) -> dict[str, Any]:
        """Initialise with the agent's ``initialize`` params; the upstream's result.
        Raises :class:`UpstreamUnavailable` (the params are kept: the next request tries
        again)."""
        self.init_params = params
        async with self._lock:
            await self._initialise(send_initialized=send_initialized)
        return self.initialize_result or {}

    async def ensure(self) -> _Live:
        live = self._live
        if live is not None and not live.dead:
            return live
        if self._closed:
            raise UpstreamUnavailable("the session has ended")
        async with self._lock:
            live = self._live
            if live is not None and not live.dead:
                return live
            if self.init_params is None:
                raise UpstreamUnavailable("the agent session is not initialised")
            return await self._initialise(send_initialized=True)

    async def _initialise(self, *, send_initialized: bool) -> _Live:
        live = _Live()
        try:
            await self._tg.start(self._run, live)
        except Exception as error:  # noqa: BLE001 - e.g. a command that cannot start
            self.last_error = _describe(error)
            raise UpstreamUnavailable(self.last_error) from error
        request = JSONRPCRequest(jsonrpc="2.0", id=next(_ids), method="initialize",
                                 params=self.init_params)
        waiter = _Waiter()
        live.pending[request.id] = waiter
        try:
            await live.write.send(SessionMessage(request))
            with anyio.fail_after(self.target.timeout):
                await waiter.event.wait()
        except (TimeoutError, anyio.ClosedResourceError, anyio.BrokenResourceError) as error:
            live.scope.cancel()
            self.last_error = live.error or "the upstream did not answer initialize in time"
            raise UpstreamUnavailable(self.last_error) from error
        answer = waiter.answer
        if not isinstance(answer, JSONRPCResponse):
            live.scope.cancel()
            self.last_error = (answer.error.message if isinstance(answer, JSONRPCError)
                               else live.error or "the connection closed during initialize")
            raise UpstreamUnavailable(self.last_error)
        self.initialize_result = answer.result
        version = answer.result.get("protocolVersion")
        self._metadata = ClientMessageMetadata(
            headers={MCP_PROTOCOL_VERSION_HEADER: str(version)}) if version else None
        if send_initialized:
            await live.write.send(SessionMessage(
                JSONRPCNotification(jsonrpc="2.0", method="notifications/initialized"),
                metadata=self._metadata))
        self._live, self._tools, self.last_error = live, None, ""
        _notify(self.on_ready, "upstream ready")
        return live

    async def _run(self, live: _Live, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        started = False
        try:
            with live.scope:
                async with self.target.streams() as (read, write):
                    live.write = write
                    started = True
                    task_status.started()
                    async for item in read:
                        if isinstance(item, Exception):
                            logger.debug("upstream transport: %s", item)
                            continue
                        await self._dispatch(live, item.message)
        except Exception as error:  # noqa: BLE001 - the transport broke: this generation ends
            live.error = _describe(error)
            live.connect_failed = all(isinstance(e, httpx2.ConnectError | httpx2.ConnectTimeout)
                                      for e in _leaves(error))
            logger.info("upstream connection lost: %s", live.error)
            if not started:
                raise
        finally:
            live.dead = True
            # A refused connection delivered nothing; with one request pending, that one was
            # not sent (with several, another may have been in flight on a pooled connection).
            answer = _NOT_SENT if live.connect_failed and len(live.pending) == 1 else _LOST
            for waiter in live.pending.values():
                waiter.set(answer)
            live.pending.clear()
            if self._live is live:
                self._live = None
            live.done.set()

    async def close(self) -> None:
        """End the session (the SDK transport sends DELETE; a stdio child is terminated)."""
        self._closed = True
        live, self._live = self._live, None
        if live is None or live.dead:
            return
        with anyio.move_on_after(5):
            await live.write.aclose()
            await live.done.wait()
        live.scope.cancel()

    def drop(self, live: _Live) -> None:
        """The upstream lost this session: the next request initialises a new one."""
        live.dead = True
        if self._live is live:
            self._live = None
        live.scope.cancel()

    # ---- messages -------------------------------------------------------------------------

    async def _dispatch(self, live: _Live, message: Any) -> None:
        if isinstance(message, JSONRPCResponse | JSONRPCError):
            waiter = live.pending.pop(message.id, None)
            if waiter is not None:
                lost = isinstance(message, JSONRPCError) and (
                    message.error.code == CONNECTION_CLOSED)
                waiter.set(_LOST if lost else message)
            return
        if isinstance(message, JSONRPCNotification) and (
                message.method == "notifications/tools/list_changed"):
            self._tools, self._tools_generation = None, self._tools_generation + 1
            _notify(self.on_tools_changed, "tools/list_changed")
        if self.on_message is not None:
            await self.on_message(self, live, message)

    async def request(self, message: JSONRPCRequest, *, retry: bool,
                      timeout: float | None = None,
                      sent: Callable[[_Live, Any], None] | None = None) -> Answer:
        """Send ``message`` (its id is replaced by an upstream id) and return the answer, whose
        id is that upstream id. ``retry``: whether a request whose fate is unknown may be sent
        again. ``sent(live, upstream_id)`` is called each time it goes out."""
        sends, backoff, deadline = 0, 0.1, 0.0
        while True:
            try:
                live = await self.ensure()
            except UpstreamUnavailable:
                if sends == 0:
                    raise
                # Sending again after a lost connection: give a restarting upstream a moment.
                deadline = deadline or time.monotonic() + self.target.timeout
                if time.monotonic() >= deadline:
                    raise
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if sends == 3:
                raise UpstreamUnavailable(self.last_error or "the upstream keeps losing it")
            sends += 1
            message.id = next(_ids)
            waiter = _Waiter()
            live.pending[message.id] = waiter
            try:
                await live.write.send(SessionMessage(message, metadata=self._metadata))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                live.pending.pop(message.id, None)
                self.drop(live)
                continue  # not sent
            if sent is not None:
                sent(live, message.id)
            try:
                if timeout is None:
                    await waiter.event.wait()
                else:
                    with anyio.fail_after(timeout):
                        await waiter.event.wait()
            except TimeoutError as error:
                raise UpstreamUnavailable("the upstream server did not answer in time") from error
            finally:
                live.pending.pop(message.id, None)
            answer = waiter.answer
            if answer is _NOT_SENT:
                if sends == 1:
                    raise UpstreamUnavailable(live.error or "the upstream refused the connection")
                sends -= 1  # recovering from a lost session: it may still be starting again
                deadline = deadline or time.monotonic() + self.target.timeout
                if time.monotonic() >= deadline:
                    raise UpstreamUnavailable(live.error or "the upstream refused the connection")
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if answer is _LOST:
                if retry:
                    continue
                raise FateUnknown(live.error or "the upstream connection closed")
            if isinstance(answer, JSONRPCError) and self.target.not_processed(message.id):
                logger.info("the upstream lost session state (HTTP 404): initialising again")
                self.drop(live)
                continue  # never reached the upstream: safe to send on the new session
            return answer

    async def send(self, live: _Live | None, message: Any) -> None:
        """Send a notification or a response (to an upstream request) on ``live``, or on the
        current session when ``live`` is None; dropped when that session is gone."""
        target = live if live is not None else self._live
        if target is None or target.dead or (live is not None and target is not self._live):
            return
        try:
            await target.write.send(SessionMessage(message, metadata=self._metadata))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.drop(target)

    # ---- the tool list (live definitions for the decision) --------------------------------

    async def tools(self) -> list[dict[str, Any]]:
        """Every tool the upstream lists on this session, at most ``tools_ttl`` seconds old."""
        now = time.monotonic()
        if self._tools is not None and now - self._tools_at < self.tools_ttl:
            return self._tools
        listed, _ = await self.list_pages(now)
        return [t for t in listed if isinstance(t, dict)]

    async def list_pages(self, now: float) -> tuple[list[Any], bool]:
        generation = self._tools_generation
        listed: list[Any] = []
        cursor: str | None = None
        complete = False
        for _ in range(MAX_TOOL_PAGES):
            request = (JSONRPCRequest(jsonrpc="2.0", id=0, method="tools/list",
                                      params={"cursor": cursor}) if cursor else
                       JSONRPCRequest(jsonrpc="2.0", id=0, method="tools/list"))
            try:
                answer = await self.request(request, retry=True, timeout=self.target.timeout)
            except FateUnknown as error:  # not raised with retry=True; for completeness
                raise UpstreamUnavailable(str(error)) from error
            if isinstance(answer, JSONRPCError):
                raise UpstreamUnavailable(f"tools/list failed: {answer.error.message}")
            tools = answer.result.get("tools")
            listed.extend(tools if isinstance(tools, list) else [])
            cursor = answer.result.get("nextCursor")
            if not isinstance(cursor, str) or not cursor:
                complete = True
                break
        if generation == self._tools_generation:
            self._tools = [t for t in listed if isinstance(t, dict)]
            self._tools_at = now
        return listed, complete

    def note_tools(self, tools: Any) -> None:
        """A complete tools/list the agent asked for: the cache is as fresh as it gets."""
        if isinstance(tools, list):
            self._tools = [t for t in tools if isinstance(t, dict)]
            self._tools_at = time.monotonic()


def _notify(callback: Callable[[], None] | None, what: str) -> None:
    if callback is None:
        return
    try:
        callback()
    except Exception:  # a listener's failure must not break the upstream session
        logger.exception("the %s listener failed", what)


class Upstream:
    """The gateway's own upstream session (for discovery reports), re-opened with backoff."""

    def __init__(self, *, url: str | None = None, command: Sequence[str] | None = None,
                 headers: Mapping[str, str] | None = None, timeout: float = 30.0,
                 tools_ttl: float = 2.0, target: UpstreamTarget | None = None) -> None:
        self.target = target or UpstreamTarget(url=url, command=command, headers=headers,
                                               timeout=timeout)
        self.tools_ttl = tools_ttl
        self.on_ready: Callable[[], None] | None = None
        self.on_tools_changed: Callable[[], None] | None = None
        self.server_info: dict[str, str] | None = None
        self.last_error = ""
        self._connection: UpstreamConnection | None = None
        self._started = anyio.Event()

    async def run(self) -> None:
        """Keep the session open until cancelled."""
        backoff = 0.25
        async with anyio.create_task_group() as group:
            connection = UpstreamConnection(self.target, group, tools_ttl=self.tools_ttl)
            connection.on_ready = self._ready
            connection.on_tools_changed = lambda: _notify(self.on_tools_changed,
                                                          "tools/list_changed")
            connection.init_params = {"protocolVersion": LATEST_HANDSHAKE_VERSION,
                                      "capabilities": {}, "clientInfo": GATEWAY_CLIENT_INFO}
            self._connection = connection
            self._started.set()
            try:
                while True:
                    try:
                        live = await connection.ensure()
                        backoff = 0.25
                        await live.done.wait()
                    except UpstreamUnavailable as error:
                        self.last_error = str(error)
                        logger.warning("upstream MCP server connection failed: %s", error)
                    await anyio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
            finally:
                with anyio.CancelScope(shield=True):
                    await connection.close()

    def _ready(self) -> None:
        connection = self._connection
        info = (connection.initialize_result or {}).get("serverInfo") if connection else None
        if isinstance(info, dict):
            self.server_info = {"name": str(info.get("name", "")),
                                "version": str(info.get("version", ""))}
        self.last_error = ""
        _notify(self.on_ready, "upstream ready")

    async def _connected(self) -> UpstreamConnection:
        with anyio.move_on_after(self.target.timeout):
            await self._started.wait()
        if self._connection is None:
            raise UpstreamUnavailable("not connected")
        return self._connection

    async def tools(self) -> list[dict[str, Any]]:
        """Every tool the upstream lists (raw wire JSON), at most ``tools_ttl`` seconds old."""
        return await (await self._connected()).tools()

    async def list_tools(self) -> list[Any]:
        """A fresh ``tools/list``, every page concatenated, each tool exactly as the upstream
        sent it. Raises :class:`UpstreamUnavailable` when the upstream cannot be asked, or still
        has pages after ``MAX_TOOL_PAGES``: an incomplete list would report the missing tools as
        removed."""
        listed, complete = await (await self._connected()).list_pages(time.monotonic())
        if not complete:
            raise UpstreamUnavailable(f"tools/list still had more pages after {MAX_TOOL_PAGES}")
        return listed
