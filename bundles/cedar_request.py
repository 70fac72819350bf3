"""One call as a Cedar request: ``cedar_request`` builds the request and entities a gateway asks
``cedarpy.is_authorized`` about (against the policy and schema of bundles/cedar.py), and
``cedar_outcome`` reads its answer as allow, escalate or deny. Pure Python, no Django.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from bundles.cedar_values import (
    ACTION,
    APPROVAL_PREFIX,
    NAMESPACE,
    argument_names,
    cedar_value,
    is_utf8,
    limited_grants,
    time_zones,
    unix_seconds,
)
from gateway.decision import resolve_caller, tool_key

# Calls a grant's agent made (in the last minute, this day), by grant id.
Usage = Callable[[str], tuple[int, int]]


class CedarRequest(NamedTuple):
    """What ``cedarpy.is_authorized(request, policies, entities, schema=...)`` takes."""

    request: dict[str, Any]
    entities: list[dict[str, Any]]


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"type": f"{NAMESPACE}::{kind}", "id": name}


def cedar_request(
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
) -> CedarRequest | None:
    """The Cedar request and entities for one call; None when it is denied before Cedar.

    ``client_id``, ``actor`` and ``groups`` are the OAuth token's, as ``decide()`` takes them:
    the agent and the person it acts for are resolved the same way (``resolve_caller``)."""
    if at.tzinfo is None:
        raise ValueError("the call's time must be timezone-aware")
    agent, person = resolve_caller(data, issuer=issuer, subject=subject, client_id=client_id,
                                   actor=actor, groups=groups)
    if agent is None or agent not in data.get("agents", {}):
        return None
    if person is not None and not is_utf8(person["subject"]):
        return None  # Cedar cannot carry it: refuse rather than drop the person
    if not all(is_utf8(s) for s in (server, tool)):
        return None  # not a name data.json can hold; Cedar cannot carry it either
    key = tool_key(server, tool)
    pinned = data.get("tools", {}).get(key)
    servers = data.get("servers", {})
    attrs: dict[str, Any] = {"name": tool, "server": server}
    parents = [_ref("Server", server)] if server in servers else []
    if pinned is not None and server in servers:
        if pinned.get("server") != server or pinned.get("name") != tool:
            return None  # "<server>/<tool>" names another tool: refuse rather than guess
        attrs["definition_sha256"] = pinned["definition_sha256"]
        scopes = data.get("scopes", {})
        parents += [_ref("Scope", s) for s in sorted(scopes) if key in scopes[s]["tools"]]
    entities = [
        {"uid": _ref("Agent", agent), "attrs": {}, "parents": []},
        {"uid": _ref("Tool", key), "attrs": attrs, "parents": parents},
        *({"uid": p, "attrs": {}, "parents": []} for p in parents),
    ]

    arguments = arguments or {}
    context: dict[str, Any] = {
        "now": unix_seconds(at),
        "clock": {},
        "arguments": {
            name: cedar_value(arguments[name])
            for name in argument_names(data) if name in arguments
        },
    }
    for tz in time_zones(data):
        local = at.astimezone(ZoneInfo(tz))
        context["clock"][tz] = {"day": local.weekday(), "minute": local.hour * 60 + local.minute}
    if live_sha256 is not None:
        context["live_sha256"] = live_sha256
    if person is not None:
        # A group Cedar cannot carry is left out: the person then counts as not in it.
        context["on_behalf_of"] = {"subject": person["subject"], "groups": [
            g for g in person["groups"] if is_utf8(g)]}
    if usage is not None:
        limited = set(limited_grants(data))
        context["usage"] = {}
        for grant in data.get("grants", []):
            if grant["agent"] == agent and grant["id"] in limited:
                minute, day = usage(grant["id"])
                context["usage"][grant["id"]] = {"minute": int(minute), "day": int(day)}
    request = {
        "principal": _ref("Agent", agent),
        "action": _ref("Action", ACTION),
        "resource": _ref("Tool", key),
        "context": context,
    }
    return CedarRequest(request, entities)


def cedar_outcome(response: Any) -> str:
    """``"allow"``, ``"escalate"`` or ``"deny"`` from a cedarpy ``AuthzResult`` (or None)."""
    if response is None or not response.allowed or response.diagnostics.errors:
        return "deny"  # fail closed: a request the policy cannot evaluate cleanly is refused
    names = response.diagnostics.id_annotations_by_reason
    determining = [names.get(reason, "") for reason in response.diagnostics.reasons]
    if any(not ident.startswith(APPROVAL_PREFIX) for ident in determining):
        return "allow"
    return "escalate"
