"""Cedar literals, the ``Mcp::Value`` description of an argument, and the readings of
data.json that the policy and schema (bundles/cedar.py) and the request of one call
(bundles/cedar_request.py) share.

Pure Python, no Django. ``cedar_string`` writes every string that comes from the registry (tool
names come from third-party servers): quoted, pure ASCII, everything else escaped, so a name can
neither break out of a literal nor hide a bidirectional-text trick from the auditor reading the
file. ``cedar_value`` describes one JSON argument value so a policy can test it without type
errors (the model is described in bundles/cedar.py).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from datetime import UTC, datetime, time
from functools import lru_cache
from typing import Any

import orjson

NAMESPACE = "Mcp"
ACTION = "call_tool"
GRANT_PREFIX = "grant-"
APPROVAL_PREFIX = "approval-grant-"
EXPRESSED_KEYWORDS = ("const", "enum", "maxLength", "maximum", "minimum")
LONG_MAX = 2**63 - 1


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


def entity_uid(kind: str, name: str) -> str:
    """An entity reference in policy text: ``Mcp::<kind>::"<name>"``."""
    return f"{NAMESPACE}::{kind}::{cedar_string(name)}"


def comment_json(value: Any) -> str:
    """A JSON rendering for comments: ASCII, one line, so a comment cannot end early."""
    try:
        text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        text = ""
    if text and text.isascii():
        return text  # no newline possible: orjson escapes control characters
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def is_utf8(value: str) -> bool:
    """Whether ``value`` can be encoded (no lone surrogates): only then is it a Cedar string."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_number(value: Any) -> bool:
    """A JSON number (a boolean is not one)."""
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
        if is_utf8(value):
            record["string"] = value
    elif is_number(value) and not math.isnan(value):
        if math.isinf(value):
            record["floor"] = record["ceil"] = LONG_MAX if value > 0 else -LONG_MAX
        else:
            record["floor"] = _saturate(math.floor(value))
            record["ceil"] = _saturate(math.ceil(value))
        record["order"] = order_key(value)
    return record


# --- Reading data.json ------------------------------------------------------------------------


def parse_expiry(value: str) -> datetime:
    """A grant's ``expires_at`` (RFC 3339 with a time zone)."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"expiry {value!r} has no time zone")
    return parsed


def unix_seconds(at: datetime) -> int:
    """Whole seconds since the epoch, rounded down (exact, no float)."""
    delta = at - datetime(1970, 1, 1, tzinfo=UTC)
    return delta.days * 86400 + delta.seconds


def minute_of_day(value: time) -> float:
    """Minutes since midnight, with the fraction of the seconds."""
    return value.hour * 60 + value.minute + (value.second + value.microsecond / 1e6) / 60


def grant_key(grant: Mapping[str, Any]) -> tuple[int, str]:
    """The order grants are written in."""
    return (len(grant["id"]), grant["id"])  # numeric ids in numeric order


def time_zones(data: Mapping[str, Any]) -> list[str]:
    """The time zones of the bundle's windows (the context's ``clock``)."""
    return sorted({g["window"]["tz"] for g in data.get("grants", []) if g.get("window")})


def argument_names(data: Mapping[str, Any]) -> list[str]:
    """Every argument a constraint or condition names (the context's ``arguments``)."""
    names: set[str] = set()
    for grant in data.get("grants", []):
        for doc in (grant.get("argument_constraints") or {}, grant.get("approval_condition") or {}):
            for args in doc.values():
                names.update(args)
    return sorted(names)


def limited_grants(data: Mapping[str, Any]) -> list[str]:
    """Ids of the grants with call limits (the context's ``usage``)."""
    return sorted(
        {g["id"] for g in data.get("grants", [])
         if g.get("calls_per_minute") is not None or g.get("calls_per_day") is not None},
        key=lambda gid: (len(gid), gid),
    )
