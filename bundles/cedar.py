"""A bundle's ``mcp/data.json`` → its ``mcp/policy.cedar`` and ``mcp/schema.cedarschema``.

Pure Python, no Django: it reads only the parsed data.json document, so the bundle builder, a
gateway and the tests share it. ``compile_policy`` and ``compile_schema`` express the decisions
of ``gateway.decision.decide`` as a Cedar policy set; ``cedar_request`` and ``cedar_outcome``
(bundles/cedar_request.py) are what a gateway needs to evaluate that policy set for one call.
Both texts are deterministic (everything is sorted, nothing depends on the clock) and pure
ASCII: every string from the registry (tool names come from third-party servers) is written by
``cedar_string`` (bundles/cedar_values.py, with the other literals and the argument ``Value``),
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
  passes it), optionally ``live_sha256`` (the tool definition the gateway sees), optionally
  ``usage`` (per grant with limits: calls in the last ``minute`` and this ``day``) and, for a
  call the agent makes on behalf of a person (delegation, ``gateway.decision.resolve_caller``),
  ``on_behalf_of`` (``subject`` and ``groups``, a set). A grant with an
  ``on_behalf_of_group`` permits only when ``context.on_behalf_of.groups`` contains it.

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

Not expressed (Cedar has no regular expressions and no path or URL parsing): the ``pattern``,
``within`` and ``url`` keywords (and any keyword this module does not know). The policy fails
closed: a grant whose argument constraints on a tool use one permits NOTHING for that tool (a
``when { resource.name != "<tool>" }`` clause), so Cedar never allows a call ``decide()`` would
deny; a gateway that wants those calls must run ``decide()``. In an approval condition such a
keyword is taken as matching (the policy escalates more, never allows more). The policy file's
header and the grant's comment say so. Rounding is
conservative where data.json could be finer than the encoding (an expiry with fractional
seconds, a window bound with seconds); the compiler writes neither. A bound beyond the Long
range compares as a double (so an integer argument beyond ±2^53 may differ from Python's exact
comparison by rounding); JSON ``true`` is not the number 1 (``decide()`` compares with Python's
``==``, where it is); NaN has no numeric view, so it fails every bound.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import time
from typing import Any

from bundles.cedar_values import (
    ACTION,
    APPROVAL_PREFIX,
    EXPRESSED_KEYWORDS,
    GRANT_PREFIX,
    LONG_MAX,
    NAMESPACE,
    argument_names,
    canonical_value,
    cedar_string,
    comment_json,
    entity_uid,
    grant_key,
    is_utf8,
    limited_grants,
    minute_of_day,
    order_key,
    parse_expiry,
    time_zones,
    unix_seconds,
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
        [(cedar_string(tz), '{ "day": Long, "minute": Long }') for tz in time_zones(data)],
        "      ",
    )
    arguments = _record(
        [(cedar_string(name) + "?", "Value") for name in argument_names(data)], "      "
    )
    usage = _record(
        [(cedar_string(gid) + "?", '{ "minute": Long, "day": Long }')
         for gid in limited_grants(data)],
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
        '      "on_behalf_of"?: { "subject": String, "groups": Set<String> },\n'
        "    },\n"
        "  };\n"
        "}\n"
    )


# --- Policy -----------------------------------------------------------------------------------


def _arg(name: str) -> str:
    return f"context.arguments[{cedar_string(name)}]"


def _equals_any(name: str, values: list[Any]) -> str:
    """The argument equals one of ``values`` (JSON equality)."""
    strings = sorted({v for v in values if isinstance(v, str) and is_utf8(v)})
    others = sorted({canonical_value(v) for v in values if not (isinstance(v, str) and is_utf8(v))})
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
    """Ids of the grants whose terms the policy cannot fully express (``pattern``, ``within``,
    ``url``): Cedar denies (constraints) or escalates (approval conditions) calls through them
    that ``decide()`` may allow, so a gateway that wants those calls must run ``decide()``."""
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
    first, stop = math.ceil(minute_of_day(start)), math.floor(minute_of_day(end))
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
        f"  principal == {entity_uid('Agent', grant['agent'])},",
        f"  action == {entity_uid('Action', ACTION)},",
        f"  resource in {entity_uid('Scope', grant['scope'])}",
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
            header.append(f"// {key}: {comment_json(value)}")
    orders = _order_bounds([constraints, condition], names) if constraints or condition else []
    if orders:
        header.append("// as order: " + ", ".join(orders))
    loose = _unexpressed(constraints, names) if constraints else []
    if loose:
        header.append("// DENIED HERE (checks Cedar cannot express: pattern, within, url), only "
                      "decide() can allow: argument constraints on " + ", ".join(loose))
    clauses = []
    if grant.get("expires_at") is not None:
        expiry = unix_seconds(parse_expiry(grant["expires_at"]))
        clauses.append(f"when {{ context.now < {expiry} }}")
    if grant.get("window"):
        clauses.append(f"when {{ {_window(grant['window'])} }}")
    usage = _usage(grant)
    if usage:
        clauses.append(f"when {{ {usage} }}")
    group = grant.get("on_behalf_of_group")
    if group:
        header.append(f"// only on behalf of a member of {cedar_string(group)}")
        clauses.append(f"when {{ context has on_behalf_of && "
                       f"context.on_behalf_of.groups.contains({cedar_string(group)}) }}")
    for name in (sorted(n for n in constraints if n in set(names)) if constraints else ()):
        if not constraints.get(name):
            continue
        if _unexpressed(constraints, {name}):  # fail closed: this grant permits no call of it
            clauses.append(f"when {{ resource.name != {cedar_string(name)} }}")
        else:
            clauses.append(f"when {{\n  resource.name != {cedar_string(name)} || (\n    "
                           f"{_all_hold(constraints[name])}\n  )\n}}")

    mode = grant["approval_mode"]
    conditional = [n for n in names if condition.get(n)] if mode == "when" else []
    if conditional:
        loose = _unexpressed(condition, conditional)
        if loose:
            header.append("// Approval condition taken as matching where it needs a check Cedar "
                          "cannot express (pattern, within, url): " + ", ".join(loose))
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
        "// and, for an agent acting for a person, passes the person as context.on_behalf_of,\n"
        "// builds the entities and context from data.json (see the schema) and counts usage.\n"
        "// Arguments arrive described (see Value in the schema): floor/ceil are the number\n"
        "// rounded down/up, order a double as a Long in the same order, length counts code\n"
        "// points, json is canonical JSON.\n"
        "// Not expressed here: `pattern`, `within` and `url` (regular expressions, paths and\n"
        "// URLs). A grant whose argument constraints on a tool use them permits nothing for that\n"
        "// tool here (fail closed); in approval conditions they are taken as matching. For such\n"
        "// grants only decide() can allow."
    ]
    for name in sorted(data.get("agents", {})):
        status = data["agents"][name].get("status")
        if status != "active":
            blocks.append(
                f"// Agent {cedar_string(name)} is {cedar_string(str(status))}.\n"
                f"@id({cedar_string('agent-' + name)})\n"
                f"forbid (principal == {entity_uid('Agent', name)}, action, resource);"
            )
    for name in sorted(data.get("servers", {})):
        status = data["servers"][name].get("status")
        if status != "active":
            blocks.append(
                f"// Server {cedar_string(name)} is {cedar_string(str(status))}.\n"
                f"@id({cedar_string('server-' + name)})\n"
                f"forbid (principal, action, resource in {entity_uid('Server', name)});"
            )
    withheld = data.get("withheld_tools", {})
    for key in sorted(withheld):
        blocks.append(
            f"// Tool {cedar_string(key)} is {cedar_string(str(withheld[key]))}.\n"
            f"@id({cedar_string('tool-' + key)})\n"
            f"forbid (principal, action, resource == {entity_uid('Tool', key)});"
        )
    blocks.append(
        "// A tool whose live definition is not the pinned one (drift) is never called.\n"
        '@id("definition-drift")\n'
        "forbid (principal, action, resource)\n"
        "when { context has live_sha256 && resource has definition_sha256 &&\n"
        "       context.live_sha256 != resource.definition_sha256 };"
    )
    names_by_scope: dict[str, list[str]] = {}
    for grant in sorted(data.get("grants", []), key=grant_key):
        blocks.extend(_grant_policies(data, grant, names_by_scope))
    return "\n\n".join(blocks) + "\n"
