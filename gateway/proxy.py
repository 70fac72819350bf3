"""The reference gateway's MCP proxy: enforce a verified bundle on real MCP traffic.

One proxy stands in front of ONE upstream MCP server (streamable HTTP URL or stdio command),
known in the bundle by ``server_name`` (a key of data.json ``servers``). Agents speak streamable
HTTP to the proxy with ``Authorization: Bearer <credential>``:

- No, unknown or invalid credential → HTTP 401 before any MCP message is read.
- ``tools/list``: the upstream's tools (every page), keeping only those the agent may call
  under the current bundle (:func:`listable`): the agent is active, the server active, the tool
  approved with the live definition equal to the pinned one, and an unexpired grant of the
  agent covers it. Argument constraints, time windows, rates and approvals are per call.
- ``tools/call``: the decision function (``gateway.decision.decide``) with the SHA-256 of the
  upstream's CURRENT definition of the tool (``gateway.canonical``; a tools/list no older than
  ``tools_ttl`` seconds) as ``live_sha256``, so a drifted tool is refused at the edge, and the
  grant's calls in this minute / today as ``usage`` (``gateway.counters``).
  ``allow`` → the call is counted — atomically, so concurrent calls (on several replicas with
  Redis) cannot overshoot a limit: the one that finds it full is refused — and forwarded; the
  upstream's result goes back as it came.
  ``deny`` → an MCP tool error (``isError: true``) that says why.
  ``escalate`` → the call is held (``gateway.escalations``): an escalation is created (or the
  same call's pending one re-attached) and long-polled; once a human approves, the decision is
  taken again over the then-current bundle (a grant revoked during the hold still refuses), the
  receipt is verified and spent, and the call is forwarded once. A denial or expiry is a tool
  error that says why; a hold that reaches its maximum is a *pending* tool error carrying
  ``_meta["tollgate/escalation"]`` (``id``, ``status``, ``expires_at``): calling again with the
  same arguments re-attaches. Without an escalation channel: ``approval required: <reason>``.
- No bundle (none yet, or the last one expired: ``bundle_source()`` returns None) → fail
  closed: ``tools/list`` is empty and every ``tools/call`` is refused.

Every decision (including the fail-closed ones) is handed to ``decision_sink(fields)`` with
``call_id``, ``timestamp``, ``agent``, ``principal`` (``{"issuer", "subject"}``), ``server``,
``tool``, ``arguments_sha256``, ``outcome``, ``reason``, ``grant``, ``bundle_revision``,
``escalation_id`` and ``on_behalf_of`` (the person of a delegated call, or None). A held
call gives two: ``escalate`` when its escalation is attached, then ``allow`` or ``deny``
when the human's decision is known (same ``call_id``).

Entry point: :func:`build_app` returns an ASGI application (run it with uvicorn). The upstream
connection is opened by the application's lifespan and re-opened (with backoff) when it breaks.
The upstream's ``notifications/tools/list_changed`` drops the cached tool list at once; it and
each (re)initialised session are passed on (``Upstream.on_tools_changed`` / ``on_ready``) to the
discovery reporter (``gateway/discovery.py``), which lists every page with ``list_tools()``.
Pure Python on the official ``mcp`` SDK, no Django.
"""

from __future__ import annotations

import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx2
import mcp_types
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from pydantic import TypeAdapter

from gateway.canonical import definition_sha256
from gateway.counters import MINUTE, Counters, MemoryCounters
from gateway.decision import (
    ALLOW,
    DENY,
    ESCALATE,
    Decision,
    decide,
    find_agent,
    parse_instant,
    tool_key,
)
from gateway.escalations import PENDING, Escalations, HeldCall
from gateway.identity import Identities, Principal, bearer_credential
from gateway.receipts import arguments_sha256
from gateway.verify import VerifiedBundle

logger = logging.getLogger(__name__)

DecisionSink = Callable[[dict[str, Any]], Awaitable[None] | None]
NO_BUNDLE_REASON = "no valid policy bundle (none received yet, or it expired): failing closed"
PRINCIPAL_STATE_KEY = "tollgate_principal"
ESCALATION_META = "tollgate/escalation"
MAX_TOOL_PAGES = 100
_RAW = TypeAdapter(dict[str, Any])
_CLIENT_INFO = mcp_types.Implementation(name="tollgate-gateway", version="1.0")


class UpstreamUnavailable(Exception):
    """The upstream MCP server cannot be reached right now."""


# --------------------------------------------------------------------------------------------
# Listing rule (pure)
# --------------------------------------------------------------------------------------------


def listable(data: Mapping[str, Any], *, issuer: str, subject: str, server: str, tool: str,
             at: datetime, live_sha256: str | None, **caller: Any) -> bool:
    """Whether ``tools/list`` shows the tool to this principal.

    Everything ``decide`` checks before the grants (agent, server, approved tool, live hash),
    plus: an unexpired grant of the agent whose scope holds the tool. What depends on the call
    (arguments, time window, rate, approval) is left to ``tools/call``.
    """
    decision = decide(data, issuer=issuer, subject=subject, server=server, tool=tool,
                      arguments={}, at=at, live_sha256=live_sha256, **caller)
    if decision.outcome != DENY:
        return True
    if decision.grant is None:  # refused before any grant was looked at, or no grant covers it
        return False
    key = tool_key(server, tool)
    return any(
        grant["agent"] == decision.agent
        and key in data["scopes"][grant["scope"]]["tools"]
        and (grant["expires_at"] is None or parse_instant(grant["expires_at"]) > at)
        for grant in data["grants"]
    )


# --------------------------------------------------------------------------------------------
# The upstream connection
# --------------------------------------------------------------------------------------------


class Upstream:
    """One long-lived MCP client session to the upstream server, re-opened when it breaks."""

    def __init__(self, *, url: str | None, command: Sequence[str] | None,
                 headers: Mapping[str, str] | None = None, timeout: float = 30.0,
                 tools_ttl: float = 2.0) -> None:
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
        self.tools_ttl = tools_ttl
        self.last_error = ""
        # Called (no arguments, must not block) after every successful initialize, and on every
        # notifications/tools/list_changed: the gateway's discovery reporter (gateway.discovery).
        self.on_ready: Callable[[], None] | None = None
        self.on_tools_changed: Callable[[], None] | None = None
        self.server_info: dict[str, str] | None = None  # name and version from initialize
        self._session: ClientSession | None = None
        self._ready = anyio.Event()
        self._broken = anyio.Event()
        self._tools: list[dict[str, Any]] | None = None
        self._tools_at = 0.0
        self._tools_generation = 0  # bumped by list_changed: a listing begun before is stale

    @asynccontextmanager
    async def _streams(self) -> AsyncIterator[tuple[Any, Any]]:
        if self.command is not None:
            params = StdioServerParameters(command=self.command[0], args=self.command[1:])
            async with stdio_client(params) as streams:
                yield streams
            return
        client = create_mcp_http_client(headers=self.headers,
                                        timeout=httpx2.Timeout(self.timeout))
        async with client, streamable_http_client(str(self.url), http_client=client) as streams:
            yield streams

    async def run(self) -> None:
        """Keep a session open until cancelled (run it in the application's task group)."""
        backoff = 0.25
        while True:
            try:
                async with self._streams() as (read, write), ClientSession(
                    read, write, client_info=_CLIENT_INFO, message_handler=self._on_message
                ) as session:
                    with anyio.fail_after(self.timeout):
                        initialized = await session.initialize()
                    info = initialized.server_info
                    self.server_info = {"name": info.name, "version": info.version}
                    self._session = session
                    self.last_error = ""
                    self._ready.set()
                    backoff = 0.25
                    _notify(self.on_ready, "upstream ready")
                    await self._broken.wait()
            except Exception as error:  # noqa: BLE001 - any failure: log it, reconnect
                self.last_error = f"{type(error).__name__}: {error}"
                logger.warning("upstream MCP server connection failed: %s", self.last_error)
            finally:
                self._session = None
                self._tools = None
                if self._ready.is_set():
                    self._ready = anyio.Event()
                self._broken = anyio.Event()
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    async def request(self, request: Any) -> dict[str, Any]:
        """Send one request on the session; the raw JSON result."""
        ready = self._ready
        with anyio.move_on_after(self.timeout):
            await ready.wait()
        session = self._session
        if session is None:
            raise UpstreamUnavailable(self.last_error or "not connected")
        try:
            with anyio.fail_after(self.timeout):
                return await session.send_request(request, _RAW)
        except MCPError as error:
            if error.code == mcp_types.CONNECTION_CLOSED:
                self._broken.set()
                raise UpstreamUnavailable(error.message) from error
            raise
        except TimeoutError as error:
            raise UpstreamUnavailable("the upstream server did not answer in time") from error
        except (httpx2.TransportError, anyio.ClosedResourceError,
                anyio.BrokenResourceError) as error:
            self._broken.set()
            raise UpstreamUnavailable(f"{type(error).__name__}: {error}") from error

    async def tools(self) -> list[dict[str, Any]]:
        """Every tool the upstream lists (raw wire JSON), at most ``tools_ttl`` seconds old."""
        now = time.monotonic()
        if self._tools is not None and now - self._tools_at < self.tools_ttl:
            return self._tools
        listed, _ = await self._list_pages(now)
        return [t for t in listed if isinstance(t, dict)]

    async def list_tools(self) -> list[Any]:
        """A fresh ``tools/list``, every page concatenated, each tool exactly as the upstream sent
        it (for discovery reports). Raises :class:`UpstreamUnavailable` when the upstream cannot
        be asked, or still has pages after ``MAX_TOOL_PAGES``: an incomplete list would report
        the missing tools as removed."""
        listed, complete = await self._list_pages(time.monotonic())
        if not complete:
            raise UpstreamUnavailable(f"tools/list still had more pages after {MAX_TOOL_PAGES}")
        return listed

    async def _list_pages(self, now: float) -> tuple[list[Any], bool]:
        """(every tool of up to ``MAX_TOOL_PAGES`` pages, whether the last page was the end);
        refreshes the cache unless the list changed meanwhile."""
        generation = self._tools_generation
        listed: list[Any] = []
        cursor: str | None = None
        complete = False
        for _ in range(MAX_TOOL_PAGES):
            params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await self.request(mcp_types.ListToolsRequest(params=params))
            tools = page.get("tools")
            listed.extend(tools if isinstance(tools, list) else [])
            cursor = page.get("nextCursor")
            if not isinstance(cursor, str) or not cursor:
                complete = True
                break
        if generation == self._tools_generation:
            self._tools = [t for t in listed if isinstance(t, dict)]
            self._tools_at = now
        return listed, complete

    async def _on_message(self, message: Any) -> None:
        """The session's server notifications: a changed tool list invalidates the cached one
        (so a drifted tool is refused at once) and is passed on."""
        if isinstance(message, mcp_types.ToolListChangedNotification):
            self._tools, self._tools_generation = None, self._tools_generation + 1
            _notify(self.on_tools_changed, "tools/list_changed")


def _notify(callback: Callable[[], None] | None, what: str) -> None:
    if callback is None:
        return
    try:
        callback()
    except Exception:  # a listener's failure must not break the upstream session
        logger.exception("the %s listener failed", what)


# --------------------------------------------------------------------------------------------
# The proxy
# --------------------------------------------------------------------------------------------


def _live_sha256(tool: Mapping[str, Any]) -> str:
    try:
        return definition_sha256(tool)
    except ValueError:
        return "malformed"  # never equals a pinned hash: refused as drifted


def _tool_error(text: str, meta: dict[str, Any] | None = None) -> mcp_types.CallToolResult:
    return mcp_types.CallToolResult(content=[mcp_types.TextContent(type="text", text=text)],
                                    is_error=True, _meta=meta)


class Proxy:
    """The MCP handlers: policy on tools/list and tools/call, forwarding to the upstream."""

    def __init__(self, *, bundle_source: Callable[[], VerifiedBundle | None], server_name: str,
                 upstream: Upstream, counters: Counters,
                 decision_sink: DecisionSink | None,
                 escalations: Escalations | None = None) -> None:
        self.bundle_source = bundle_source
        self.escalations = escalations
        self.server_name = server_name
        self.upstream = upstream
        self.counters = counters
        self.decision_sink = decision_sink

    @staticmethod
    def principal(ctx: ServerRequestContext[Any, Any]) -> Principal:
        request = ctx.request
        state = getattr(request, "scope", {}).get("state") or {}
        principal = state.get(PRINCIPAL_STATE_KEY)
        if not isinstance(principal, Principal):  # the auth middleware always sets it
            raise MCPError(code=mcp_types.INVALID_REQUEST, message="unauthenticated")
        return principal

    async def list_tools(self, ctx: ServerRequestContext[Any, Any],
                         params: mcp_types.PaginatedRequestParams | None) -> dict[str, Any]:
        principal = self.principal(ctx)
        bundle = self.bundle_source()
        if bundle is None:
            return {"tools": []}
        try:
            tools = await self.upstream.tools()
        except UpstreamUnavailable as error:
            raise MCPError(code=mcp_types.INTERNAL_ERROR,
                           message=f"upstream MCP server unavailable: {error}") from error
        at = datetime.now(UTC)
        shown = [
            tool for tool in tools
            if isinstance(tool.get("name"), str) and listable(
                bundle.data, **principal.caller(),
                server=self.server_name, tool=tool["name"], at=at,
                live_sha256=_live_sha256(tool))
        ]
        return {"tools": shown}

    async def call_tool(self, ctx: ServerRequestContext[Any, Any],
                        params: mcp_types.CallToolRequestParams) -> Any:
        principal = self.principal(ctx)
        arguments = dict(params.arguments or {})
        event: dict[str, Any] = {
            "call_id": uuid.uuid4().hex,
            "principal": {"issuer": principal.issuer, "subject": principal.subject},
            "server": self.server_name,
            "tool": params.name,
            "arguments_sha256": arguments_sha256(arguments),
        }
        bundle = self.bundle_source()
        if bundle is None:
            decision = Decision(DENY, NO_BUNDLE_REASON)
            await self._record(event, decision, None)
            return _tool_error(f"denied by Tollgate: {decision.reason}")
        decision = await self._decide(bundle, principal, params.name, arguments)
        if decision.outcome == ESCALATE and self.escalations is not None:
            return await self._hold(self.escalations, event, decision, bundle, principal,
                                    params.name, arguments)
        if decision.outcome == ALLOW:
            decision = await self._reserve(bundle, decision)
        await self._record(event, decision, bundle)
        if decision.outcome == ESCALATE:
            return _tool_error(f"approval required: {decision.reason} (this gateway has no "
                               f"escalation channel)")
        if decision.outcome != ALLOW:
            return _tool_error(f"denied by Tollgate: {decision.reason}")
        return await self._forward(params.name, arguments)

    async def _reserve(self, bundle: VerifiedBundle, decision: Decision) -> Decision:
        """Take one call of the deciding grant's rate and quota, atomically (``counters``): a
        concurrent call that took the last one since ``_decide`` read the counts wins."""
        if decision.grant is None:
            return decision
        grant = next((g for g in bundle.data.get("grants", [])
                      if str(g.get("id")) == str(decision.grant)), {})
        per_minute, per_day = grant.get("calls_per_minute"), grant.get("calls_per_day")
        full = await self.counters.reserve(f"{bundle.tenant}:{decision.grant}",
                                           datetime.now(UTC), per_minute=per_minute,
                                           per_day=per_day)
        if full is None:
            return decision
        reason = (f"grant {decision.grant}: rate limit {per_minute}/minute reached"
                  if full == MINUTE else f"grant {decision.grant}: quota {per_day}/day reached")
        return Decision(DENY, reason, decision.grant, decision.agent)

    async def _hold(self, escalations: Escalations, event: dict[str, Any], decision: Decision,
                    bundle: VerifiedBundle, principal: Principal, name: str,
                    arguments: dict[str, Any]) -> mcp_types.CallToolResult | dict[str, Any]:
        """An escalated call: held until a human decides or the hold's maximum."""
        held = HeldCall(issuer=principal.issuer, subject=principal.subject,
                        agent=decision.agent or "", server=self.server_name, tool=name,
                        arguments=arguments, arguments_sha256=event["arguments_sha256"],
                        reason=decision.reason, bundle_revision=bundle.revision_number,
                        on_behalf_of=decision.on_behalf_of)
        logged = False

        async def attached(escalation_id: str | None) -> None:
            nonlocal logged
            logged = True
            await self._record(dict(event), decision, bundle, escalation_id)

        async def recheck() -> str | None:
            """Refused now? (The bundle may have changed while the call was held.) If not, the
            call is counted against its grant before the approval is spent."""
            current = self.bundle_source()
            if current is None:
                return NO_BUNDLE_REASON
            again = await self._decide(current, principal, name, arguments)
            if again.outcome == DENY:
                return again.reason
            reserved = await self._reserve(current, again)
            return reserved.reason if reserved.outcome == DENY else None

        outcome = await escalations.hold(held, attached=attached, recheck=recheck)
        if not logged:
            await attached(outcome.escalation_id)
        if outcome.status == PENDING:
            return _tool_error(f"pending approval: {outcome.reason}", {ESCALATION_META: {
                "id": outcome.escalation_id, "status": PENDING,
                "expires_at": outcome.expires_at}})
        final = Decision(ALLOW if outcome.approved else DENY, outcome.reason, decision.grant,
                         decision.agent)
        await self._record(dict(event), final, self.bundle_source() or bundle,
                           outcome.escalation_id)
        if not outcome.approved:
            return _tool_error(f"denied by Tollgate: {outcome.reason}", {ESCALATION_META: {
                "id": outcome.escalation_id, "status": outcome.status}})
        return await self._forward(name, arguments)

    async def _forward(self, name: str,
                       arguments: dict[str, Any]) -> mcp_types.CallToolResult | dict[str, Any]:
        """Send the (allowed and counted) call to the upstream, once."""
        request = mcp_types.CallToolRequest(
            params=mcp_types.CallToolRequestParams(name=name, arguments=arguments))
        try:
            return await self.upstream.request(request)
        except UpstreamUnavailable as error:
            return _tool_error(f"the upstream MCP server is unavailable: {error}")

    async def _decide(self, bundle: VerifiedBundle, principal: Principal, name: str,
                      arguments: dict[str, Any]) -> Decision:
        data = bundle.data
        try:
            tools = await self.upstream.tools()
        except UpstreamUnavailable as error:
            return Decision(DENY, f"upstream MCP server unavailable: {error}",
                            agent=find_agent(data, **principal.caller()))
        live = next((t for t in tools if t.get("name") == name), None)
        agent = find_agent(data, **principal.caller())
        grant_ids = [g["id"] for g in data.get("grants", []) if agent and g["agent"] == agent]
        at = datetime.now(UTC)
        counts = await self.counters.usage([f"{bundle.tenant}:{g}" for g in grant_ids], at)
        decision = decide(
            data, **principal.caller(), server=self.server_name,
            tool=name, arguments=arguments, at=at,
            live_sha256=None if live is None else _live_sha256(live),
            usage=lambda gid: counts.get(f"{bundle.tenant}:{gid}", (0, 0)),
        )
        if live is None and decision.outcome != DENY:
            key = tool_key(self.server_name, name)
            return Decision(DENY, f"tool {key} is not offered by the upstream server",
                            agent=decision.agent)
        return decision

    async def _record(self, event: dict[str, Any], decision: Decision,
                      bundle: VerifiedBundle | None, escalation_id: str | None = None) -> None:
        event.update(
            escalation_id=escalation_id,
            timestamp=datetime.now(UTC).isoformat(),
            agent=decision.agent,
            outcome=decision.outcome,
            reason=decision.reason,
            grant=decision.grant,
            bundle_revision=None if bundle is None else bundle.revision_number,
            on_behalf_of=decision.on_behalf_of,
        )
        logger.info("decision %s %s/%s for %s: %s", decision.outcome, self.server_name,
                    event["tool"], decision.agent or event["principal"], decision.reason)
        if self.decision_sink is None:
            return
        try:
            result = self.decision_sink(event)
            if inspect.isawaitable(result):
                await result
        except Exception:  # a broken log pipeline must not change the decision
            logger.exception("the decision sink failed")


# --------------------------------------------------------------------------------------------
# HTTP: bearer authentication and the application
# --------------------------------------------------------------------------------------------


class BearerAuth:
    """ASGI middleware: 401 unless the bearer credential maps to a principal."""

    def __init__(self, app: Any, identities: Identities) -> None:
        self.app = app
        self.identities = identities

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope.get("headers") or []:
            if name.lower() == b"authorization":
                authorization = value.decode("latin-1")
                break
        credential = bearer_credential(authorization)
        principal = await self.identities.identify(credential) if credential else None
        if principal is None:
            error = "invalid_token" if credential else "invalid_request"
            body = (b'{"error":"%s","error_description":"a valid bearer credential is '
                    b'required"}' % error.encode())
            await send({"type": "http.response.start", "status": 401, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer realm="tollgate", error="%s"' % error.encode()),
            ]})
            await send({"type": "http.response.body", "body": body})
            return
        scope.setdefault("state", {})[PRINCIPAL_STATE_KEY] = principal
        await self.app(scope, receive, send)


def build_app(
    *,
    bundle_source: Callable[[], VerifiedBundle | None],
    server_name: str,
    upstream_url: str | None = None,
    upstream_cmd: list[str] | None = None,
    identities: Identities,
    counters: Counters | None = None,
    decision_sink: DecisionSink | None = None,
    escalations: Escalations | None = None,
    upstream_headers: Mapping[str, str] | None = None,
    upstream_timeout: float = 30.0,
    tools_ttl: float = 2.0,
    host: str = "127.0.0.1",
    path: str = "/mcp",
) -> Any:
    """The proxy as an ASGI application serving MCP streamable HTTP at ``path``.

    ``host`` is the address it will listen on (for a loopback address the SDK turns on DNS
    rebinding protection); ``tools_ttl`` is how long the upstream's tool list (hence the live
    definition hashes) may be reused, 0 for a fresh ``tools/list`` on every request.
    """
    upstream = Upstream(url=upstream_url, command=upstream_cmd, headers=upstream_headers,
                        timeout=upstream_timeout, tools_ttl=tools_ttl)
    proxy = Proxy(bundle_source=bundle_source, server_name=server_name, upstream=upstream,
                  counters=counters or MemoryCounters(), decision_sink=decision_sink,
                  escalations=escalations)
    server: Server[Any] = Server("tollgate-gateway", version="1.0",
                                 on_list_tools=proxy.list_tools, on_call_tool=proxy.call_tool)
    app = server.streamable_http_app(host=host, streamable_http_path=path)
    inner_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(starlette_app: Any) -> AsyncIterator[Any]:
        async with anyio.create_task_group() as group:
            group.start_soon(upstream.run)
            async with inner_lifespan(starlette_app) as state:
                yield state
            group.cancel_scope.cancel()

    app.router.lifespan_context = lifespan
    wrapped = BearerAuth(app, identities)
    wrapped.proxy = proxy  # type: ignore[attr-defined]  # for status pages and tests
    return wrapped
