"""The reference gateway's MCP proxy: enforce a verified bundle on real MCP traffic.

One proxy stands in front of ONE upstream MCP server (streamable HTTP URL or stdio command),
known in the bundle by ``server_name`` (a key of data.json ``servers``). Agents speak streamable
HTTP to the proxy with ``Authorization: Bearer <credential>``; no, unknown or invalid
credential → HTTP 401 before any MCP message is read (``gateway.sessions.BearerAuth``).

The proxy is transparent (``gateway.relay``): each agent session has its own upstream session
(``gateway.upstream``; for a stdio upstream, its own child process), opened with the agent's
``initialize`` parameters and re-initialised transparently when the upstream restarts or loses
it; every JSON-RPC message passes through unchanged except what policy looks at
(``gateway.policy``):

- ``tools/list``: the upstream's answer, keeping only the tools the agent may call under the
  current bundle (:func:`listable`): the agent is active, the server active, the tool approved
  with the live definition equal to the pinned one, and an unexpired grant of the agent covers
  it. Argument constraints, time windows, rates and approvals are per call.
- ``tools/call``: the decision function (``gateway.decision.decide``) with the SHA-256 of the
  upstream's CURRENT definition of the tool on the agent's session (``gateway.canonical``; a
  tools/list no older than ``tools_ttl`` seconds) as ``live_sha256``, so a drifted tool is
  refused at the edge, and the grant's calls in this minute / today as ``usage``
  (``gateway.counters``). ``allow`` → the call is counted — atomically, so concurrent calls (on
  several replicas with Redis) cannot overshoot a limit — and forwarded as the agent sent it
  (``_meta`` and progress token included); the upstream's answer goes back as it came. A call
  is sent at most once unless its tool is pinned ``idempotentHint: true``: when the connection
  breaks with a non-idempotent call in flight, the agent gets a JSON-RPC error saying its fate
  is unknown. ``deny`` → an MCP tool error (``isError: true``) that says why. ``escalate`` →
  the call is held (``gateway.escalations``) until a human decides; see ``gateway.policy``.
- ``resources/*``, ``prompts/*``, ``completion/complete``: forwarded only when the server's
  registration enables them (the bundle's optional ``forward`` list of the server); each is a
  logged decision.
- No bundle (none yet, or the last one expired: ``bundle_source()`` returns None) → fail
  closed: ``tools/list`` is empty and every call is refused.

Notifications and server-to-client requests (sampling, elicitation, roots) are relayed both
ways. Every decision is handed to ``decision_sink(fields)`` (fields: ``gateway.policy``).

Entry point: :func:`build_app` returns an ASGI application (run it with uvicorn). The gateway
also keeps its own upstream session (:class:`Upstream`, opened by the application's lifespan
and re-opened with backoff): its initialisation and the upstream's
``notifications/tools/list_changed`` are passed on (``on_ready`` / ``on_tools_changed``) to the
discovery reporter (``gateway/discovery.py``), which lists every page with ``list_tools()``.
Pure Python on the official ``mcp`` SDK, no Django.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.routing import Route

from gateway.counters import Counters, MemoryCounters
from gateway.escalations import Escalations
from gateway.identity import Identities
from gateway.policy import NO_BUNDLE_REASON, DecisionSink, Policy, listable
from gateway.relay import AgentRelay
from gateway.sessions import PRINCIPAL_STATE_KEY, AgentSessions, BearerAuth
from gateway.upstream import (
    MAX_TOOL_PAGES,
    FateUnknown,
    Upstream,
    UpstreamTarget,
    UpstreamUnavailable,
)
from gateway.verify import VerifiedBundle

__all__ = ["MAX_TOOL_PAGES", "NO_BUNDLE_REASON", "PRINCIPAL_STATE_KEY", "FateUnknown",
           "Gateway", "Upstream", "UpstreamUnavailable", "build_app", "listable"]

DEFAULT_MAX_SESSIONS = {"http": 1000, "stdio": 50}  # a stdio session is a child process


@dataclass
class Gateway:
    """What the application is made of (``app.proxy``), for the CLI, status pages and tests."""

    policy: Policy
    upstream: Upstream
    sessions: AgentSessions
    target: UpstreamTarget

    @property
    def escalations(self) -> Escalations | None:
        return self.policy.escalations


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
    max_sessions: int | None = None,
    session_idle_timeout: float | None = 1800.0,
) -> Any:
    """The proxy as an ASGI application serving MCP streamable HTTP at ``path``.

    ``host`` is the address it will listen on (for a loopback address DNS rebinding protection
    is on); ``tools_ttl`` is how long a session's tool list (hence the live definition hashes)
    may be reused, 0 for a fresh ``tools/list`` on every call; ``max_sessions`` bounds the
    agent sessions open at once (default 1000, or 50 for a stdio upstream: each is a child
    process); ``session_idle_timeout`` closes a session (and its upstream session) after that
    many seconds without a request.
    """
    target = UpstreamTarget(url=upstream_url, command=upstream_cmd, headers=upstream_headers,
                            timeout=upstream_timeout)
    upstream = Upstream(target=target, tools_ttl=tools_ttl)
    policy = Policy(bundle_source=bundle_source, server_name=server_name,
                    counters=counters or MemoryCounters(), decision_sink=decision_sink,
                    escalations=escalations)
    security = None
    if host in ("127.0.0.1", "localhost", "::1"):
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"])
    sessions = AgentSessions(
        relay_factory=lambda principal: AgentRelay(policy=policy, target=target,
                                                   principal=principal, tools_ttl=tools_ttl),
        security_settings=security, idle_timeout=session_idle_timeout,
        max_sessions=max_sessions or DEFAULT_MAX_SESSIONS["stdio" if target.stdio else "http"])

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with anyio.create_task_group() as group:
            group.start_soon(upstream.run)
            try:
                async with sessions.run():
                    yield
            finally:
                group.cancel_scope.cancel()
        await target.aclose()

    app = Starlette(routes=[Route(path, endpoint=sessions, methods=["GET", "POST", "DELETE"])],
                    lifespan=lifespan)
    wrapped = BearerAuth(app, identities)
    wrapped.proxy = Gateway(policy=policy, upstream=upstream, sessions=sessions,  # type: ignore[attr-defined]
                            target=target)
    return wrapped
