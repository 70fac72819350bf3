"""The agentgateway export's CEL rules, EVALUATED with a real CEL implementation (cel-python,
``celpy``) against gateway.decision.decide() on the random documents and calls of the Cedar
differential (tests/test_cedar_differential.py).

How agentgateway reads the file (see gateway/agentgateway.py): a call reaches the route of its
server; ``mcpAuthorization.rules`` is a list of CEL expressions, any one of which that evaluates
to ``true`` allows the call, and an expression that fails to evaluate counts as ``false``. The
request-time context is identity-only: ``jwt`` (the verified token's claims), ``mcp.tool``
(``target`` and ``name``; no ``arguments``) and ``request`` (``startTime``, a timestamp).

What is proven, call by call:

- **never more permissive**: a call the export allows is one decide() allows (with
  ``approvals=allow``: allows or escalates). With ``unpinned=allow`` the export does not check
  the live definition hash, and says so: there the call is decided without one;
- **exact where it expresses**: allowed ⇔ decide() allows the call once the grants are reduced
  to what the export expresses (grants with rate limits, and approval grants unless
  ``approvals=allow``, removed; tools a grant constrains or conditions on refused by it).
  Windows and expiry are not reduced: the export expresses them and must agree at every time.
"""

from __future__ import annotations

import copy
import functools
import random
from datetime import UTC, datetime, timedelta

import celpy
import pytest
import yaml

from gateway.agentgateway import cel_string, cel_window, translate
from gateway.decision import ALLOW, ESCALATE, decide
from tests.bundles.test_cedar_differential import BASE, random_call, random_data

SEED = 20261207
EXPORTED_AT = BASE - timedelta(days=8)  # before every random call: no grant left out as expired

_ENV = celpy.Environment()


@functools.cache
def _program(expression: str):
    return _ENV.program(_ENV.compile(expression))


def cel_true(expression: str, activation: dict) -> bool:
    """Does ``expression`` evaluate to ``true``? An evaluation error is ``false``, as in
    agentgateway (``eval_bool``: an error or a non-boolean does not allow)."""
    try:
        result = _program(expression).evaluate(activation)
    except celpy.CELEvalError:
        return False
    return isinstance(result, celpy.celtypes.BoolType) and bool(result)


def activation(*, issuer: str, subject: str, server: str, tool: str,
               at: datetime | None) -> dict:
    """agentgateway's request-time context for an MCP tool call (no ``request.startTime``
    when ``at`` is None)."""
    request = celpy.celtypes.MapType()
    if at is not None:
        request[celpy.celtypes.StringType("startTime")] = celpy.celtypes.TimestampType(at)
    return {"jwt": celpy.json_to_cel({"iss": issuer, "sub": subject}),
            "mcp": celpy.json_to_cel({"tool": {"target": server, "name": tool}}),
            "request": request}


def route_rules(config: dict, server: str) -> list[str] | None:
    """The mcpAuthorization rules of ``server``'s route (None: no route, nothing reaches it),
    checking the shape agentgateway reads on the way."""
    assert set(config) == {"binds"} and len(config["binds"]) == 1
    listeners = config["binds"][0]["listeners"]
    assert len(listeners) == 1
    for route in listeners[0]["routes"]:
        targets = route["backends"][0]["mcp"]["targets"]
        assert len(route["backends"]) == 1 and len(targets) == 1
        assert route["matches"][0]["path"]["pathPrefix"].startswith("/mcp/")
        if targets[0]["name"] != server:
            continue
        rules = route["policies"]["mcpAuthorization"]["rules"]
        assert rules and all(isinstance(rule, str) for rule in rules), (
            "an empty rule list would allow everything")
        return rules
    return None


def cel_allows(config: dict, *, issuer: str, subject: str, server: str, tool: str,
               at: datetime | None = None) -> bool:
    """Would agentgateway allow the call through ``config``? Every rule of the server's route is
    evaluated with celpy; ``at`` is the request's start time."""
    rules = route_rules(config, server)
    if rules is None:
        return False
    context = activation(issuer=issuer, subject=subject, server=server, tool=tool, at=at)
    return any(cel_true(rule, context) for rule in rules)


# --- The reduction to what the export expresses ----------------------------------------------

NEVER = {"never": {"enum": []}}  # an argument check nothing satisfies (and that nothing sends)


def expressible(data: dict, approvals: str) -> dict:
    """``data`` reduced to what the agentgateway export expresses (see the module docstring)."""
    reduced = copy.deepcopy(data)
    grants = []
    for grant in reduced["grants"]:
        if grant["calls_per_minute"] is not None or grant["calls_per_day"] is not None:
            continue
        refused = {tool for tool, args in grant["argument_constraints"].items() if args}
        if approvals == "deny":
            if grant["approval_mode"] == "always":
                continue
            if grant["approval_mode"] == "when":
                refused |= {tool for tool, args in grant["approval_condition"].items() if args}
        else:
            grant["approval_mode"], grant["approval_condition"] = "never", {}
        grant["argument_constraints"] = {tool: NEVER for tool in refused}
        grants.append(grant)
    reduced["grants"] = grants
    return reduced


def differences(approvals: str, unpinned: str, documents: int, *, calls: int = 12,
                mutate=None) -> tuple[dict, list]:
    """Export random documents (``mutate`` changes what the exporter is given, not what
    decide() sees) and evaluate their CEL on random calls: (counts, disagreements)."""
    rng = random.Random(SEED)
    accepted = {ALLOW, ESCALATE} if approvals == "allow" else {ALLOW}
    counts = {"calls": 0, "allowed": 0, "conditional": 0}
    disagreements = []
    for _ in range(documents):
        data = random_data(rng)
        given = mutate(copy.deepcopy(data)) if mutate else data
        config = yaml.safe_load(translate(given, at=EXPORTED_AT, approvals=approvals,
                                          unpinned=unpinned).text)
        reduced = expressible(data, approvals)
        for _ in range(calls):
            call = random_call(rng, data)
            if unpinned == "allow":
                call["live_sha256"] = None  # not checked by this export, and said so
            allowed = cel_allows(config, issuer=call["issuer"], subject=call["subject"],
                                 server=call["server"], tool=call["tool"], at=call["at"])
            actual = decide(data, **call).outcome
            exact = decide(reduced, **{**call, "usage": None}).outcome in accepted
            counts["calls"] += 1
            counts["allowed"] += allowed
            if allowed and (actual not in accepted or not exact):
                disagreements.append(("export allows", actual, call))
            elif not allowed and exact:
                disagreements.append(("export refuses", actual, call))
        counts["conditional"] += sum("request.startTime" in rule
                                     for route in config["binds"][0]["listeners"][0]["routes"]
                                     for rule in route["policies"]["mcpAuthorization"]["rules"])
    return counts, disagreements


@pytest.mark.parametrize("approvals", ["deny", "allow"])
def test_the_cel_never_allows_more_than_decide_and_agrees_where_it_expresses(approvals):
    counts, disagreements = differences(approvals, "allow", documents=160)
    assert disagreements == [], disagreements[:3]
    assert counts["calls"] == 160 * 12
    assert 100 < counts["allowed"] < counts["calls"] - 100, counts
    assert counts["conditional"] > 20, counts  # windows and expiry were really exercised


def test_by_default_pinned_definitions_leave_nothing_allowed():
    counts, disagreements = differences("deny", "deny", documents=40)
    assert counts["allowed"] == 0


def _without(*keys):
    def mutate(data):
        for grant in data["grants"]:
            for key in keys:
                grant[key] = None if key != "argument_constraints" else {}
        return data
    return mutate


def _never_ask(data):
    for grant in data["grants"]:
        grant["approval_mode"] = "never"
    return data


def _everyone_active(data):
    for agent in data["agents"].values():
        agent["status"] = "active"
    for server in data["servers"].values():
        server["status"] = "active"
    return data


def _withheld_approved(data):
    for key in data["withheld_tools"]:
        server, name = key.split("/", 1)
        data["tools"][key] = {"server": server, "name": name, "definition_sha256": "00"}
        for scope in data["scopes"].values():
            scope["tools"].append(key)
    return data


@pytest.mark.parametrize("mutate", [
    _without("window"), _without("expires_at"), _without("calls_per_minute", "calls_per_day"),
    _without("argument_constraints"), _never_ask, _everyone_active, _withheld_approved])
def test_a_wrong_export_is_caught_by_the_differential(mutate):
    """Each thing the exporter must express or refuse, dropped from what it is given, lets a
    call through that decide() refuses."""
    _, disagreements = differences("deny", "allow", documents=80, mutate=mutate)
    assert any(kind == "export allows" for kind, _, _ in disagreements)


# --- The conditions on the request time ------------------------------------------------------

PARIS_OVERNIGHT = {"start": "22:00", "end": "06:00", "days": [4], "tz": "Europe/Paris"}  # Friday


@pytest.mark.parametrize(("local", "inside"), [
    ("2026-11-27T22:00:00", True),   # Friday 22:00
    ("2026-11-27T21:59:59", False),
    ("2026-11-28T05:59:59", True),   # Saturday morning: still Friday's night
    ("2026-11-28T06:00:00", False),
    ("2026-11-28T22:30:00", False),  # Saturday night: not a Friday
    ("2026-11-27T05:00:00", False),  # Friday morning: Thursday's night
])
def test_an_overnight_window_on_chosen_days_is_cel_on_the_local_time(local, inside):
    from zoneinfo import ZoneInfo

    at = datetime.fromisoformat(local).replace(tzinfo=ZoneInfo("Europe/Paris"))
    condition = cel_window(PARIS_OVERNIGHT)
    context = activation(issuer="i", subject="s", server="x", tool="t", at=at.astimezone(UTC))
    assert cel_true(condition, context) is inside


@pytest.mark.parametrize("window", [
    {"start": "09:00", "end": "09:00", "days": [], "tz": "UTC"},  # holds no time
    {"start": "09:00:00.5", "end": "10:00", "days": [], "tz": "UTC"},  # not whole seconds
    {"start": "nine", "end": "10:00", "days": [], "tz": "UTC"},
])
def test_a_window_that_cannot_be_expressed_gives_no_rule(window):
    data = {"tenant": "t", "agents": {"a": {"status": "active", "principals": [["i", "s"]]}},
            "principals": {"i": {"s": "a"}},
            "servers": {"x": {"status": "active", "transport": "sse", "url": "https://x"}},
            "tools": {"x/t": {"server": "x", "name": "t", "definition_sha256": "00"}},
            "withheld_tools": {}, "scopes": {"s": {"tools": ["x/t"]}},
            "grants": [{"id": "1", "agent": "a", "scope": "s", "approval_mode": "never",
                        "expires_at": None, "window": window}]}
    export = translate(data, at=BASE, unpinned="allow")
    assert export.rules == {"x": []}
    assert [e["kind"] for e in export.not_expressed] == ["time_window"]


def test_a_rule_with_a_condition_fails_closed_without_a_request_time():
    data = {"tenant": "t", "agents": {"a": {"status": "active", "principals": [["i", "s"]]}},
            "principals": {"i": {"s": "a"}},
            "servers": {"x": {"status": "active", "transport": "sse", "url": "https://x"}},
            "tools": {"x/t": {"server": "x", "name": "t", "definition_sha256": "00"}},
            "withheld_tools": {}, "scopes": {"s": {"tools": ["x/t"]}},
            "grants": [{"id": "1", "agent": "a", "scope": "s", "approval_mode": "never",
                        "expires_at": "2026-12-01T00:00:00Z", "window": None}]}
    export = translate(data, at=BASE, unpinned="allow")
    config = yaml.safe_load(export.text)
    call = {"issuer": "i", "subject": "s", "server": "x", "tool": "t"}
    assert cel_allows(config, **call, at=datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC))
    assert not cel_allows(config, **call, at=datetime(2026, 12, 1, tzinfo=UTC))
    assert not cel_allows(config, **call, at=None)  # no request.startTime: the rule fails
    assert [e["kind"] for e in export.expressed] == ["grant_expiry"]
    assert '&& request.startTime < timestamp("2026-12-01T00:00:00Z")' in (
        config["binds"][0]["listeners"][0]["routes"][0]["policies"]["mcpAuthorization"]
        ["rules"][0])


@pytest.mark.parametrize("value", ['quo"te', "back\\slash", "new\nline", "tab\t", "nul\x00",
                                   "café", "😀", "\u2028", '"; true || "', "\x7f"])
def test_cel_reads_every_string_literal_back(value):
    assert cel_true(f"{cel_string(value)} == s", {"s": celpy.celtypes.StringType(value)})
    assert not cel_true(f"{cel_string(value)} == s",
                        {"s": celpy.celtypes.StringType(value + "x")})


def test_the_shape_check_refuses_an_empty_rule_list():
    config = {"binds": [{"listeners": [{"routes": [{
        "matches": [{"path": {"pathPrefix": "/mcp/x"}}],
        "policies": {"mcpAuthorization": {"rules": []}},
        "backends": [{"mcp": {"targets": [{"name": "x"}]}}]}]}]}]}
    with pytest.raises(AssertionError):
        cel_allows(config, issuer="i", subject="s", server="x", tool="t")
