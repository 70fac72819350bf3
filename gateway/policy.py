"""What the proxy decides: ``tools/list`` filtered, ``tools/call`` decided (and possibly held),
resources, prompts and completion forwarded only when the server's registration allows them.

Every decision (including the fail-closed ones) is handed to ``decision_sink(fields)`` with
``call_id``, ``timestamp``, ``agent``, ``principal`` (``{"issuer", "subject"}``), ``server``,
``tool``, ``arguments_sha256``, ``outcome``, ``reason``, ``grant``, ``bundle_revision`` and
``escalation_id``. A held call gives two: ``escalate`` when its escalation is attached, then
``allow`` or ``deny`` when the human's decision is known (same ``call_id``). A resource, prompt
or completion request gives one, with ``tool`` = the method (``resources/read``) and ``target``
= what it names (the resource URI, the prompt's name, the completion's reference).

Pure Python, no Django.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from gateway.canonical import definition_sha256
from gateway.counters import MINUTE, Counters
from gateway.decision import (
    ALLOW,
    DENY,
    ESCALATE,
    FEATURE_OF_METHOD,
    Decision,
    decide,
    decide_feature,
    find_agent,
    forwarded_features,
    parse_instant,
    tool_key,
)
from gateway.escalations import PENDING, Escalations, HeldCall
from gateway.identity import Principal
from gateway.receipts import arguments_sha256
from gateway.upstream import UpstreamUnavailable
from gateway.verify import VerifiedBundle

logger = logging.getLogger(__name__)

DecisionSink = Callable[[dict[str, Any]], Awaitable[None] | None]
NO_BUNDLE_REASON = "no valid policy bundle (none received yet, or it expired): failing closed"
ESCALATION_META = "tollgate/escalation"
CAPABILITY_OF_FEATURE = {"resources": "resources", "prompts": "prompts",
                         "completion": "completions"}


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


def live_sha256(tool: Mapping[str, Any]) -> str:
    try:
        return definition_sha256(tool)
    except ValueError:
        return "malformed"  # never equals a pinned hash: refused as drifted


def tool_error(text: str, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """An MCP tool result with ``isError: true`` (a refusal the agent reads)."""
    result: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": True}
    if meta is not None:
        result["_meta"] = meta
    return result


class ToolSession(Protocol):
    """What a decision needs of the agent's upstream session."""

    async def tools(self) -> list[dict[str, Any]]: ...

    async def forward(self, idempotent: bool) -> Any: ...


class Policy:
    """Decisions on the calls of one upstream server, for every agent session."""

    def __init__(self, *, bundle_source: Callable[[], VerifiedBundle | None], server_name: str,
                 counters: Counters, decision_sink: DecisionSink | None,
                 escalations: Escalations | None = None) -> None:
        self.bundle_source = bundle_source
        self.escalations = escalations
        self.server_name = server_name
        self.counters = counters
        self.decision_sink = decision_sink

    # ---- tools/list -----------------------------------------------------------------------

    def filter_tools(self, principal: Principal, tools: Any) -> list[dict[str, Any]]:
        bundle = self.bundle_source()
        if bundle is None or not isinstance(tools, list):
            return []
        at = datetime.now(UTC)
        return [
            tool for tool in tools
            if isinstance(tool, dict) and isinstance(tool.get("name"), str) and listable(
                bundle.data, **principal.caller(),
                server=self.server_name, tool=tool["name"], at=at,
                live_sha256=live_sha256(tool))
        ]

    # ---- resources, prompts, completion ---------------------------------------------------

    def features(self) -> set[str]:
        bundle = self.bundle_source()
        return forwarded_features(None if bundle is None else bundle.data, self.server_name)

    async def feature(self, principal: Principal, method: str,
                      params: Mapping[str, Any] | None) -> Decision:
        """Decide (and log) one resources/prompts/completion request."""
        params = {k: v for k, v in (params or {}).items() if k != "_meta"}
        target = params.get("uri") or params.get("name")
        if method == "completion/complete" and isinstance(params.get("ref"), dict):
            ref = params["ref"]
            target = ref.get("uri") or ref.get("name")
        event: dict[str, Any] = {
            "call_id": uuid.uuid4().hex,
            "principal": {"issuer": principal.issuer, "subject": principal.subject},
            "server": self.server_name, "tool": method,
            "arguments_sha256": arguments_sha256(params),
        }
        if isinstance(target, str):
            event["target"] = target
        bundle = self.bundle_source()
        if bundle is None:
            decision = Decision(DENY, NO_BUNDLE_REASON)
        else:
            decision = decide_feature(bundle.data, **principal.caller(),
                                      server=self.server_name,
                                      feature=FEATURE_OF_METHOD[method], at=datetime.now(UTC))
        await self.record(event, decision, bundle)
        return decision

    # ---- tools/call -----------------------------------------------------------------------

    async def call_tool(self, principal: Principal, name: str, arguments: dict[str, Any],
                        session: ToolSession) -> Any:
        """The agent's tools/call: a tool error (dict) that says why, or the upstream's answer
        (``session.forward``)."""
        event: dict[str, Any] = {
            "call_id": uuid.uuid4().hex,
            "principal": {"issuer": principal.issuer, "subject": principal.subject},
            "server": self.server_name,
            "tool": name,
            "arguments_sha256": arguments_sha256(arguments),
        }
        bundle = self.bundle_source()
        if bundle is None:
            decision = Decision(DENY, NO_BUNDLE_REASON)
            await self.record(event, decision, None)
            return tool_error(f"denied by Tollgate: {decision.reason}")
        decision = await self._decide(bundle, principal, name, arguments, session)
        if decision.outcome == ESCALATE and self.escalations is not None:
            return await self._hold(self.escalations, event, decision, bundle, principal,
                                    name, arguments, session)
        if decision.outcome == ALLOW:
            decision = await self._reserve(bundle, decision)
        await self.record(event, decision, bundle)
        if decision.outcome == ESCALATE:
            return tool_error(f"approval required: {decision.reason} (this gateway has no "
                              f"escalation channel)")
        if decision.outcome != ALLOW:
            return tool_error(f"denied by Tollgate: {decision.reason}")
        return await session.forward(self.idempotent(bundle, name))

    def idempotent(self, bundle: VerifiedBundle, name: str) -> bool:
        """Whether the tool is annotated ``idempotentHint: true`` as pinned in the bundle."""
        pinned = bundle.data.get("tools", {}).get(tool_key(self.server_name, name)) or {}
        annotations = pinned.get("annotations")
        return isinstance(annotations, dict) and annotations.get("idempotentHint") is True

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
                    arguments: dict[str, Any], session: ToolSession) -> Any:
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
            await self.record(dict(event), decision, bundle, escalation_id)

        async def recheck() -> str | None:
            """Refused now? (The bundle may have changed while the call was held.) If not, the
            call is counted against its grant before the approval is spent."""
            current = self.bundle_source()
            if current is None:
                return NO_BUNDLE_REASON
            again = await self._decide(current, principal, name, arguments, session)
            if again.outcome == DENY:
                return again.reason
            reserved = await self._reserve(current, again)
            return reserved.reason if reserved.outcome == DENY else None

        outcome = await escalations.hold(held, attached=attached, recheck=recheck)
        if not logged:
            await attached(outcome.escalation_id)
        if outcome.status == PENDING:
            return tool_error(f"pending approval: {outcome.reason}", {ESCALATION_META: {
                "id": outcome.escalation_id, "status": PENDING,
                "expires_at": outcome.expires_at}})
        final = Decision(ALLOW if outcome.approved else DENY, outcome.reason, decision.grant,
                         decision.agent)
        current = self.bundle_source() or bundle
        await self.record(dict(event), final, current, outcome.escalation_id)
        if not outcome.approved:
            return tool_error(f"denied by Tollgate: {outcome.reason}", {ESCALATION_META: {
                "id": outcome.escalation_id, "status": outcome.status}})
        return await session.forward(self.idempotent(current, name))

    async def _decide(self, bundle: VerifiedBundle, principal: Principal, name: str,
                      arguments: dict[str, Any], session: ToolSession) -> Decision:
        data = bundle.data
        try:
            tools = await session.tools()
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
            live_sha256=None if live is None else live_sha256(live),
            usage=lambda gid: counts.get(f"{bundle.tenant}:{gid}", (0, 0)),
        )
        if live is None and decision.outcome != DENY:
            key = tool_key(self.server_name, name)
            return Decision(DENY, f"tool {key} is not offered by the upstream server",
                            agent=decision.agent)
        return decision

    async def record(self, event: dict[str, Any], decision: Decision,
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
