"""The bundle's Cedar policy (bundles/cedar.py) decides as decide() does.

Thousands of random, reproducible data.json documents and calls are decided twice, by
gateway/decision.py and by cedarpy over compile_policy/compile_schema, and must agree. Left out
of the random documents: ``pattern``, ``within`` and ``url`` (Cedar has no regular expressions
and no path or URL parsing; the policy fails closed there, see the module's docstring and
test_cedar_never_allows_more_than_decide_where_it_cannot_express_a_check) and JSON booleans
beside the numbers 0 and 1 (decide() compares with Python's ``==``, where ``True == 1``; see
test_a_boolean_is_not_the_number_one).
"""

from __future__ import annotations

import copy
import json
import random
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import cedarpy
import pytest

from bundles.cedar import compile_policy, compile_schema, unexpressed_grants
from bundles.cedar_request import cedar_outcome, cedar_request
from bundles.cedar_values import cedar_string, cedar_value
from bundles.packaging import bundle_json
from gateway.decision import decide, tool_key
from governance.audit.services import Actor
from registry import services
from registry.compiler import compile_data
from tests.bundle_support import decision_world

SEED = 20261125
DOCUMENTS = 300
CALLS_PER_DOCUMENT = 12
# The random documents' clock: decide() and Cedar take it as an argument, nothing reads the real
# one (the registry test below follows the real clock).
NOW = BASE = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)  # a Wednesday, 10:00 in Paris
IDP, OTHER_IDP = "https://idp.example", "spiffe://mesh.example"

NASTY = [
    'quo"te', "back\\slash", "new\nline", "nul\x00byte", "tab\there", "café", "😀",
    "rtl\u202eevil", '"; permit (principal, action, resource); //', "star*", "\r", "",
]
AGENT_NAMES = ["bot", "reporter", "old", *NASTY[:6]]
SERVER_NAMES = ["payroll", "hr", "crm", NASTY[0], NASTY[7]]
TOOL_NAMES = ["read", "pay", "export", "wipe", *NASTY[1:5], NASTY[8], NASTY[11]]
SCOPE_NAMES = ["payroll:read", "payroll:write", "all", NASTY[2], NASTY[9]]
ARG_NAMES = ["amount", "currency", "mode", "note", "flag", "items", NASTY[3], NASTY[6]]
TIME_ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Pacific/Chatham"]
# Never 0 or 1 (see the module docstring), never booleans: constants and bounds.
NUMBERS = [2, 5, 10, 100, -3, 2.5, 99.5, -0.75, 1e15, 7.0]
STRINGS = ["EUR", "USD", "fast", "slow", "", "é", 'a"b', "x" * 12, "line\nbreak"]
CONSTANTS = [*NUMBERS, *STRINGS, None, True, False, [2, "EUR"], {"k": "v"}, [], {}]


# --- Random documents and calls -------------------------------------------------------------


def _rules(rng: random.Random) -> dict:
    rules: dict = {}
    for keyword in rng.sample(["const", "enum", "minimum", "maximum", "maxLength"],
                              rng.choice([1, 1, 1, 2, 3])):
        if keyword == "const":
            rules["const"] = copy.deepcopy(rng.choice(CONSTANTS))
        elif keyword == "enum":
            rules["enum"] = copy.deepcopy(rng.sample(CONSTANTS, rng.randint(1, 4)))
        elif keyword == "maxLength":
            rules["maxLength"] = rng.choice([0, 2, 3, 12])
        else:
            rules[keyword] = rng.choice([*NUMBERS, 1e300, -1e300, 2**62])
    if "minimum" in rules and "maximum" in rules and rules["minimum"] > rules["maximum"]:
        rules["minimum"], rules["maximum"] = rules["maximum"], rules["minimum"]
    return rules


def _constraint_doc(rng: random.Random, tool_names: list[str]) -> dict:
    doc = {}
    for name in rng.sample(tool_names, min(len(tool_names), rng.randint(1, 2))):
        doc[name] = {arg: _rules(rng) for arg in rng.sample(ARG_NAMES, rng.choice([0, 1, 1, 2]))}
    return doc


def _window(rng: random.Random) -> dict | None:
    if rng.random() < 0.6:
        return None
    start = time(rng.randrange(24), rng.choice([0, 15, 30, 59]))
    end = rng.choice([time(rng.randrange(24), rng.choice([0, 30, 45])), start])
    days = sorted(rng.sample(range(7), rng.choice([0, 0, 1, 3, 5, 7])))
    return {"start": start.isoformat(timespec="minutes"), "end": end.isoformat(timespec="minutes"),
            "days": days, "tz": rng.choice(TIME_ZONES)}


def random_data(rng: random.Random) -> dict:
    """A data.json document; sometimes inconsistent in ways the compiler never is.

    A third of them are calm (everything active, no expiry, no window) so that more calls get
    as far as the argument constraints and approval conditions.
    """
    calm = rng.random() < 0.35
    agents, principals = {}, {}
    for i, name in enumerate(rng.sample(AGENT_NAMES, rng.randint(2, 4))):
        pairs = [[rng.choice([IDP, OTHER_IDP]), f"sub-{i}-{j}"] for j in range(rng.randint(1, 2))]
        agents[name] = {"status": "active" if calm or rng.random() < 0.85 else "suspended",
                        "owner": None, "environment": "prod", "principals": pairs}
        for issuer, subject in pairs:
            principals.setdefault(issuer, {})[subject] = name
    servers, tools, withheld = {}, {}, {}
    for server in rng.sample(SERVER_NAMES, rng.randint(1, 3)):
        status = "active" if calm or rng.random() < 0.9 else "suspended"
        servers[server] = {"status": status, "transport": "streamable-http", "url": "https://x",
                           "version": "", "risk_tier": "low", "data_classes": []}
        for name in rng.sample(TOOL_NAMES, rng.randint(2, 4)):
            key = tool_key(server, name)
            fate = rng.random()
            if fate < 0.7 and (status == "active" or rng.random() < 0.2):
                tools[key] = {"server": server, "name": name, "title": "",
                              "definition_sha256": f"{rng.getrandbits(64):016x}",
                              "annotations": {}}
            elif fate < 0.9:
                withheld[key] = rng.choice(["quarantined", "blocked"])
    # The compiler keeps only approved tools in scopes; a withheld one now and then must not
    # matter either.
    scopes = {
        name: {"risk_level": "low", "data_classes": [], "tools": sorted(
            [*rng.sample(sorted(tools), rng.randint(0, len(tools))),
             *(k for k in withheld if rng.random() < 0.1)])}
        for name in rng.sample(SCOPE_NAMES, rng.randint(1, 3))
    }
    grants = []
    for gid in range(1, rng.randint(1, 7)):
        scope = rng.choice(sorted(scopes))
        names = sorted({k.split("/", 1)[1] for k in scopes[scope]["tools"]}) or ["read"]
        mode = rng.choice(["never", "never", "always", "when", "when"])
        expiry = None if calm else rng.choice([None, None, None, -3, 1, 30])
        grants.append({
            "id": str(gid * 7),
            "agent": rng.choice(sorted(agents)),
            "scope": scope,
            "calls_per_minute": rng.choice([None, None, 3]),
            "calls_per_day": rng.choice([None, None, 100]),
            "window": None if calm else _window(rng),
            "argument_constraints": _constraint_doc(rng, names) if rng.random() < 0.7 else {},
            "approval_mode": mode,
            "approval_condition": _constraint_doc(rng, names) if mode == "when" else {},
            "expires_at": None if expiry is None else (BASE + timedelta(days=expiry))
            .isoformat().replace("+00:00", "Z"),
        })
    # Several grants for the same agent and scope make "allow beats escalate" happen.
    if grants and rng.random() < 0.3:
        twin = copy.deepcopy(rng.choice(grants))
        twin.update(id="999", approval_mode="never", approval_condition={})
        grants.append(twin)
    return {"schema_version": 1, "tenant": rng.choice(["alpha", NASTY[8]]), "agents": agents,
            "principals": principals, "servers": servers, "tools": tools,
            "withheld_tools": withheld, "scopes": scopes, "grants": grants,
            "escalation": {"decision_timeout_seconds": 900, "hold_seconds": 60,
                           "endpoint": "/api/v1/gateway/escalations"}}


def _no_zero_or_one(value):
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return 2 if value in (0, 1) else value
    if isinstance(value, list):
        return [_no_zero_or_one(v) for v in value]
    return {k: _no_zero_or_one(v) for k, v in value.items()}


def _argument_value(rng: random.Random, data: dict):
    bounds = [r[k] for g in data["grants"]
              for doc in (g["argument_constraints"], g["approval_condition"])
              for args in doc.values() for r in args.values()
              for k in ("minimum", "maximum") if k in r]
    choice = rng.random()
    if choice < 0.35:
        value = copy.deepcopy(rng.choice(CONSTANTS))
    elif choice < 0.65 and bounds:
        bound = rng.choice(bounds)
        value = rng.choice([bound, bound + 1, bound - 1, bound + 0.5, bound - 0.25,
                            int(bound) if abs(bound) < 1e18 else bound])
    elif choice < 0.75:
        value = rng.choice([3.0, -0.0, 1e300, -1e300, 2**70, -(2**70), 12.345, 2**53 + 2])
    elif choice < 0.9:
        value = "".join(rng.choice("ab\"\\\né😀") for _ in range(rng.randint(0, 14)))
    else:
        value = rng.choice([[], [2, "EUR"], ["EUR", 2], {"k": "v"}, {"k": "w"}, True, False, None])
    return _no_zero_or_one(value)


def _satisfying(rng: random.Random, rules: dict):
    """A value meant to pass ``rules`` (it may not: some rule sets cannot be met)."""
    if "const" in rules:
        return copy.deepcopy(rules["const"])
    if "enum" in rules:
        return copy.deepcopy(rng.choice(rules["enum"]))
    if "maxLength" in rules:
        return "é" * rng.randint(0, rules["maxLength"])
    low, high = rules.get("minimum", -1e6), rules.get("maximum", 1e6)
    return rng.choice([low, high, low + (high - low) / 2, int(low) + 1 if abs(low) < 1e18 else low])


def _call_time(rng: random.Random, grant: dict | None) -> datetime:
    """Any time in three weeks, or one on the edge of the grant's window or expiry."""
    edge = rng.random()
    if grant and grant["window"] and edge < 0.3:
        window = grant["window"]
        day = (BASE + timedelta(days=rng.randrange(-7, 14))).astimezone(ZoneInfo(window["tz"]))
        hour, minute = map(int, rng.choice([window["start"], window["end"]]).split(":"))
        local = day.replace(hour=hour, minute=minute, second=0, microsecond=0)
        return local + timedelta(seconds=rng.choice([-60, -1, 0, 0, 59, 60]))
    if grant and grant["expires_at"] and edge < 0.45:
        expiry = datetime.fromisoformat(grant["expires_at"].replace("Z", "+00:00"))
        return expiry + timedelta(microseconds=rng.choice([-1_000_000, -1, 0, 0, 1, 999_999]))
    return BASE + timedelta(minutes=rng.randrange(-7 * 24 * 60, 14 * 24 * 60),
                            seconds=rng.choice([0, 0, 30, 59]),
                            microseconds=rng.choice([0, 999_999]))


def random_call(rng: random.Random, data: dict) -> dict:
    """Mostly a call some grant is about, with arguments near its constraints; else anything."""
    grant = rng.choice(data["grants"]) if data["grants"] and rng.random() < 0.8 else None
    agent = grant["agent"] if grant else rng.choice(sorted(data["agents"]))
    if rng.random() < 0.93:
        issuer, subject = rng.choice(data["agents"][agent]["principals"])
    else:
        issuer, subject = IDP, "stranger"
    in_scope = data["scopes"][grant["scope"]]["tools"] if grant else []
    keys = sorted([*data["tools"], *data["withheld_tools"]])
    if in_scope and rng.random() < 0.8:
        server, tool = rng.choice(in_scope).split("/", 1)
    elif keys and rng.random() < 0.9:
        server, tool = rng.choice(keys).split("/", 1)
    else:
        server, tool = rng.choice(SERVER_NAMES), rng.choice(TOOL_NAMES)
    arguments = {name: _argument_value(rng, data) for name in ARG_NAMES if rng.random() < 0.3}
    for doc in (grant["argument_constraints"], grant["approval_condition"]) if grant else ():
        for name, rules in doc.get(tool, {}).items():
            if rng.random() < 0.8:
                arguments[name] = _no_zero_or_one(_satisfying(rng, rules))
    pinned = data["tools"].get(tool_key(server, tool), {}).get("definition_sha256")
    live = rng.choice([None] * 6 + [pinned, pinned, pinned, "0" * 16])
    counts = (rng.choice([0, 2, 2, 3, 4]), rng.choice([0, 99, 99, 100]))
    return {"issuer": issuer, "subject": subject, "server": server, "tool": tool,
            "arguments": arguments, "at": _call_time(rng, grant), "live_sha256": live,
            "usage": None if rng.random() < 0.5 else (lambda gid, c=counts: c)}


# --- Deciding both ways ----------------------------------------------------------------------


def cedar_decide(data: dict, calls: list[dict], policy: str, schema: str) -> list[str]:
    """cedarpy's outcome for each call (one batch per document: the entities are merged)."""
    requests = [cedar_request(data, **call) for call in calls]
    entities = {}
    for req in requests:
        if req is not None:
            for entity in req.entities:
                uid = (entity["uid"]["type"], entity["uid"]["id"])
                assert entities.setdefault(uid, entity) == entity
    batch = [req.request for req in requests if req is not None]
    answers = cedarpy.is_authorized_batch(batch, policy, list(entities.values()),
                                          schema=schema) if batch else []
    # Every request fits the schema and every policy evaluates cleanly: cedar_outcome's
    # fail-closed path is never what makes the outcomes agree (or differ).
    assert [a.diagnostics.errors for a in answers] == [[] for _ in answers]
    results = iter(answers)
    return [cedar_outcome(None if req is None else next(results)) for req in requests]


def differences(seed: int, documents: int, *, mutate=None) -> tuple[int, list]:
    """Decide ``documents`` random documents both ways; the calls on which they differ."""
    rng = random.Random(seed)
    cases, disagreements = 0, []
    for _ in range(documents):
        data = random_data(rng)
        data = json.loads(bundle_json(data))  # what a gateway parses
        # A mutation changes the policy only: requests and schema stay those of the real data.
        policy = compile_policy(mutate(copy.deepcopy(data)) if mutate else data)
        schema = compile_schema(data)
        validation = cedarpy.validate_policies(policy, schema)
        assert validation.validation_passed, (validation.errors, policy, schema)
        calls = [random_call(rng, data) for _ in range(CALLS_PER_DOCUMENT)]
        expected = [decide(data, **call).outcome for call in calls]
        for call, want, got in zip(calls, expected, cedar_decide(data, calls, policy, schema),
                                   strict=True):
            cases += 1
            if want != got:
                disagreements.append((want, got, call, data))
    return cases, disagreements


def test_cedar_agrees_with_decide_on_random_documents():
    cases, disagreements = differences(SEED, DOCUMENTS)
    assert cases == DOCUMENTS * CALLS_PER_DOCUMENT >= 3000
    if disagreements:
        want, got, call, data = disagreements[0]
        pytest.fail(f"{len(disagreements)} of {cases} calls differ; first: decide() {want}, "
                    f"Cedar {got}\ncall: {call}\ndata: {json.dumps(data, indent=1)}\n"
                    f"policy:\n{compile_policy(data)}")


def test_the_random_calls_reach_every_outcome():
    rng = random.Random(SEED)
    outcomes = set()
    reasons = set()
    for _ in range(60):
        data = json.loads(bundle_json(random_data(rng)))
        for _ in range(CALLS_PER_DOCUMENT):
            decision = decide(data, **random_call(rng, data))
            outcomes.add(decision.outcome)
            reasons.add(decision.reason.split(" ")[0] if decision.grant is None
                        else decision.reason.split(": ")[-1].split(" ")[0])
    assert outcomes == {"allow", "deny", "escalate"}
    assert {"unknown", "agent", "tool", "server"} <= reasons


def test_argument_checks_agree_value_by_value():
    """One tool, one grant: its constraint and approval condition against many values."""
    rng = random.Random(SEED + 2)
    cases = 0
    for _ in range(150):
        data = {
            "agents": {"bot": {"status": "active"}}, "principals": {IDP: {"bot": "bot"}},
            "servers": {"s": {"status": "active"}},
            "tools": {"s/t": {"server": "s", "name": "t", "definition_sha256": "1"}},
            "withheld_tools": {}, "scopes": {"sc": {"tools": ["s/t"]}},
            "grants": [{"id": "1", "agent": "bot", "scope": "sc", "calls_per_minute": None,
                        "calls_per_day": None, "window": None, "expires_at": None,
                        "argument_constraints": {"t": {"x": _rules(rng)}},
                        "approval_mode": "when", "approval_condition": {"t": {"x": _rules(rng)}}}],
        }
        policy, schema = compile_policy(data), compile_schema(data)
        assert cedarpy.validate_policies(policy, schema).validation_passed
        calls = []
        for _ in range(16):
            rules = rng.choice([data["grants"][0]["argument_constraints"]["t"]["x"],
                                data["grants"][0]["approval_condition"]["t"]["x"]])
            value = _satisfying(rng, rules) if rng.random() < 0.5 else _argument_value(rng, data)
            calls.append({"issuer": IDP, "subject": "bot", "server": "s", "tool": "t",
                          "arguments": {"x": _no_zero_or_one(value)}, "at": NOW})
        expected = [decide(data, **call).outcome for call in calls]
        assert cedar_decide(data, calls, policy, schema) == expected, (calls, policy)
        cases += len(calls)
    assert cases == 2400


def _drop_first_grant(data):
    data["grants"] = data["grants"][1:]
    return data


def _never_ask(data):
    for grant in data["grants"]:
        grant.update(approval_mode="never", approval_condition={})
    return data


def _no_constraints(data):
    for grant in data["grants"]:
        grant["argument_constraints"] = {}
    return data


def _no_windows(data):
    for grant in data["grants"]:
        grant["window"] = None
    return data


def _everyone_active(data):
    for agent in data["agents"].values():
        agent["status"] = "active"
    return data


@pytest.mark.parametrize("mutate", [_drop_first_grant, _never_ask, _no_constraints, _no_windows,
                                    _everyone_active])
def test_a_wrong_policy_is_caught_by_the_differential(mutate):
    _, disagreements = differences(SEED + 1, 80, mutate=mutate)
    assert disagreements


# --- Real registry state ---------------------------------------------------------------------

SYSTEM = Actor.system("test")
PARIS = ZoneInfo("Europe/Paris")


def wednesday_10_in_paris() -> datetime:
    """A Wednesday 10:00 in Paris, 2 to 9 days ahead of the real clock: the registry's services
    check expiries against it, so a fixed date would expire (and fail) one day."""
    day = datetime.now(PARIS).date() + timedelta(days=2)
    day += timedelta(days=(2 - day.weekday()) % 7)
    return datetime.combine(day, time(10), tzinfo=PARIS).astimezone(UTC)


@pytest.mark.django_db
def test_cedar_agrees_on_a_bundle_built_from_the_registry(tenant_a, dave):
    now = wednesday_10_in_paris()
    world = decision_world(tenant_a, owner=dave)
    bot, scope = world["bot"], world["scope"]
    services.grant_create(
        tenant=tenant_a, actor=SYSTEM, agent=bot, scope=scope,
        window_start=time(8), window_end=time(18), window_days=[0, 1, 2, 3, 4],
        window_tz="Europe/Paris", expires_at=now + timedelta(days=2),
        argument_constraints={"pay": {"amount": {"maximum": 100},
                                      "currency": {"enum": ["EUR", "USD"]}}},
        approval_mode="when", approval_condition={"pay": {"amount": {"minimum": 50}}},
    )
    data = json.loads(bundle_json(compile_data(tenant_a, at=now)))
    policy, schema = compile_policy(data), compile_schema(data)
    assert cedarpy.validate_policies(policy, schema).validation_passed

    def call(tool="read", subject="bot", at=None, **arguments):
        return {"issuer": IDP, "subject": subject, "server": "payroll", "tool": tool,
                "arguments": arguments, "at": at or now}

    calls = [
        call(),
        call(subject="old"),
        call(subject="stranger"),
        call("wipe"),
        call("draft"),
        call("pay", amount=10, currency="EUR"),
        call("pay", amount=60, currency="USD"),
        call("pay", amount=160, currency="EUR"),
        call("pay", amount=10, currency="GBP"),
        call("pay", currency="EUR"),
        call(at=now + timedelta(hours=9)),   # 19:00 in Paris
        call(at=now + timedelta(days=3)),    # Saturday, and expired
    ]
    expected = ["allow", "deny", "deny", "deny", "deny", "allow", "escalate", "deny", "deny",
                "deny", "deny", "deny"]
    assert [decide(data, **c).outcome for c in calls] == expected
    assert cedar_decide(data, calls, policy, schema) == expected
    assert 'forbid (principal, action, resource == Mcp::Tool::"payroll/wipe");' in policy
    assert 'forbid (principal == Mcp::Agent::"old", action, resource);' in policy


# --- Determinism, escaping, outcomes ---------------------------------------------------------


def _reordered(value):
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(v) for v in value]
    return value


def test_the_same_data_compiles_to_the_same_text():
    rng = random.Random(SEED)
    for _ in range(20):
        data = random_data(rng)
        shuffled = _reordered(data)
        shuffled["grants"] = list(reversed(shuffled["grants"]))
        assert compile_policy(data) == compile_policy(copy.deepcopy(data)) == compile_policy(
            shuffled)
        assert compile_schema(data) == compile_schema(shuffled)
        assert compile_policy(data).isascii() and compile_schema(data).isascii()


@pytest.mark.parametrize("name", [*NASTY, "\\u{41}", "\\\"", "\x7f", "\u2028", "😀\U0010ffff",
                                  "\\", '"', "a\\", "}"])
def test_every_string_survives_cedar_escaping(name):
    literal = cedar_string(name)
    assert literal.isascii() and "\n" not in literal and "\r" not in literal
    policy = (f"permit (principal == Mcp::Agent::{literal}, action, resource)\n"
              f"when {{ context.name == {literal} && context.name like \"*\" }};")
    request = {"principal": {"type": "Mcp::Agent", "id": name},
               "action": {"type": "Mcp::Action", "id": "call_tool"},
               "resource": {"type": "Mcp::Tool", "id": "t"}, "context": {"name": name}}
    result = cedarpy.is_authorized(request, policy, [])
    assert (result.allowed, result.diagnostics.errors) == (True, [])
    other = cedarpy.is_authorized({**request, "context": {"name": name + "x"}}, policy, [])
    assert not other.allowed


def test_a_lone_surrogate_is_refused():
    with pytest.raises(ValueError, match="lone surrogate"):
        cedar_string("a\ud800")


def test_nasty_names_cannot_inject_policies():
    evil = '"); permit (principal, action, resource); //'
    data = {
        "agents": {evil: {"status": "suspended", "principals": [[IDP, "evil"]]},
                   "bot": {"status": "active", "principals": [[IDP, "bot"]]}},
        "principals": {IDP: {"evil": evil, "bot": "bot"}},
        "servers": {"s": {"status": "active"}},
        "tools": {f"s/{evil}": {"server": "s", "name": evil, "definition_sha256": "1"}},
        "withheld_tools": {f"s/{evil}\n": "blocked"},
        "scopes": {evil: {"tools": [f"s/{evil}"]}},
        "grants": [{"id": evil, "agent": "bot", "scope": evil, "calls_per_minute": 1,
                    "calls_per_day": None, "window": None, "expires_at": None,
                    "argument_constraints": {evil: {evil: {"enum": [evil, 2]}}},
                    "approval_mode": "never", "approval_condition": {}}],
    }
    policy, schema = compile_policy(data), compile_schema(data)
    assert cedarpy.validate_policies(policy, schema).validation_passed
    parsed = json.loads(cedarpy.policies_to_json_str(policy))["staticPolicies"].values()
    assert sorted((p["effect"], p["annotations"]["id"]) for p in parsed) == [
        ("forbid", "agent-" + evil), ("forbid", "definition-drift"), ("forbid", f"tool-s/{evil}\n"),
        ("permit", "grant-" + evil)]

    def outcome(subject, value):
        call = {"issuer": IDP, "subject": subject, "server": "s", "tool": evil,
                "arguments": {evil: value}, "at": NOW}
        assert decide(data, **call).outcome == cedar_decide(data, [call], policy, schema)[0]
        return cedar_decide(data, [call], policy, schema)[0]

    assert outcome("bot", evil) == "allow"
    assert outcome("bot", "other") == "deny"
    assert outcome("evil", evil) == "deny"


def test_argument_values_are_described_without_type_errors():
    assert cedar_value("é\n") == {"json": '"\\u00e9\\n"', "string": "é\n", "length": 2}
    assert cedar_value(2.5)["floor"] == 2 and cedar_value(2.5)["ceil"] == 3
    assert cedar_value(7.0)["json"] == cedar_value(7)["json"] == "7"
    assert cedar_value(-0.0)["order"] == cedar_value(0)["order"]
    assert cedar_value(True) == {"json": "true"}
    assert cedar_value(float("nan")) == {"json": "NaN"}
    assert cedar_value("\ud800") == {"json": '"\\ud800"', "length": 1}
    assert cedar_value(2**80)["floor"] == 2**63 - 1
    ordered = sorted([-1e300, -2.5, -0.0, 1e-300, 2, 2.5, 2**60, 1e300])
    assert [cedar_value(v)["order"] for v in ordered] == sorted(
        cedar_value(v)["order"] for v in ordered)


def _pattern_grant(rules: dict, condition: dict | None = None) -> dict:
    return {
        "agents": {"bot": {"status": "active"}}, "principals": {IDP: {"bot": "bot"}},
        "servers": {"s": {"status": "active"}},
        "tools": {"s/t": {"server": "s", "name": "t", "definition_sha256": "1"},
                  "s/u": {"server": "s", "name": "u", "definition_sha256": "2"}},
        "withheld_tools": {}, "scopes": {"sc": {"tools": ["s/t", "s/u"]}},
        "grants": [{"id": "1", "agent": "bot", "scope": "sc", "calls_per_minute": None,
                    "calls_per_day": None, "window": None, "expires_at": None,
                    "argument_constraints": {"t": {"q": rules}},
                    "approval_mode": "when" if condition else "never",
                    "approval_condition": condition or {}}],
    }


def _both(data: dict, tool: str, arguments: dict) -> tuple[str, str]:
    policy, schema = compile_policy(data), compile_schema(data)
    call = {"issuer": IDP, "subject": "bot", "server": "s", "tool": tool,
            "arguments": arguments, "at": NOW}
    return decide(data, **call).outcome, cedar_decide(data, [call], policy, schema)[0]


def test_a_pattern_fails_closed_in_cedar_and_said_so():
    data = _pattern_grant({"pattern": "^a+$", "maxLength": 3})
    policy = compile_policy(data)
    assert "DENIED HERE (checks Cedar cannot express: pattern, within, url)" in policy
    assert 'only decide() can allow: argument constraints on "t"."q"' in policy
    assert unexpressed_grants(data) == ["1"]
    assert _both(data, "t", {"q": "aa"}) == ("allow", "deny")  # only decide() can allow it
    assert _both(data, "t", {"q": "aaaa"}) == ("deny", "deny")
    assert _both(data, "t", {"q": "bb"}) == ("deny", "deny")  # was allowed by Cedar before
    assert _both(data, "u", {}) == ("allow", "allow")  # the grant's other tool is unaffected


@pytest.mark.parametrize(("rules", "inside", "escapes"), [
    ({"within": ["/srv/files/public"]}, "/srv/files/public/a.txt",
     ["/srv/files/public/../secret/x", "/srv/files/public//../secret/x",
      "/srv/files/public/./../secret/x", "/srv/files/public/sub/../../secret/x"]),
    ({"url": {"schemes": ["https"], "hosts": ["good.example"]}}, "https://good.example/x",
     ["https://good.example@evil.example/", "https://good.example.evil.example/"]),
])
def test_paths_and_urls_fail_closed_in_cedar(rules, inside, escapes):
    data = _pattern_grant(rules)
    assert _both(data, "t", {"q": inside}) == ("allow", "deny")
    for value in escapes:
        assert _both(data, "t", {"q": value}) == ("deny", "deny"), value


def test_an_unexpressed_approval_condition_escalates_more_never_allows_more():
    data = _pattern_grant({"maxLength": 40}, condition={"t": {"q": {"pattern": "^big"}}})
    assert _both(data, "t", {"q": "small"}) == ("allow", "escalate")
    assert _both(data, "t", {"q": "big one"}) == ("escalate", "escalate")


UNEXPRESSED = [{"pattern": "^[a-z]+$"}, {"pattern": "E"}, {"within": ["/srv"]},
               {"url": {"schemes": ["https"]}}]
RANK = {"deny": 0, "escalate": 1, "allow": 2}


def test_cedar_never_allows_more_than_decide_where_it_cannot_express_a_check():
    """Random documents with pattern/within/url beside the expressed keywords: Cedar may be
    stricter than decide() (deny or escalate where it allows), never more permissive."""
    rng = random.Random(SEED + 1)
    cases = stricter = 0
    for _ in range(60):
        data = random_data(rng)
        for grant in data["grants"]:
            for doc in (grant["argument_constraints"], grant["approval_condition"]):
                for args in doc.values():
                    for rules in args.values():
                        if rng.random() < 0.5:
                            rules.update(copy.deepcopy(rng.choice(UNEXPRESSED)))
        data = json.loads(bundle_json(data))
        policy, schema = compile_policy(data), compile_schema(data)
        calls = [random_call(rng, data) for _ in range(CALLS_PER_DOCUMENT)]
        for call, got in zip(calls, cedar_decide(data, calls, policy, schema), strict=True):
            want = decide(data, **call).outcome
            assert RANK[got] <= RANK[want], (want, got, call, policy)
            cases += 1
            stricter += RANK[got] < RANK[want]
    assert cases == 60 * CALLS_PER_DOCUMENT and stricter > 0


def _one_tool(constraints: dict, server: str = "s", tool: str = "t") -> dict:
    key = tool_key(server, tool)
    return {
        "agents": {"bot": {"status": "active"}}, "principals": {IDP: {"bot": "bot"}},
        "servers": {server: {"status": "active"}},
        "tools": {key: {"server": server, "name": tool, "definition_sha256": "1"}},
        "withheld_tools": {}, "scopes": {"sc": {"tools": [key]}},
        "grants": [{"id": "1", "agent": "bot", "scope": "sc", "calls_per_minute": None,
                    "calls_per_day": None, "window": None, "expires_at": None,
                    "argument_constraints": {tool: constraints},
                    "approval_mode": "never", "approval_condition": {}}],
    }


# Differences the differential found in decide(), now fixed there: both sides must agree.

def test_a_boolean_is_not_the_number_one():
    data = _one_tool({"n": {"const": 1}})
    call = {"issuer": IDP, "subject": "bot", "server": "s", "tool": "t",
            "arguments": {"n": True}, "at": NOW}
    assert cedar_decide(data, [call], compile_policy(data), compile_schema(data)) == ["deny"]
    assert decide(data, **call).outcome == "deny"


def test_nan_does_not_pass_a_bound():
    data = _one_tool({"amount": {"maximum": 100}})
    call = {"issuer": IDP, "subject": "bot", "server": "s", "tool": "t",
            "arguments": json.loads('{"amount": NaN}'), "at": NOW}
    assert cedar_decide(data, [call], compile_policy(data), compile_schema(data)) == ["deny"]
    assert decide(data, **call).outcome == "deny"


def test_a_tool_key_names_one_tool():
    data = _one_tool({}, server="io.github.acme/payroll", tool="read")
    data["servers"]["io.github.acme"] = {"status": "active"}
    call = {"issuer": IDP, "subject": "bot", "server": "io.github.acme", "tool": "payroll/read",
            "arguments": {}, "at": NOW}
    assert cedar_decide(data, [call], compile_policy(data), compile_schema(data)) == ["deny"]
    assert decide(data, **call).outcome == "deny"


class _Result:
    def __init__(self, allowed, ids, errors=()):
        self.allowed = allowed
        self.diagnostics = type("D", (), {
            "reasons": [f"policy{i}" for i in range(len(ids))],
            "id_annotations_by_reason": {f"policy{i}": x for i, x in enumerate(ids)},
            "errors": list(errors)})()


@pytest.mark.parametrize(("result", "outcome"), [
    (_Result(True, ["grant-7"]), "allow"),
    (_Result(True, ["approval-grant-7", "grant-8"]), "allow"),
    (_Result(True, ["approval-grant-7", "approval-grant-8"]), "escalate"),
    (_Result(False, ["agent-old"]), "deny"),
    (_Result(False, []), "deny"),
    (_Result(True, ["grant-7"], ["type error"]), "deny"),
    (None, "deny"),
])
def test_the_outcome_follows_the_determining_policies(result, outcome):
    assert cedar_outcome(result) == outcome
