"""The agent-facing MCP endpoint: bearer authentication and streamable HTTP sessions.

Each agent session is the official SDK's ``StreamableHTTPServerTransport`` (SSE and JSON
responses, the GET stream, DELETE, DNS-rebinding protection) whose messages an
:class:`~gateway.relay.AgentRelay` carries to the agent's own upstream session. A session
belongs to the principal that opened it (a request for it with another principal gets 404, as
an unknown session); it ends on DELETE, or after ``idle_timeout`` seconds without a request in
flight — and its upstream session (for a stdio upstream: its child process) with it. At most
``max_sessions`` are open at once (503 beyond).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from uuid import uuid4

import anyio
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, StreamableHTTPServerTransport
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from gateway.identity import Identities, Principal, bearer_credential

logger = logging.getLogger(__name__)

PRINCIPAL_STATE_KEY = "tollgate_principal"
_SESSION_HEADER = MCP_SESSION_ID_HEADER.encode()
_VERSION_HEADER = MCP_PROTOCOL_VERSION_HEADER.lower().encode()


class BearerAuth:
    """ASGI middleware: 401 unless the request's credential maps to a principal, which it
    puts in ``scope["state"][PRINCIPAL_STATE_KEY]`` for the MCP endpoint."""

    def __init__(self, app: Any, identities: Identities) -> None:
        self.app = app
        self.identities = identities

    async def authenticate(self, scope: dict[str, Any]) -> tuple[Principal | None, bool]:
        """(the request's principal or None, whether it carried a credential at all)."""
        authorization = None
        for name, value in scope.get("headers") or []:
            if name.lower() == b"authorization":
                authorization = value.decode("latin-1")
                break
        credential = bearer_credential(authorization)
        principal = await self.identities.identify(credential) if credential else None
        return principal, credential is not None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        principal, had_credential = await self.authenticate(scope)
        if principal is None:
            error = "invalid_token" if had_credential else "invalid_request"
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


async def _json_error(send: Any, status: int, code: int, message: str) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": None,
                       "error": {"code": code, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class _Session:
    __slots__ = ("principal", "transport")

    def __init__(self, transport: StreamableHTTPServerTransport, principal: Principal) -> None:
        self.transport, self.principal = transport, principal


class AgentSessions:
    """The MCP endpoint (an ASGI app behind :class:`BearerAuth`); module docstring."""

    def __init__(self, *, relay_factory: Callable[[Principal], Any],
                 security_settings: TransportSecuritySettings | None,
                 idle_timeout: float | None, max_sessions: int) -> None:
        self.relay_factory = relay_factory
        self.security_settings = security_settings
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self._sessions: dict[str, _Session] = {}
        self._tg: Any = None

    def __len__(self) -> int:
        return len(self._sessions)

    @asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        async with anyio.create_task_group() as group:
            self._tg = group
            try:
                yield
            finally:
                group.cancel_scope.cancel()
                self._tg = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        principal = (scope.get("state") or {}).get(PRINCIPAL_STATE_KEY)
        if not isinstance(principal, Principal):  # BearerAuth always sets it
            await _json_error(send, 401, -32600, "unauthenticated")
            return
        if self._tg is None:
            await _json_error(send, 503, -32603, "the gateway is not running")
            return
        session_id = version = None
        for name, value in scope.get("headers") or []:
            if name == _SESSION_HEADER:
                session_id = value.decode("latin-1")
            elif name == _VERSION_HEADER:
                version = value.decode("latin-1")
        if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            await _json_error(send, 400, -32022, f"Unsupported protocol version: {version[:40]}")
            return
        if session_id is not None:
            session = self._sessions.get(session_id)
            if session is None or session.principal != principal:
                await _json_error(send, 404, -32600, "Session not found")
                return
            await session.transport.handle_request(scope, receive, send)
            if session.transport.is_terminated:
                await self._discard(session_id, session.transport)
            return
        if len(self._sessions) >= self.max_sessions:
            logger.warning("refusing a new agent session: %d are open", len(self._sessions))
            await _json_error(send, 503, -32603, "Too many open sessions")
            return
        transport = StreamableHTTPServerTransport(
            mcp_session_id=uuid4().hex, security_settings=self.security_settings,
            idle_timeout=self.idle_timeout)
        session_id = str(transport.mcp_session_id)
        self._sessions[session_id] = _Session(transport, principal)
        established = False
        try:
            await self._tg.start(self._serve, session_id, transport, principal)
            status: list[int] = []

            async def watch(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    status.append(message["status"])
                await send(message)

            await transport.handle_request(scope, receive, watch)
            established = bool(status) and status[0] < 400
        finally:
            if not established:
                await self._discard(session_id, transport)

    async def _serve(self, session_id: str, transport: StreamableHTTPServerTransport,
                     principal: Principal, *, task_status: Any = anyio.TASK_STATUS_IGNORED
                     ) -> None:
        try:
            async with transport.connect() as (read, write):
                task_status.started()
                idle = transport.idle_scope or anyio.CancelScope()
                with idle:
                    await self.relay_factory(principal).run(read, write)
                if idle.cancelled_caught:
                    logger.info("agent session %s idle: closed", session_id[:8])
        except Exception:
            logger.exception("agent session %s crashed", session_id[:8])
        finally:
            await self._discard(session_id, transport)

    async def _discard(self, session_id: str, transport: StreamableHTTPServerTransport) -> None:
        self._sessions.pop(session_id, None)
        if not transport.is_terminated:
            with anyio.CancelScope(shield=True):
                await transport.terminate()
