"""Per-tool argument constraints: a small JSON-Schema subset, validated and evaluated.

Shape: ``{tool name: {argument name: {keyword: value, …}}}`` with the keywords ``enum``,
``const``, ``minimum``, ``maximum``, ``maxLength`` and ``pattern``, and two canonicalising
primitives: ``within`` (a path that, resolved lexically, stays inside one of some roots) and
``url`` (a URL whose scheme, host and port are on allow-lists), both in
gateway/constraint_values.py. The same shape serves as a grant's approval condition.
:func:`validate_against_schemas` checks a document against the tools' input schemas.
Pure Python: the control-plane validator, the compiler, the reference gateway and the tests
share it, so a keyword means one thing everywhere.
"""

from __future__ import annotations

import math
import re
from typing import Any

import regex

from gateway.constraint_values import (
    ConstraintError,
    check_url,
    check_within,
    validate_url_rule,
    validate_within,
)

KEYWORDS = {"enum", "const", "minimum", "maximum", "maxLength", "pattern", "within", "url"}
# The bundle schema version that introduced each keyword a version-1 gateway does not know. A
# bundle whose grants use one is version 2, so that a gateway that reads only version 1 refuses
# it (and keeps its last good bundle) instead of skipping a check it cannot run.
KEYWORD_SINCE = {"within": 2, "url": 2}
ON_BEHALF_OF_GROUP_SINCE = 3  # the grant term on_behalf_of_group (delegation)
# What each keyword can apply to, in JSON Schema type names (enum and const: any type).
STRING_KEYWORDS = ("maxLength", "pattern", "within", "url")
NUMBER_KEYWORDS = ("minimum", "maximum")
MAX_PATTERN_LENGTH = 500
# I-JSON (RFC 7493 §2.2): numbers beyond ±(2**53 − 1) are not exact in every JSON reader. Stored,
# they come back as other numbers (PostgreSQL jsonb turns the float 2.577198606988855e16 into the
# integer 25771986069888550; SQLite turns -2**63 - 1 into -2**63), and a gateway in JavaScript
# or CEL would read yet another. A bound the gateway compares against must be the number written.
MAX_EXACT_NUMBER = 2**53 - 1
# Patterns run on agent-controlled text: a catastrophic-backtracking pattern is cut off after this
# long and the check fails closed (a constraint is violated, an approval condition matches).
PATTERN_TIMEOUT_SECONDS = 0.05


class Undecidable(Exception):
    """A check that could not be completed (a pattern that ran out of time)."""


def _is_number(value: Any) -> bool:
    """A JSON number: not a bool, and finite (``json.loads`` accepts NaN and Infinity)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return not isinstance(value, float) or math.isfinite(value)


def json_equal(a: Any, b: Any) -> bool:
    """Equality as JSON means it: ``true`` is not ``1``; ``1`` equals ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if _is_number(a) and _is_number(b):
        return a == b
    return type(a) is type(b) and a == b


def _search(pattern: str, value: str) -> bool:
    try:
        return regex.search(pattern, value, timeout=PATTERN_TIMEOUT_SECONDS) is not None
    except TimeoutError:
        raise Undecidable(f"pattern {pattern!r} took too long on this value") from None


def validate_constraints(doc: Any, *, tools: set[str] | None = None, root: str = "") -> None:
    """Raise ConstraintError naming the first bad part; ``tools`` limits the tool names."""
    if not isinstance(doc, dict):
        raise ConstraintError(root or "constraints", "must be an object keyed by tool name")
    for tool, args in doc.items():
        where = f"{root}.{tool}" if root else tool
        _check_json(tool, where)
        if tools is not None and tool not in tools:
            raise ConstraintError(where, "no such tool in this scope")
        if not isinstance(args, dict):
            raise ConstraintError(where, "must be an object keyed by argument name")
        for arg, rules in args.items():
            at = f"{where}.{arg}"
            _check_json(arg, at)
            if not isinstance(rules, dict) or not rules:
                raise ConstraintError(at, "must be a non-empty object of checks")
            unknown = set(rules) - KEYWORDS
            if unknown:
                raise ConstraintError(
                    f"{at}.{sorted(unknown)[0]}",
                    f"unsupported keyword; use one of {', '.join(sorted(KEYWORDS))}",
                )
            for keyword, value in rules.items():
                _check_json(value, f"{at}.{keyword}")
            _validate_rules(at, rules)


def _check_json(value: Any, at: str) -> None:
    """What json.loads accepts but JSON cannot carry (NaN, Infinity, a lone surrogate), cannot
    carry exactly (a number beyond ±(2**53 − 1)) or PostgreSQL jsonb cannot store (the NUL
    character) would be refused when the grant is stored, come back changed, or break
    publishing."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConstraintError(at, "must be JSON: NaN and Infinity are not numbers")
    if _is_number(value) and abs(value) > MAX_EXACT_NUMBER:
        raise ConstraintError(
            at, f"numbers must lie within ±{MAX_EXACT_NUMBER} (2**53 − 1), the range every JSON "
                "reader holds exactly")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ConstraintError(at, "must be valid Unicode text") from None
        if "\0" in value:
            raise ConstraintError(at, "must not contain the NUL character")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_json(key, at)
            _check_json(item, at)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, at)


def _validate_rules(at: str, rules: dict) -> None:
    if "enum" in rules and (not isinstance(rules["enum"], list) or not rules["enum"]):
        raise ConstraintError(f"{at}.enum", "must be a non-empty list")
    for key in ("minimum", "maximum"):
        if key in rules and not _is_number(rules[key]):
            raise ConstraintError(f"{at}.{key}", "must be a number")
    if "minimum" in rules and "maximum" in rules and rules["minimum"] > rules["maximum"]:
        raise ConstraintError(f"{at}.minimum", "is greater than maximum")
    if "maxLength" in rules and (
        not isinstance(rules["maxLength"], int)
        or isinstance(rules["maxLength"], bool)
        or rules["maxLength"] < 0
    ):
        raise ConstraintError(f"{at}.maxLength", "must be a non-negative integer")
    if "pattern" in rules:
        pattern = rules["pattern"]
        if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN_LENGTH:
            raise ConstraintError(
                f"{at}.pattern",
                f"must be a regular expression of at most {MAX_PATTERN_LENGTH} characters",
            )
        try:
            re.compile(pattern)
            regex.compile(pattern)
        except (re.error, regex.error) as exc:
            raise ConstraintError(f"{at}.pattern", f"invalid regular expression ({exc})") from None
    if "within" in rules:
        validate_within(f"{at}.within", rules["within"])
    if "url" in rules:
        validate_url_rule(f"{at}.url", rules["url"])


def check_value(rules: dict, value: Any) -> str | None:
    """None when ``value`` satisfies every rule, else why not (Undecidable: could not tell).

    A keyword this code does not know (a bundle from a newer control plane) cannot be checked:
    Undecidable, so a constraint fails closed and an approval condition counts as matching."""
    unknown = set(rules) - KEYWORDS
    if unknown:
        raise Undecidable(f"this gateway does not implement the check {sorted(unknown)[0]!r}")
    if "const" in rules and not json_equal(value, rules["const"]):
        return f"must equal {rules['const']!r}"
    if "enum" in rules and not any(json_equal(value, option) for option in rules["enum"]):
        return f"must be one of {rules['enum']!r}"
    if "minimum" in rules and (not _is_number(value) or value < rules["minimum"]):
        return f"must be a number ≥ {rules['minimum']}"
    if "maximum" in rules and (not _is_number(value) or value > rules["maximum"]):
        return f"must be a number ≤ {rules['maximum']}"
    if "maxLength" in rules and (not isinstance(value, str) or len(value) > rules["maxLength"]):
        return f"must be a string of at most {rules['maxLength']} characters"
    if "pattern" in rules and (
        not isinstance(value, str) or not _search(rules["pattern"], value)
    ):
        return f"must match {rules['pattern']!r}"
    if "within" in rules:
        reason = check_within(rules["within"], value)
        if reason:
            return reason
    if "url" in rules:
        reason = check_url(rules["url"], value)
        if reason:
            return reason
    return None


def violations(doc: dict, tool: str, arguments: dict) -> list[str]:
    """Every failed check of ``tool``'s constraints against the call's ``arguments``.

    A constrained argument that is absent fails (a constraint cannot be dodged by omission).
    """
    problems = []
    for arg, rules in doc.get(tool, {}).items():
        if arg not in arguments:
            problems.append(f"{arg}: required by the grant's constraints")
            continue
        try:
            reason = check_value(rules, arguments[arg])
        except Undecidable as exc:
            reason = f"could not be checked ({exc})"
        if reason:
            problems.append(f"{arg}: {reason}")
    return problems


def matches(doc: dict, tool: str, arguments: dict) -> bool:
    """For approval conditions: True when the tool has a condition and all of it holds. A part
    that cannot be decided counts as holding: when in doubt, a human looks at the call."""
    rules_by_arg = doc.get(tool)
    if not rules_by_arg:
        return False
    for arg, rules in rules_by_arg.items():
        if arg not in arguments:
            return False
        try:
            if check_value(rules, arguments[arg]) is not None:
                return False
        except Undecidable:
            continue
    return True


# --- Against the tools' input schemas ---------------------------------------------------------

_JSON_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: _is_number(v) and v == int(v),
    "number": _is_number,
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def declared_types(schema: Any) -> set[str] | None:
    """The JSON types an argument's schema declares (``type``, or the union over ``anyOf`` /
    ``oneOf`` branches, as pydantic writes ``str | None``); None when it does not say."""
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind} if kind in _JSON_TYPES else None
    if isinstance(kind, list) and kind and all(k in _JSON_TYPES for k in kind):
        return set(kind)
    if kind is not None:
        return None
    for combinator in ("anyOf", "oneOf"):
        branches = schema.get(combinator)
        if isinstance(branches, list) and branches:
            union: set[str] = set()
            for branch in branches:
                types = declared_types(branch)
                if types is None:
                    return None
                union |= types
            return union
    return None


def argument_schema(input_schema: Any, arg: str) -> tuple[bool, Any]:
    """``(known, schema of the argument)``: known is False when the tool's input schema lists
    its arguments (``properties``) without ``arg`` and does not explicitly take others
    (``additionalProperties``: true or a schema). A schema that lists nothing says nothing."""
    if not isinstance(input_schema, dict):
        return True, None
    properties = input_schema.get("properties")
    extra = input_schema.get("additionalProperties")
    if isinstance(properties, dict) and arg in properties:
        return True, properties[arg]
    if extra is True or isinstance(extra, dict):
        return True, extra if isinstance(extra, dict) else None
    if isinstance(properties, dict) or extra is False:
        return False, None
    return True, None


def _type_problem(keyword: str, value: Any, types: set[str]) -> str | None:
    shown = " or ".join(sorted(types))
    if keyword in STRING_KEYWORDS and "string" not in types:
        return f"applies to strings, but the tool declares this argument as {shown}"
    if keyword in NUMBER_KEYWORDS and not types & {"number", "integer"}:
        return f"applies to numbers, but the tool declares this argument as {shown}"
    options = [value] if keyword == "const" else value if keyword == "enum" else []
    for option in options:
        if not any(_JSON_TYPES[t](option) for t in types):
            return f"{option!r} can never match: the tool declares this argument as {shown}"
    return None


def validate_against_schemas(doc: dict, schemas: dict[str, list[Any]], *, root: str = "") -> None:
    """Raise ConstraintError when ``doc`` (already valid) names an argument a tool does not
    have, or uses a keyword that cannot apply to the type the tool declares for it.

    ``schemas`` maps a tool name to the input schemas of every tool of that name the
    constraints apply to (a scope may hold same-named tools of several servers): the check
    must hold for each."""
    for tool, args in doc.items():
        for arg, rules in args.items():
            at = f"{root}.{tool}.{arg}" if root else f"{tool}.{arg}"
            for input_schema in schemas.get(tool, []):
                known, schema = argument_schema(input_schema, arg)
                if not known:
                    listed = sorted(input_schema.get("properties") or {})
                    more = ", …" if len(listed) > 10 else ""
                    hint = (f" (it has {', '.join(listed[:10])}{more})" if listed
                            else " (it takes none)")
                    raise ConstraintError(at, f"the tool's input schema has no argument "
                                              f"{arg!r}{hint}")
                types = declared_types(schema)
                if types is None:
                    continue
                for keyword in sorted(rules):
                    problem = _type_problem(keyword, rules[keyword], types)
                    if problem:
                        raise ConstraintError(f"{at}.{keyword}", problem)


def schema_version_for(grants: list[dict]) -> int:
    """The bundle schema version that ``grants`` (data.json's) need: 1, or the highest version
    that introduced a keyword their argument constraints or approval conditions use, or 3 when
    a grant requires the person an agent acts for to be in a group (``on_behalf_of_group``): a
    gateway that cannot check it refuses the bundle instead of ignoring the requirement."""
    version = 1
    for grant in grants:
        if grant.get("on_behalf_of_group"):
            version = max(version, ON_BEHALF_OF_GROUP_SINCE)
        for doc in (grant.get("argument_constraints") or {}, grant.get("approval_condition") or {}):
            for args in doc.values():
                for rules in (args or {}).values():
                    for keyword in rules:
                        version = max(version, KEYWORD_SINCE.get(keyword, 1))
    return version
