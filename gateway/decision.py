"""The decision function (DESIGN.md §4 "decision semantics") over a bundle's ``mcp/data.json``.

One function decides every call, for the reference gateway, the bundle tests and anything else
that needs to know what a bundle allows. A call — (principal, server, tool, arguments, time) —
is **denied** unless

1. the principal (issuer, subject) belongs to an agent of the bundle — or, for an OAuth token
   that acts for a person (below), the acting client does — and that agent is active;
2. the server is in the bundle and active, and the tool is one of its approved tools;
3. the live definition hash, when the caller knows it, equals the pinned one;
4. an active grant of that agent, unexpired at the call's time, is for a scope containing the
   tool, its time window includes the call's time, its argument constraints hold, its rate
   and quota (counted by the caller) are not exhausted, and, when it names an
   ``on_behalf_of_group``, the call is made on behalf of a person in that group.

**Delegation** (:func:`resolve_caller`): a token acts for a person when it says so with an
RFC 8693 ``act`` claim (the actor ``act.sub`` is the agent, ``sub`` the person), or when its
``sub`` is no agent's principal while its client (``azp``/``client_id``) is an agent's OAuth
client (data.json ``clients``: ``{issuer: {client id: agent}}``) and differs from ``sub``. The
person (``sub`` and the groups the token lists) is then an input of the decision and named in
the decision (``Decision.on_behalf_of``).

Among the grants that pass, one that needs no approval **allows** the call; otherwise the call
is **escalated** (a grant requires approval always, or when its condition matches the
arguments). Default deny, and the reason says which rule refused it.

Pure Python, no Django: ``gateway/`` is what a gateway vendor reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from gateway.constraints import matches, violations

ALLOW = "allow"
DENY = "deny"
ESCALATE = "escalate"

# The bundle's server entries name what besides tools is forwarded (``forward``, optional).
FEATURE_OF_METHOD = {
    "resources/list": "resources",
    "resources/templates/list": "resources",
    "resources/read": "resources",
    "resources/subscribe": "resources",
    "resources/unsubscribe": "resources",
    "prompts/list": "prompts",
    "prompts/get": "prompts",
    "completion/complete": "completion",
}
FEATURES = ("resources", "prompts", "completion")

# usage(grant_id) → (calls in the last minute, calls today) as the gateway counts them.
Usage = Callable[[str], tuple[int, int]]


@dataclass(frozen=True)
class Decision:
    """The outcome of one call, why, and the grant that decided it (if any)."""

    outcome: str
    reason: str
    grant: str | None = None
    agent: str | None = None
    # The person the agent acts for: {"subject": …, "groups": […]} (delegated calls only).
    on_behalf_of: Mapping[str, Any] | None = None

    @property
    def allowed(self) -> bool:
        return self.outcome == ALLOW


def tool_key(server: str, tool: str) -> str:
    """How data.json names a tool: ``<server name>/<tool name>``."""
    return f"{server}/{tool}"


def find_agent(data: Mapping[str, Any], issuer: str, subject: str,
               client_id: str | None = None, actor: str | None = None,
               groups: Sequence[str] = ()) -> str | None:
    """The name of the agent the principal identifies, or None."""
    return resolve_caller(data, issuer=issuer, subject=subject, client_id=client_id,
                          actor=actor, groups=groups)[0]


def resolve_caller(data: Mapping[str, Any], *, issuer: str, subject: str,
                   client_id: str | None = None, actor: str | None = None,
                   groups: Sequence[str] = ()) -> tuple[str | None, dict[str, Any] | None]:
    """(the agent's name or None, the person it acts for or None) — see the module's text.

    ``actor`` is the token's ``act.sub`` (RFC 8693), ``client_id`` its ``azp``/``client_id``,
    ``groups`` the person's groups as the token lists them. An ``act`` whose actor is no agent
    is an unknown principal: the subject is never taken as the agent instead."""
    principals = data.get("principals", {}).get(issuer, {})
    clients = data.get("clients", {}).get(issuer, {})
    if actor is not None:
        agent = principals.get(actor) or clients.get(actor)
        return (agent, _person(subject, groups)) if agent else (None, None)
    agent = principals.get(subject)
    if agent is not None:
        return agent, None
    if client_id is not None and client_id in clients:
        return clients[client_id], None if subject == client_id else _person(subject, groups)
    return None, None


def _person(subject: str, groups: Sequence[str]) -> dict[str, Any]:
    return {"subject": subject, "groups": sorted(set(groups))}


def parse_instant(value: str) -> datetime:
    """An RFC 3339 instant of a verified bundle's data (``Z`` or an offset)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _in_window(window: Mapping[str, Any] | None, at: datetime) -> bool:
    if not window:
        return True
    local = at.astimezone(ZoneInfo(window["tz"]))
    start, end = time.fromisoformat(window["start"]), time.fromisoformat(window["end"])
    now = local.time().replace(tzinfo=None)
    days = window.get("days") or []
    if start <= end:  # e.g. 08:00–18:00, the window's day is today
        return (not days or local.weekday() in days) and start <= now < end
    # Overnight, e.g. 22:00–06:00: after midnight the window belongs to the previous day.
    if now >= start:
        return not days or local.weekday() in days
    if now < end:
        return not days or (local.weekday() - 1) % 7 in days
    return False


def decide(
    data: Mapping[str, Any],
    *,
    issuer: str,
    subject: str,
    server: str,
    tool: str,
    arguments: Mapping[str, Any] | None,
    at: datetime,
    live_sha256: str | None = None,
    usage: Usage | None = None,
    client_id: str | None = None,
    actor: str | None = None,
    groups: Sequence[str] = (),
) -> Decision:
    """Decide one call against ``data`` (a parsed ``mcp/data.json``); ``at`` must be aware.

    ``client_id``, ``actor`` and ``groups`` come from a verified OAuth token (delegation,
    :func:`resolve_caller`); a delegated decision names the person in ``on_behalf_of``."""
    if at.tzinfo is None:
        raise ValueError("the call's time must be timezone-aware")
    agent_name, person = resolve_caller(data, issuer=issuer, subject=subject,
                                        client_id=client_id, actor=actor, groups=groups)
    decision = _decide(data, agent_name, person, server=server, tool=tool,
                       arguments=dict(arguments or {}), at=at, live_sha256=live_sha256,
                       usage=usage)
    return decision if person is None else replace(decision, on_behalf_of=person)


def _decide(data: Mapping[str, Any], agent_name: str | None, person: Mapping[str, Any] | None,
            *, server: str, tool: str, arguments: dict[str, Any], at: datetime,
            live_sha256: str | None, usage: Usage | None) -> Decision:
    if agent_name is None:
        return Decision(DENY, "unknown principal")
    agent = data["agents"][agent_name]
    if agent["status"] != "active":
        return Decision(DENY, f"agent {agent_name} is {agent['status']}", agent=agent_name)
    srv = data["servers"].get(server)
    if srv is None:
        return Decision(DENY, f"unknown server {server}", agent=agent_name)
    if srv["status"] != "active":
        return Decision(DENY, f"server {server} is {srv['status']}", agent=agent_name)
    key = tool_key(server, tool)
    pinned = data["tools"].get(key)
    if pinned is not None and (pinned["server"], pinned["name"]) != (server, tool):
        pinned = None  # "a/b" + "c" and "a" + "b/c" share a key: never let one stand for the other
    if pinned is None:
        withheld = data.get("withheld_tools", {}).get(key)
        if withheld is not None:
            return Decision(DENY, f"tool {key} is {withheld}", agent=agent_name)
        return Decision(DENY, f"tool {key} is not approved", agent=agent_name)
    if live_sha256 is not None and live_sha256 != pinned["definition_sha256"]:
        return Decision(DENY, f"tool {key} definition differs from the pinned one",
                        agent=agent_name)

    refusals: list[Decision] = []
    escalation: Decision | None = None
    for grant in data["grants"]:
        if grant["agent"] != agent_name:
            continue
        if key not in data["scopes"][grant["scope"]]["tools"]:
            continue
        gid = grant["id"]
        if grant["expires_at"] is not None and parse_instant(grant["expires_at"]) <= at:
            refusals.append(Decision(DENY, f"grant {gid} expired", gid, agent_name))
            continue
        if not _in_window(grant["window"], at):
            refusals.append(Decision(DENY, f"grant {gid}: outside its time window", gid,
                                     agent_name))
            continue
        group = grant.get("on_behalf_of_group")
        if group and person is None:
            refusals.append(Decision(DENY, f"grant {gid}: only on behalf of a member of "
                                     f"{group}, and the call is not made for a person", gid,
                                     agent_name))
            continue
        if group and group not in person["groups"]:
            refusals.append(Decision(DENY, f"grant {gid}: {person['subject']} is not in group "
                                     f"{group}", gid, agent_name))
            continue
        problems = violations(grant["argument_constraints"], tool, arguments)
        if problems:
            refusals.append(Decision(DENY, f"grant {gid}: argument {problems[0]}", gid,
                                     agent_name))
            continue
        if usage is not None:
            minute, day = usage(gid)
            if grant["calls_per_minute"] is not None and minute >= grant["calls_per_minute"]:
                refusals.append(Decision(DENY, f"grant {gid}: rate limit "
                                         f"{grant['calls_per_minute']}/minute reached", gid,
                                         agent_name))
                continue
            if grant["calls_per_day"] is not None and day >= grant["calls_per_day"]:
                refusals.append(Decision(DENY, f"grant {gid}: quota "
                                         f"{grant['calls_per_day']}/day reached", gid,
                                         agent_name))
                continue
        mode = grant["approval_mode"]
        needs_approval = mode == "always" or (
            mode == "when" and matches(grant["approval_condition"], tool, arguments)
        )
        if not needs_approval:
            return Decision(ALLOW, f"grant {gid}", gid, agent_name)
        if escalation is None:
            why = "always" if mode == "always" else "its condition matches"
            escalation = Decision(ESCALATE, f"grant {gid} requires approval ({why})", gid,
                                  agent_name)
    if escalation is not None:
        return escalation
    if refusals:
        return refusals[0]
    return Decision(DENY, f"no grant of {agent_name} covers {key}", agent=agent_name)


def forwarded_features(data: Mapping[str, Any] | None, server: str) -> set[str]:
    """The features besides tools the server's registration lets through (none by default)."""
    entry = (data or {}).get("servers", {}).get(server) or {}
    forward = entry.get("forward")
    return {f for f in forward if f in FEATURES} if isinstance(forward, list) else set()


def decide_feature(data: Mapping[str, Any], *, issuer: str, subject: str, server: str,
                   feature: str, at: datetime, client_id: str | None = None,
                   actor: str | None = None, groups: Sequence[str] = ()) -> Decision:
    """A resources/prompts/completion request: allowed when the agent is active, the server
    active and its registration forwards the feature, and a grant in force of the agent covers
    one of the server's tools (an agent with no access to the server reads none of it); a grant
    that requires the person the agent acts for to be in a group counts only for its members."""
    agent, person = resolve_caller(data, issuer=issuer, subject=subject, client_id=client_id,
                                   actor=actor, groups=groups)
    decision = _decide_feature(data, agent, person, server=server, feature=feature, at=at)
    return decision if person is None else replace(decision, on_behalf_of=person)


def _decide_feature(data: Mapping[str, Any], agent: str | None,
                    person: Mapping[str, Any] | None, *, server: str, feature: str,
                    at: datetime) -> Decision:
    if agent is None:
        return Decision(DENY, "unknown principal")
    status = data["agents"][agent]["status"]
    if status != "active":
        return Decision(DENY, f"agent {agent} is {status}", agent=agent)
    entry = data["servers"].get(server)
    if entry is None:
        return Decision(DENY, f"unknown server {server}", agent=agent)
    if entry["status"] != "active":
        return Decision(DENY, f"server {server} is {entry['status']}", agent=agent)
    if feature not in forwarded_features(data, server):
        return Decision(DENY, f"{feature} of server {server} are not forwarded (its "
                              f"registration does not enable them)", agent=agent)
    prefix = f"{server}/"
    for grant in data["grants"]:
        if grant["agent"] != agent:
            continue
        if grant["expires_at"] is not None and parse_instant(grant["expires_at"]) <= at:
            continue
        group = grant.get("on_behalf_of_group")
        if group and (person is None or group not in person["groups"]):
            continue
        tools = data["scopes"][grant["scope"]]["tools"]
        if any(key.startswith(prefix) and data["tools"].get(key, {}).get("server") == server
               for key in tools):
            return Decision(ALLOW, f"{feature} of server {server} forwarded (grant "
                                   f"{grant['id']})", grant["id"], agent)
    return Decision(DENY, f"no grant of {agent} covers server {server}", agent=agent)
