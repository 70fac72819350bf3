"""A bundle's ``mcp/data.json`` → its ``mcp/policy.cedar`` and ``mcp/schema.cedarschema``.

Pure Python, no Django: it reads only the parsed data.json document, so the bundle builder, a
gateway and the tests share it. ``compile_policy`` and ``compile_schema`` express the decisions
of ``gateway.decision.decide`` as a Cedar policy set; ``cedar_request`` and ``cedar_outcome``
are what a gateway needs to evaluate that policy set for one call. Both texts are
deterministic (everything is sorted, nothing depends on the clock) and pure ASCII: every string
from the registry (tool names come from third-party servers) is written by ``cedar_string``,
which escapes everything outside printable ASCII, so a name can neither break out of a literal
nor hide a bidirectional-text trick from the auditor reading the file.

Model (namespace ``Mcp``):

- Principal ``Mcp::Agent::"<agent>"``. The (issuer, subject) → agent mapping happens before
  Cedar, as in ``decide()``: an unknown principal is denied without asking Cedar
  (``cedar_request`` returns None).
- Resource ``Mcp::Tool::"<server>/<tool>"`` (attributes ``name``, ``server`` and the pinned
  ``definition_sha256``), child of ``Mcp::Server::"<server>"`` and of every
  ``Mcp::Scope::"<scope>"`` listing it. ``cedar_request`` builds these entities from data.json;
  a tool is in its scopes only when it is one of the bundle's approved ``tools``.
- Action ``Mcp::Action::"call_tool"``.
- Context: ``now`` (Unix seconds, floored), ``clock`` (for every time zone a window of the bundle
  uses: the local ``day``, 0 = Monday, and ``minute`` of the day), ``arguments`` (one ``Value``
  per argument name that some constraint or condition of the bundle mentions, when the call
  passes it), optionally ``live_sha256`` (the tool definition the gateway sees) and optionally
  ``usage`` (per grant with limits: calls in the last ``minute`` and this ``day``).

An argument ``Value`` describes a JSON value so that the policy can test it without type
errors: ``json`` (canonical JSON, ASCII, integral numbers written as integers, so that equal
numbers are equal strings), and when it applies ``string`` (the string itself), ``length`` (in
code points, as JSON Schema counts), ``floor`` and ``ceil`` (the number rounded down and up,
saturated to the Long range) and ``order`` (the number as a double, mapped to a Long in the same
order). ``minimum: 10`` becomes ``floor >= 10`` and ``maximum: 100`` becomes ``ceil <= 100``
(exact for every number); a bound that is not an integer (or not a Long) is compared through
``order``. ``const`` and ``enum`` compare ``string`` (strings) or ``json`` (anything else).

Policies: default deny. One ``forbid`` per agent that is not active, per withheld
(quarantined/blocked) tool and per server that is not active, and one forbidding a tool whose
live definition differs from the pinned one. Per grant, a ``permit`` with ``@id("grant-<id>")``
for the calls that need no approval and/or one with ``@id("approval-grant-<id>")`` and
``@approval("required")`` for those that do (approval mode ``when`` gives both, split by the
condition: ``unless`` / ``when``). ``cedar_outcome``: Allow decided by at least one permit that is
not an approval permit → allow; Allow decided by approval permits only → escalate; anything else
(Deny, no decision, evaluation errors) → deny.

Not expressed (Cedar has no regular expressions): the ``pattern`` keyword. In an argument
constraint it is left out (the policy is more permissive than ``decide()`` there); in an approval
condition it is taken as matching (the policy escalates more). The policy file's header and the
grant's comment say so, and a gateway must also run ``decide()`` for such bundles. Rounding is
conservative where data.json could be finer than the encoding (an expiry with fractional
seconds, a window bound with seconds); the compiler writes neither. A bound beyond the Long
range compares as a double (so an integer argument beyond ±2^53 may differ from Python's exact
comparison by rounding); JSON ``true`` is not the number 1 (``decide()`` compares with Python's
``==``, where it is); NaN has no numeric view, so it fails every bound.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, time
from functools import lru_cache
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import orjson

from gateway.decision import tool_key

NAMESPACE = "Mcp"
ACTION = "call_tool"
GRANT_PREFIX = "grant-"
APPROVAL_PREFIX = "approval-grant-"
EXPRESSED_KEYWORDS = ("const", "enum", "maxLength", "maximum", "minimum")
LONG_MAX = 2**63 - 1

Usage = Callable[[str], tuple[int, int]]


# --- Literals ---------------------------------------------------------------------------------


@lru_cache(maxsize=1 << 16)
def cedar_string(value: str) -> str:
    """``value`` as a Cedar string literal: quoted, ASCII only, every other character escaped.
    (Cached: a policy repeats the same agent, scope and tool names many times.)"""
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'  # the common case: nothing to escape
    out = ['"']
    for char in value:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif 0xD800 <= code <= 0xDFFF:
            raise ValueError(f"{value!r} contains a lone surrogate, which Cedar cannot represent")
        else:
            out.append(f"\\u{{{code:x}}}")
    out.append('"')
    return "".join(out)


def _uid(kind: str, name: str) -> str:
    return f"{NAMESPACE}::{kind}::{cedar_string(name)}"


def _comment_json(value: Any) -> str:
    """A JSON rendering for comments: ASCII, one line, so a comment cannot end early."""
    try:
        text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        text = ""
    if text and text.isascii():
        return text  # no newline possible: orjson escapes control characters
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _normalise(value: Any) -> Any:
    """Integral floats as integers, recursively: ``1 == 1.0`` in JSON, so in ``json`` too."""
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return int(value)
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    return value


def canonical_value(value: Any) -> str:
    """The ``json`` view of an argument: equal JSON values give equal strings."""
    return json.dumps(_normalise(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def order_key(number: float) -> int:
    """A Long in the same order as ``number`` read as a double (−0.0 and 0.0 are equal)."""
    try:
        as_double = float(number)
    except OverflowError:
        as_double = math.inf if number > 0 else -math.inf
    (bits,) = struct.unpack("<q", struct.pack("<d", as_double))
    return bits if bits >= 0 else -(bits & LONG_MAX)


def _saturate(number: int) -> int:
    return max(-LONG_MAX, min(LONG_MAX, number))


def cedar_value(value: Any) -> dict[str, Any]:
    """The ``Mcp::Value`` record describing one argument value."""
    record: dict[str, Any] = {"json": canonical_value(value)}
    if isinstance(value, str):
        record["length"] = len(value)
        if _utf8(value):
            record["string"] = value
    elif _is_number(value) and not math.isnan(value):
        if math.isinf(value):
            record["floor"] = record["ceil"] = LONG_MAX if value > 0 else -LONG_MAX
        else:
            record["floor"] = _saturate(math.floor(value))
            record["ceil"] = _saturate(math.ceil(value))
        record["order"] = order_key(value)
    return record


# --- Reading data.json ------------------------------------------------------------------------


def _instant(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"expiry {value!r} has no time zone")
    return parsed


def _unix_seconds(at: datetime) -> int:
    """Whole seconds since the epoch, rounded down (exact, no float)."""
    delta = at - datetime(1970, 1, 1, tzinfo=UTC)
    return delta.days * 86400 + delta.seconds


def _minutes(value: time) -> float:
    return value.hour * 60 + value.minute + (value.second + value.microsecond / 1e6) / 60


def _grant_key(grant: Mapping[str, Any]) -> tuple[int, str]:
    return (len(grant["id"]), grant["id"])  # numeric ids in numeric order


def _time_zones(data: Mapping[str, Any]) -> list[str]:
    return sorted({g["window"]["tz"] for g in data.get("grants", []) if g.get("window")})


def _argument_names(data: Mapping[str, Any]) -> list[str]:
    names: set[str] = set()
    for grant in data.get("grants", []):
        for doc in (grant.get("argument_constraints") or {}, grant.get("approval_condition") or {}):
            for args in doc.values():
                names.update(args)
    return sorted(names)


def _limited_grants(data: Mapping[str, Any]) -> list[str]:
    return sorted(
        {g["id"] for g in data.get("grants", [])
         if g.get("calls_per_minute") is not None or g.get("calls_per_day") is not None},
        key=lambda gid: (len(gid), gid),
    )


# --- Schema -----------------------------------------------------------------------------------


def _record(fields: Iterable[tuple[str, str]], indent: str) -> str:
    lines = [f"{indent}  {name}: {kind}," for name, kind in fields]
    if not lines:
        return "{}"
    return "{\n" + "\n".join(lines) + f"\n{indent}}}"


def compile_schema(data: Mapping[str, Any]) -> str:
    """The ``mcp/schema.cedarschema`` text for ``data`` (Cedar human-readable schema format)."""
    value = _record([
        ('"json"', "String"), ('"string"?', "String"), ('"length"?', "Long"),
        ('"floor"?', "Long"), ('"ceil"?', "Long"), ('"order"?', "Long"),
    ], "  ")
    clock = _record(
        [(cedar_string(tz), '{ "day": Long, "minute": Long }') for tz in _time_zones(data)],
        "      ",
    )
    arguments = _record(
        [(cedar_string(name) + "?", "Value") for name in _argument_names(data)], "      "
    )
    usage = _record(
        [(cedar_string(gid) + "?", '{ "minute": Long, "day": Long }')
         for gid in _limited_grants(data)],
        "      ",
    )
    return (
        "// Generated from mcp/data.json by Tollgate (bundles/cedar.py). Do not edit.\n"
        f"namespace {NAMESPACE} {{\n"
        "  // An argument value, described so that policies can test it without type errors.\n"
        f"  type Value = {value};\n"
        "  entity Agent;\n"
        "  entity Server;\n"
        "  entity Scope;\n"
        '  entity Tool in [Server, Scope] { "name": String, "server": String, '
        '"definition_sha256"?: String };\n'
        f"  action {cedar_string(ACTION)} appliesTo {{\n"
        "    principal: [Agent],\n"
        "    resource: [Tool],\n"
        "    context: {\n"
        '      "now": Long,\n'
        '      "live_sha256"?: String,\n'
        f'      "clock": {clock},\n'
        f'      "arguments": {arguments},\n'
        f'      "usage"?: {usage},\n'
        "    },\n"
        "  };\n"
        "}\n"
    )


# --- Policy -----------------------------------------------------------------------------------


def _arg(name: str) -> str:
    return f"context.arguments[{cedar_string(name)}]"


def _equals_any(name: str, values: list[Any]) -> str:
    """The argument equals one of ``values`` (JSON equality)."""
    strings = sorted({v for v in values if isinstance(v, str) and _utf8(v)})
    others = sorted({canonical_value(v) for v in values if not (isinstance(v, str) and _utf8(v))})
    arg, tests = _arg(name), []
    if len(strings) == 1:
        tests.append(f"({arg} has string && {arg}.string == {cedar_string(strings[0])})")
    elif strings:
        items = ", ".join(cedar_string(s) for s in strings)
        tests.append(f"({arg} has string && [{items}].contains({arg}.string))")
    if len(others) == 1:
        tests.append(f"{arg}.json == {cedar_string(others[0])}")
    elif others:
        tests.append(f"[{', '.join(cedar_string(s) for s in others)}].contains({arg}.json)")
    if not tests:
        return "false"  # an empty enum admits nothing
    return tests[0] if len(tests) == 1 else "(" + " || ".join(tests) + ")"


def _bound(name: str, bound: float, op: str) -> str:
    arg = _arg(name)
    if _is_long(bound):
        view = "floor" if op == ">=" else "ceil"
        return f"{arg} has {view} && {arg}.{view} {op} {int(bound)}"
    return f"{arg} has order && {arg}.order {op} {order_key(bound)}"


def _rules(name: str, rules: Mapping[str, Any]) -> list[str]:
    """Cedar tests for one argument's rules; ``pattern`` (and unknown keywords) are left out."""
    tests = [f"context.arguments has {cedar_string(name)}"]
    if "const" in rules:
        tests.append(_equals_any(name, [rules["const"]]))
    if "enum" in rules:
        tests.append(_equals_any(name, list(rules["enum"])))
    if "minimum" in rules:
        tests.append(_bound(name, rules["minimum"], ">="))
    if "maximum" in rules:
        tests.append(_bound(name, rules["maximum"], "<="))
    if "maxLength" in rules:
        arg = _arg(name)
        tests.append(f"{arg} has length && {arg}.length <= {int(rules['maxLength'])}")
    return tests


def _all_hold(args: Mapping[str, Mapping[str, Any]]) -> str:
    """Every constrained argument is present and satisfies its rules (``violations() == []``)."""
    tests = [test for name in sorted(args) for test in _rules(name, args[name])]
    return " &&\n    ".join(tests) if tests else "true"


def _unexpressed(doc: Mapping[str, Any], names: Iterable[str]) -> list[str]:
    wanted = names if isinstance(names, set | frozenset) else set(names)
    return sorted(
        f"{cedar_string(tool)}.{cedar_string(arg)}"
        for tool, args in doc.items() if tool in wanted for arg, rules in (args or {}).items()
        if set(rules) - set(EXPRESSED_KEYWORDS)
    )


def _is_long(bound: Any) -> bool:
    finite = not isinstance(bound, float) or math.isfinite(bound)
    # floor/ceil saturate at ±LONG_MAX, so they are exact against any integer bound inside it.
    return finite and bound == int(bound) and abs(int(bound)) < LONG_MAX


def _order_bounds(docs: list[Mapping[str, Any]], names: list[str]) -> list[str]:
    """``<bound> = <order key>`` for the bounds compared through ``order`` (for the reader)."""
    wanted = set(names)
    bounds = {rules[k] for doc in docs for n, args in doc.items() if n in wanted
              for rules in (args or {}).values()
              for k in ("minimum", "maximum") if k in rules and not _is_long(rules[k])}
    return [f"{b!r} = {order_key(b)}" for b in sorted(bounds)]


def unexpressed_grants(data: Mapping[str, Any]) -> list[str]:
    """Ids of the grants whose terms the policy cannot fully express (``pattern``): for calls
    they may decide, a gateway must also run ``decide()``."""
    return sorted(
        (g["id"] for g in data.get("grants", [])
         if any(set(rules) - set(EXPRESSED_KEYWORDS)
                for doc in (g.get("argument_constraints") or {}, g.get("approval_condition") or {})
                for args in doc.values() for rules in args.values())),
        key=lambda gid: (len(gid), gid),
    )


def _window(window: Mapping[str, Any]) -> str:
    """The call's local time is inside the window, read as ``decide()`` reads it."""
    clock = f"context.clock[{cedar_string(window['tz'])}]"
    start, end = time.fromisoformat(window["start"]), time.fromisoformat(window["end"])
    # Whole minutes are exact; a bound with seconds is rounded towards a smaller window.
    first, stop = math.ceil(_minutes(start)), math.floor(_minutes(end))
    days = sorted(set(window.get("days") or []))

    def on(day_list: list[int]) -> list[str]:
        if not day_list:
            return []
        return [f"[{', '.join(str(d) for d in day_list)}].contains({clock}.day)"]

    if start <= end:
        return " && ".join([f"{clock}.minute >= {first}", f"{clock}.minute < {stop}", *on(days)])
    # Overnight: the hours after midnight belong to the window that started the day before.
    evening = " && ".join([f"{clock}.minute >= {first}", *on(days)])
    morning = " && ".join([f"{clock}.minute < {stop}", *on(sorted((d + 1) % 7 for d in days))])
    return f"({evening}) || ({morning})"


def _usage(grant: Mapping[str, Any]) -> str | None:
    limits = [(view, grant.get(key)) for view, key in
              (("minute", "calls_per_minute"), ("day", "calls_per_day"))]
    limits = [(view, limit) for view, limit in limits if limit is not None]
    if not limits:
        return None
    counts = f"context.usage[{cedar_string(grant['id'])}]"
    tests = " && ".join(f"{counts}.{view} < {int(limit)}" for view, limit in limits)
    # Without counts (the gateway did not pass usage) the limits are not checked, as in decide().
    return (f"if context has usage then context.usage has {cedar_string(grant['id'])} && "
            f"{tests} else true")


def _permit(grant: Mapping[str, Any], ident: str, head: list[str], clauses: list[str], *,
            approval: bool) -> str:
    lines = [*head, f"@id({cedar_string(ident)})"]
    if approval:
        lines.append('@approval("required")')
    lines += [
        "permit (",
        f"  principal == {_uid('Agent', grant['agent'])},",
        f"  action == {_uid('Action', ACTION)},",
        f"  resource in {_uid('Scope', grant['scope'])}",
        ")",
        *clauses,
    ]
    lines[-1] += ";"
    return "\n".join(lines)


def _scope_tool_names(data: Mapping[str, Any], scope: Mapping[str, Any]) -> list[str]:
    return sorted({data["tools"][k]["name"] for k in scope["tools"] if k in data["tools"]})


def _grant_policies(data: Mapping[str, Any], grant: Mapping[str, Any],
                    names_by_scope: dict[str, list[str]] | None = None) -> list[str]:
    gid, scope = grant["id"], data["scopes"].get(grant["scope"])
    header = [
        f"// Grant {cedar_string(gid)}: agent {cedar_string(grant['agent'])}, "
        f"scope {cedar_string(grant['scope'])}, approval {cedar_string(grant['approval_mode'])}"
    ]
    if scope is None:
        return ["\n".join([*header, "// Its scope is not in the bundle: it permits nothing."])]
    if names_by_scope is None:
        names = _scope_tool_names(data, scope)
    else:  # computed once per scope, not once per grant
        names = names_by_scope.get(grant["scope"])
        if names is None:
            names = names_by_scope[grant["scope"]] = _scope_tool_names(data, scope)
    if not names:
        return ["\n".join([*header, "// No tool of its scope is in the bundle: it permits "
                                    "nothing."])]
    constraints = grant.get("argument_constraints") or {}
    condition = grant.get("approval_condition") or {}
    for key, value in (("argument constraints", constraints), ("approval condition", condition),
                       ("window", grant.get("window")), ("expires at", grant.get("expires_at"))):
        if value:
            header.append(f"// {key}: {_comment_json(value)}")
    orders = _order_bounds([constraints, condition], names) if constraints or condition else []
    if orders:
        header.append("// as order: " + ", ".join(orders))
    loose = _unexpressed(constraints, names) if constraints else []
    if loose:
        header.append("// NOT CHECKED HERE (regular expressions), the gateway must run decide(): "
                      "argument constraints on " + ", ".join(loose))
    clauses = []
    if grant.get("expires_at") is not None:
        clauses.append(f"when {{ context.now < {_unix_seconds(_instant(grant['expires_at']))} }}")
    if grant.get("window"):
        clauses.append(f"when {{ {_window(grant['window'])} }}")
    usage = _usage(grant)
    if usage:
        clauses.append(f"when {{ {usage} }}")
    for name in (sorted(n for n in constraints if n in set(names)) if constraints else ()):
        if constraints.get(name):
            clauses.append(f"when {{\n  resource.name != {cedar_string(name)} || (\n    "
                           f"{_all_hold(constraints[name])}\n  )\n}}")

    mode = grant["approval_mode"]
    conditional = [n for n in names if condition.get(n)] if mode == "when" else []
    if conditional:
        loose = _unexpressed(condition, conditional)
        if loose:
            header.append("// Approval condition taken as matching where it needs a regular "
                          "expression: " + ", ".join(loose))
        matched = " ||\n  ".join(
            f"(resource.name == {cedar_string(n)} && (\n    {_all_hold(condition[n])}\n  ))"
            for n in conditional
        )
        policies = [
            _permit(grant, f"{GRANT_PREFIX}{gid}", header,
                    [*clauses, f"unless {{\n  {matched}\n}}"], approval=False),
            _permit(grant, f"{APPROVAL_PREFIX}{gid}", [],
                    [*clauses, f"when {{\n  {matched}\n}}"],
                    approval=True),
        ]
    elif mode == "always":
        policies = [_permit(grant, f"{APPROVAL_PREFIX}{gid}", header, clauses, approval=True)]
    else:  # never, or "when" without a condition for these tools: decide() allows
        policies = [_permit(grant, f"{GRANT_PREFIX}{gid}", header, clauses, approval=False)]
    return policies


def compile_policy(data: Mapping[str, Any]) -> str:
    """The ``mcp/policy.cedar`` text for ``data``: the decisions of ``decide()`` in Cedar."""
    blocks = [
        "// Generated from mcp/data.json by Tollgate (bundles/cedar.py). Do not edit.\n"
        f"// Tenant {cedar_string(str(data.get('tenant', '')))}, "
        f"data schema version {int(data.get('schema_version', 0))}.\n"
        "//\n"
        "// Default deny: only a grant's permit allows a call, and only if no forbid applies.\n"
        '// A permit annotated @approval("required") escalates the call to a person instead.\n'
        "// The gateway maps (issuer, subject) to the agent before asking Cedar (unknown: deny),\n"
        "// builds the entities and context from data.json (see the schema) and counts usage.\n"
        "// Arguments arrive described (see Value in the schema): floor/ceil are the number\n"
        "// rounded down/up, order a double as a Long in the same order, length counts code\n"
        "// points, json is canonical JSON.\n"
        "// Not expressed here: `pattern` (regular expressions) in argument constraints and\n"
        "// approval conditions; for grants that use it the gateway must also run decide()."
    ]
    for name in sorted(data.get("agents", {})):
        status = data["agents"][name].get("status")
        if status != "active":
            blocks.append(
                f"// Agent {cedar_string(name)} is {cedar_string(str(status))}.\n"
                f"@id({cedar_string('agent-' + name)})\n"
                f"forbid (principal == {_uid('Agent', name)}, action, resource);"
            )
    for name in sorted(data.get("servers", {})):
        status = data["servers"][name].get("status")
        if status != "active":
            blocks.append(
                f"// Server {cedar_string(name)} is {cedar_string(str(status))}.\n"
                f"@id({cedar_string('server-' + name)})\n"
                f"forbid (principal, action, resource in {_uid('Server', name)});"
            )
    withheld = data.get("withheld_tools", {})
    for key in sorted(withheld):
        blocks.append(
            f"// Tool {cedar_string(key)} is {cedar_string(str(withheld[key]))}.\n"
            f"@id({cedar_string('tool-' + key)})\n"
            f"forbid (principal, action, resource == {_uid('Tool', key)});"
        )
    blocks.append(
        "// A tool whose live definition is not the pinned one (drift) is never called.\n"
        '@id("definition-drift")\n'
        "forbid (principal, action, resource)\n"
        "when { context has live_sha256 && resource has definition_sha256 &&\n"
        "       context.live_sha256 != resource.definition_sha256 };"
    )
    names_by_scope: dict[str, list[str]] = {}
    for grant in sorted(data.get("grants", []), key=_grant_key):
        blocks.extend(_grant_policies(data, grant, names_by_scope))
    return "\n\n".join(blocks) + "\n"


# --- Evaluating one call ----------------------------------------------------------------------


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
) -> CedarRequest | None:
    """The Cedar request and entities for one call; None when it is denied before Cedar."""
    if at.tzinfo is None:
        raise ValueError("the call's time must be timezone-aware")
    agent = data.get("principals", {}).get(issuer, {}).get(subject)
    if agent is None or agent not in data.get("agents", {}):
        return None
    if not all(_utf8(s) for s in (server, tool)):
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
        "now": _unix_seconds(at),
        "clock": {},
        "arguments": {
            name: cedar_value(arguments[name])
            for name in _argument_names(data) if name in arguments
        },
    }
    for tz in _time_zones(data):
        local = at.astimezone(ZoneInfo(tz))
        context["clock"][tz] = {"day": local.weekday(), "minute": local.hour * 60 + local.minute}
    if live_sha256 is not None:
        context["live_sha256"] = live_sha256
    if usage is not None:
        limited = set(_limited_grants(data))
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
