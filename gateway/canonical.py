"""The tool definition hash, as the gateway recomputes it from a live ``tools/list`` entry.

The control plane pins this hash when a tool is approved (``registry/tool_definition.py``,
``definition_sha256``) and ships it in ``mcp/data.json`` as ``tools[<server>/<tool>]
["definition_sha256"]``. A gateway hashes the upstream's CURRENT definition the same way and
refuses the call when the two differ: drift is caught at the edge. This module is the ONE
implementation of the rules (a cross-component contract): the control plane's
``registry/tool_definition.py`` calls it too, so the two sides cannot drift apart.

1. Take exactly the Tool keys ``name``, ``title``, ``description``, ``inputSchema``,
   ``outputSchema``, ``annotations`` (``icons``, ``_meta``, ``execution``… are ignored). A missing
   or ``null`` ``title``/``description`` is ``""``; a missing ``outputSchema`` is ``null``;
   missing or ``null`` ``annotations`` is ``{}``; top-level annotation keys whose value is
   ``null`` are dropped; unknown annotation keys are kept, as sent.
2. Serialise with ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
   allow_nan=False)`` and encode as UTF-8.
3. SHA-256, lower-case hex.

Pure Python, no Django. :func:`canonical_json` (rule 2 for any JSON value) is also THE
canonical JSON of the control plane: the audit chain hashes its events with it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any


def canonical_json(value: Any) -> bytes:
    """Rule 2 for any JSON value: sorted keys (by code point), no insignificant whitespace,
    UTF-8, and ValueError for NaN or an infinity (JSON cannot carry them)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def normalised_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    """Rule 1: the wire Tool reduced to the keys that are hashed, normalised (every key
    present, camelCase); ValueError for a malformed Tool. Values are not copied."""
    if not isinstance(tool, Mapping):
        raise ValueError(f"a tool must be a JSON object, not {type(tool).__name__}")
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("a tool has no name (or a name that is not a non-empty string)")
    title, description = tool.get("title"), tool.get("description")
    for key, value in (("title", title), ("description", description)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"tool {name!r}: {key} must be a string")
    input_schema = tool.get("inputSchema")
    if not isinstance(input_schema, Mapping):
        raise ValueError(f"tool {name!r}: inputSchema must be a JSON object")
    output_schema = tool.get("outputSchema")
    if output_schema is not None and not isinstance(output_schema, Mapping):
        raise ValueError(f"tool {name!r}: outputSchema must be a JSON object")
    annotations = tool.get("annotations")
    if annotations is None:
        annotations = {}
    if not isinstance(annotations, Mapping):
        raise ValueError(f"tool {name!r}: annotations must be a JSON object")
    payload = {
        "name": name,
        "title": title or "",
        "description": description or "",
        "inputSchema": dict(input_schema),
        "outputSchema": None if output_schema is None else dict(output_schema),
        "annotations": {key: value for key, value in annotations.items() if value is not None},
    }
    return payload


def canonical_bytes(tool: Mapping[str, Any]) -> bytes:
    """Rules 1 and 2: the canonical JSON bytes that are hashed; ValueError for a malformed
    Tool, a non-finite number anywhere in it (JSON cannot carry NaN or Infinity), a string
    that is not valid Unicode (a lone surrogate) or nesting too deep to serialise."""
    payload = normalised_tool(tool)
    try:
        _reject_non_finite(payload, payload["name"])
        return canonical_json(payload)
    except RecursionError:  # a malformed Tool like any other, not a crash of the caller
        raise ValueError(f"tool {payload['name']!r}: its definition is nested too deeply") \
            from None


def definition_sha256(tool: Mapping[str, Any]) -> str:
    """Lower-case hex SHA-256 of a wire Tool's canonical definition (rules above)."""
    return hashlib.sha256(canonical_bytes(tool)).hexdigest()


def _reject_non_finite(value: Any, name: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"tool {name!r}: its definition contains a non-finite number")
    if isinstance(value, Mapping):
        for item in value.values():
            _reject_non_finite(item, name)
    elif isinstance(value, list | tuple):
        for item in value:
            _reject_non_finite(item, name)
