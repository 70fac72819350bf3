"""One agent session relayed to its own upstream session, message by message.

Every JSON-RPC message passes through as the SDK's raw envelope — the agent's request ids are
replaced by upstream ids on the way up and put back on the way down, nothing else changes —
except what policy looks at:

- ``initialize`` opens the agent's upstream session with the agent's own parameters (client
  info, capabilities) and answers with the upstream's result, minus the capabilities of
  features the server's registration does not forward. If the upstream cannot be reached the
  gateway answers itself (tools only) and opens the upstream session on the next request.
- ``tools/list`` answers are filtered (``Policy.filter_tools``); ``tools/call`` is decided
  (``Policy.call_tool``), possibly held, and forwarded at most once unless the tool is pinned
  ``idempotentHint: true``: a non-idempotent call whose fate the gateway cannot know (the
  connection broke with it in flight) is a JSON-RPC error saying so.
- ``resources/*``, ``prompts/*`` and ``completion/complete`` are decided (``Policy.feature``)
  and forwarded only when the registration enables them; otherwise a JSON-RPC error
  ``DENIED`` that says why.

Notifications (progress — on the stream of the request whose ``progressToken`` it carries —,
``*/list_changed``, logging messages, cancellations) and server-to-client requests
(``sampling/createMessage``, ``elicitation/create``, ``roots/list``, ``ping``) are relayed in
both directions; the agent's answers go back to the upstream session that asked.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import anyio
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    ErrorData,
    JSONRPCError,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION

from gateway.decision import FEATURE_OF_METHOD, FEATURES
from gateway.identity import Principal
from gateway.policy import CAPABILITY_OF_FEATURE, Policy, tool_error
from gateway.upstream import (
    GATEWAY_CLIENT_INFO,
    FateUnknown,
    UpstreamConnection,
    UpstreamTarget,
    UpstreamUnavailable,
)

logger = logging.getLogger(__name__)

DENIED = -32003  # JSON-RPC error code of a refused resources/prompts/completion request
REQUEST_CANCELLED = -32800
FATE_UNKNOWN = (
    "the connection to the upstream MCP server was lost while tools/call {name} was in "
    "flight: the call may or may not have run, and Tollgate sends a call again only when the "
    "tool is annotated idempotent (idempotentHint). Check before calling again.")


def _error(code: int, message: str) -> JSONRPCError:
    return JSONRPCError(jsonrpc="2.0", id=None, error=ErrorData(code=code, message=message))


def _result(result: dict[str, Any]) -> JSONRPCResponse:
    return JSONRPCResponse(jsonrpc="2.0", id=0, result=result)


class AgentRelay:
    """One agent session (module docstring)."""

    def __init__(self, *, policy: Policy, target: UpstreamTarget, principal: Principal,
                 tools_ttl: float = 2.0) -> None:
        self.policy = policy
        self.target = target
        self.principal = principal
        self.tools_ttl = tools_ttl
        self.connection: UpstreamConnection | None = None
        self._write: Any = None
        self._tg: Any = None
        self._await_initialized = False
        self._scopes: dict[Any, anyio.CancelScope] = {}  # agent request id → its task
        self._sent: dict[Any, tuple[Any, Any]] = {}  # agent request id → (upstream live, id)
        self._progress: dict[Any, Any] = {}  # progressToken → agent request id
        self._asked: dict[str, tuple[Any, Any]] = {}  # our id of an upstream request → origin
        self._ask_ids = itertools.count(1)

    async def run(self, agent_read: Any, agent_write: Any) -> None:
        """Relay until the agent session ends; then the upstream session is closed."""
        self._write = agent_write
        async with anyio.create_task_group() as group:
            self._tg = group
            self.connection = UpstreamConnection(self.target, group, tools_ttl=self.tools_ttl,
                                                 on_message=self._from_upstream)
            try:
                async for item in agent_read:
                    if isinstance(item, Exception):
                        logger.debug("agent transport: %s", item)
                        continue
                    await self._from_agent(item.message)
            except (anyio.ClosedResourceError, anyio.EndOfStream):
                pass  # the agent ended the session (DELETE)
            finally:
                with anyio.CancelScope(shield=True):
                    await self.connection.close()
                group.cancel_scope.cancel()

    def _up(self) -> UpstreamConnection:
        if self.connection is None:
            raise RuntimeError("the relay is not running")
        return self.connection

    # ---- agent → upstream -----------------------------------------------------------------

    async def _from_agent(self, message: Any) -> None:
        connection = self._up()
        if isinstance(message, JSONRPCRequest):
            self._tg.start_soon(self._serve, message)
        elif isinstance(message, JSONRPCNotification):
            if message.method == "notifications/initialized":
                if self._await_initialized:  # the first session: the agent's own goes up
                    self._await_initialized = False
                    await connection.send(None, message)
                return
            if message.method == "notifications/cancelled":
                await self._cancelled(message)
                return
            await connection.send(None, message)
        else:  # the agent's answer to an upstream request
            origin = self._asked.pop(str(message.id), None)
            if origin is not None:
                live, upstream_id = origin
                message.id = upstream_id
                await connection.send(live, message)

    async def _cancelled(self, message: JSONRPCNotification) -> None:
        agent_id = (message.params or {}).get("requestId")
        sent = self._sent.get(agent_id)
        if sent is not None and self.connection is not None:
            live, upstream_id = sent
            params = {**(message.params or {}), "requestId": upstream_id}
            await self.connection.send(live, JSONRPCNotification(
                jsonrpc="2.0", method=message.method, params=params))
        scope = self._scopes.get(agent_id)
        if scope is not None:
            scope.cancel()

    async def _serve(self, message: JSONRPCRequest) -> None:
        agent_id = message.id
        meta = (message.params or {}).get("_meta")
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        if token is not None:
            self._progress[token] = agent_id
        reply: Any = None
        with anyio.CancelScope() as scope:
            self._scopes[agent_id] = scope
            try:
                reply = await self._answer(message)
            except Exception:  # never leave the agent without an answer
                logger.exception("relaying %s failed", message.method)
                reply = _error(INTERNAL_ERROR, "the gateway failed to relay this request")
        self._scopes.pop(agent_id, None)
        self._sent.pop(agent_id, None)
        if token is not None:
            self._progress.pop(token, None)
        if scope.cancelled_caught or reply is None:
            reply = _error(REQUEST_CANCELLED, "request cancelled")
        reply.id = agent_id
        await self._to_agent(reply)

    async def _answer(self, message: JSONRPCRequest) -> JSONRPCResponse | JSONRPCError:
        method = message.method
        if method == "initialize":
            return await self._initialize(message)
        if method == "tools/list":
            return await self._tools_list(message)
        if method == "tools/call":
            return await self._tools_call(message)
        if method in FEATURE_OF_METHOD:
            decision = await self.policy.feature(self.principal, method, message.params)
            if not decision.allowed:
                return _error(DENIED, f"denied by Tollgate: {decision.reason}")
        return await self._forward(message, retry=True)

    async def _send_up(self, message: JSONRPCRequest, *,
                       retry: bool) -> JSONRPCResponse | JSONRPCError:
        """Send the request up (again only if ``retry`` when its fate is unknown); raises
        UpstreamUnavailable and FateUnknown."""
        agent_id = message.id

        def sent(live: Any, upstream_id: Any) -> None:
            self._sent[agent_id] = (live, upstream_id)

        return await self._up().request(message, retry=retry, sent=sent)

    async def _forward(self, message: JSONRPCRequest, *,
                       retry: bool) -> JSONRPCResponse | JSONRPCError:
        try:
            return await self._send_up(message, retry=retry)
        except (UpstreamUnavailable, FateUnknown) as error:
            return _error(INTERNAL_ERROR, f"upstream MCP server unavailable: {error}")

    async def _initialize(self, message: JSONRPCRequest) -> JSONRPCResponse:
        params = dict(message.params or {})
        try:
            result = dict(await self._up().open(params, send_initialized=False))
            self._await_initialized = True
        except UpstreamUnavailable as error:
            logger.warning("upstream MCP server unavailable for a new agent session (answering "
                           "initialize for it): %s", error)
            asked = params.get("protocolVersion")
            result = {"protocolVersion": asked if asked in HANDSHAKE_PROTOCOL_VERSIONS
                      else LATEST_HANDSHAKE_VERSION,
                      "capabilities": {"tools": {"listChanged": True}},
                      "serverInfo": dict(GATEWAY_CLIENT_INFO)}
        capabilities = result.get("capabilities")
        if isinstance(capabilities, dict):
            enabled = self.policy.features()
            result["capabilities"] = {
                k: v for k, v in capabilities.items()
                if not any(k == CAPABILITY_OF_FEATURE[f] for f in FEATURES if f not in enabled)}
        return _result(result)

    async def _tools_list(self, message: JSONRPCRequest) -> JSONRPCResponse | JSONRPCError:
        if self.policy.bundle_source() is None:
            return _result({"tools": []})  # fail closed
        cursor = (message.params or {}).get("cursor")
        answer = await self._forward(message, retry=True)
        if isinstance(answer, JSONRPCResponse):
            tools = answer.result.get("tools")
            if not cursor and not answer.result.get("nextCursor") and self.connection:
                self.connection.note_tools(tools)
            answer.result = {**answer.result,
                             "tools": self.policy.filter_tools(self.principal, tools)}
        return answer

    async def _tools_call(self, message: JSONRPCRequest) -> JSONRPCResponse | JSONRPCError:
        params = message.params or {}
        name, arguments = params.get("name"), params.get("arguments") or {}
        if not isinstance(name, str) or not isinstance(arguments, dict):
            return _error(INVALID_PARAMS, "tools/call takes a tool name and an arguments object")
        reply = await self.policy.call_tool(self.principal, name, arguments,
                                            _CallSession(self, message, name))
        return _result(reply) if isinstance(reply, dict) else reply

    # ---- upstream → agent -----------------------------------------------------------------

    async def _from_upstream(self, connection: UpstreamConnection, live: Any,
                             message: Any) -> None:
        related = None
        if isinstance(message, JSONRPCRequest):
            ours = f"tollgate-{next(self._ask_ids)}"
            self._asked[ours] = (live, message.id)
            message.id = ours
            # On the stream of a request in flight (the agent's client listens there), else on
            # the session's own stream.
            related = next(reversed(self._scopes), None)
        else:
            method = message.method
            feature = method.split("/")[1] if method.count("/") >= 2 else ""
            if feature in ("resources", "prompts") and feature not in self.policy.features():
                return
            params = message.params or {}
            if method == "notifications/progress":
                related = self._progress.get(params.get("progressToken"))
            elif method == "notifications/cancelled":
                ours = next((k for k, v in self._asked.items()
                             if v == (live, params.get("requestId"))), None)
                if ours is None:
                    return
                message.params = {**params, "requestId": ours}
        await self._to_agent(message, related)

    async def _to_agent(self, message: Any, related: Any = None) -> None:
        metadata = None if related is None else ServerMessageMetadata(related_request_id=related)
        try:
            await self._write.send(SessionMessage(message, metadata=metadata))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            logger.debug("the agent session closed before a %s could be sent",
                         type(message).__name__)


class _CallSession:
    """What ``Policy.call_tool`` needs of the agent's upstream session, for one call."""

    def __init__(self, relay: AgentRelay, message: JSONRPCRequest, name: str) -> None:
        self.relay, self.message, self.name = relay, message, name

    async def tools(self) -> list[dict[str, Any]]:
        return await self.relay._up().tools()

    async def forward(self, idempotent: bool) -> Any:
        """The allowed (and counted) call, forwarded as the agent sent it."""
        agent_id = self.message.id
        try:
            return await self.relay._send_up(self.message, retry=idempotent)
        except FateUnknown as error:
            logger.warning("tools/call %s: the upstream connection broke with it in flight "
                           "(%s); not sent again", self.name, error)
            return _error(INTERNAL_ERROR, FATE_UNKNOWN.format(name=self.name))
        except UpstreamUnavailable as error:  # nothing was sent
            return tool_error(f"the upstream MCP server is unavailable: {error}")
        finally:
            self.message.id = agent_id
