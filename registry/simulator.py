"""The policy simulator: "agent X calls tool T of server S with arguments A at time t" → the
outcome and reason of the one decision function (gateway/decision.py ``decide()``), against the
published bundle's ``mcp/data.json`` or against the registry as it stands (the draft: the
compiler's ``compile_data`` without publishing).

It lives in the registry because it names agents, servers and tools of the registry (an
unknown one is an error on its field, not a denial nobody can explain) and runs the registry's
compiler; the published bundle it reads from the bundles app below. Reads only: nothing is
stored and nothing is audited (a simulation changes nothing).

What a simulation cannot know, it says (``notes``): the rate and quota counters live in each
gateway, and the live definition hash is what the gateway sees on the upstream.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.utils import timezone

from bundles import diff
from bundles import selectors as bundle_selectors
from gateway.decision import DENY, Decision, decide, tool_key
from governance.tenancy.models import Tenant
from registry.compiler import compile_data
from registry.models import Agent, McpServer, Tool

BUNDLE = "bundle"
DRAFT = "draft"
POLICIES = {BUNDLE: "The published bundle", DRAFT: "The registry as it stands (draft)"}

ALWAYS_NOTES = (
    "Rates and quotas are not checked: their counters live in each gateway.",
    "The live definition hash is not checked: the gateway compares it with the upstream's.",
)


@dataclass
class Policy:
    """The data.json a simulation or a replay decides against, and what it is."""

    kind: str
    data: dict[str, Any]
    revision: int | None = None

    @property
    def label(self) -> str:
        if self.kind == BUNDLE:
            return f"bundle revision {self.revision}"
        return "the registry as it stands (draft)"


@dataclass
class Simulation:
    """One simulated call and what the decision function said about it."""

    policy: Policy
    agent: str
    server: str
    tool: str
    arguments: dict[str, Any]
    at: datetime
    decision: Decision
    principal: tuple[str, str] | None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.decision.outcome,
            "reason": self.decision.reason,
            "grant": self.decision.grant,
            "policy": self.policy.kind,
            "bundle_revision": self.policy.revision,
            "agent": self.agent,
            "principal": list(self.principal) if self.principal else None,
            "server": self.server,
            "tool": self.tool,
            "arguments": self.arguments,
            "at": self.at,
            "notes": self.notes,
        }


def policy_data(tenant: Tenant, kind: str, *, at: datetime | None = None) -> Policy:
    """The data.json of the current bundle (``bundle``) or the draft compiled now (``draft``);
    ValidationError on ``policy`` when there is none to read."""
    if kind == DRAFT:
        return Policy(DRAFT, compile_data(tenant, at=at or timezone.now()))
    if kind != BUNDLE:
        raise ValidationError({"policy": f"Choose one of: {', '.join(POLICIES)}."})
    state = bundle_selectors.publish_state(tenant)
    if state is None or state.current is None:
        raise ValidationError({"policy": "No bundle is published yet: simulate against the "
                                         "draft (the registry as it stands) instead."})
    try:
        data = bundle_selectors.bundle_data(state.current)
    except diff.BundleReadError as exc:
        raise ValidationError({"policy": f"The current bundle cannot be read: {exc}"}) from None
    return Policy(BUNDLE, data, state.current.revision_number)


def parse_arguments(value: Any) -> dict[str, Any]:
    """The call's arguments: a JSON object, given parsed or as JSON text (empty = ``{}``)."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValidationError({"arguments": f"Not valid JSON: {exc}."}) from None
    if not isinstance(value, dict):
        raise ValidationError({"arguments": "The arguments must be a JSON object, e.g. "
                                            '{"path": "/srv/files/a.txt"}.'})
    return value


def _check_names(tenant: Tenant, agent: str, server: str, tool: str) -> None:
    errors: dict[str, str] = {}
    if not Agent.objects.for_tenant(tenant).filter(name=agent).exists():
        errors["agent"] = f"No agent named {agent!r} in this tenant."
    srv = McpServer.objects.for_tenant(tenant).filter(name=server).first()
    if srv is None:
        errors["server"] = f"No MCP server named {server!r} in this tenant."
    elif not Tool.objects.for_tenant(tenant).filter(server=srv, name=tool).exists():
        errors["tool"] = f"Server {server!r} has no tool named {tool!r}."
    if errors:
        raise ValidationError(errors)


def principal_of(data: Mapping[str, Any], agent: str) -> tuple[str, str] | None:
    """The first (issuer, subject) by which gateways recognise ``agent`` in ``data`` (else its
    first OAuth client id: decide with ``client_id`` equal to the subject)."""
    entry = data.get("agents", {}).get(agent, {})
    principals = entry.get("principals") or entry.get("clients") or []
    return (principals[0][0], principals[0][1]) if principals else None


def simulate(tenant: Tenant, *, agent: str, server: str, tool: str, arguments: Any = None,
             at: datetime | None = None, policy: str = DRAFT) -> Simulation:
    """Decide one call as a gateway holding ``policy`` would. ValidationError (by field) when
    the agent, server or tool is unknown, the arguments are not a JSON object or the time is
    not a timezone-aware instant."""
    errors: dict[str, Any] = {}
    for name, value in (("agent", agent), ("server", server), ("tool", tool)):
        if not isinstance(value, str) or not value.strip():
            errors[name] = "This field is required."
    try:
        args = parse_arguments(arguments)
    except ValidationError as exc:
        errors.update(exc.message_dict)
    if at is not None and (not isinstance(at, datetime) or at.tzinfo is None):
        errors["at"] = "Give the call's time as an instant with a timezone (RFC 3339)."
    if errors:
        raise ValidationError(errors)
    _check_names(tenant, agent, server, tool)
    at = at or timezone.now()
    chosen = policy_data(tenant, policy)
    notes = list(ALWAYS_NOTES)
    if any(g["agent"] == agent and g.get("on_behalf_of_group")
           for g in chosen.data.get("grants", [])):
        notes.append("The agent acts on its own here: a grant that requires the person it acts "
                     "for to be in a group refuses the call.")
    principal = principal_of(chosen.data, agent)
    if agent not in chosen.data.get("agents", {}):
        decision = Decision(DENY, "unknown principal")
        notes.insert(0, f"Agent {agent} is not in {chosen.label}: no gateway holding it "
                        "recognises the agent.")
    elif principal is None:
        decision = Decision(DENY, "unknown principal", agent=agent)
        notes.insert(0, f"Agent {agent} has no principal (issuer and subject): no gateway can "
                        "recognise it. Add one on the agent's page.")
    else:
        decision = decide(chosen.data, issuer=principal[0], subject=principal[1],
                          client_id=principal[1], server=server, tool=tool, arguments=args,
                          at=at)
        if tool_key(server, tool) not in chosen.data.get("tools", {}):
            notes.insert(0, f"Tool {tool_key(server, tool)} is not in {chosen.label}.")
    return Simulation(policy=chosen, agent=agent, server=server, tool=tool, arguments=args,
                      at=at, decision=decision, principal=principal, notes=notes)
