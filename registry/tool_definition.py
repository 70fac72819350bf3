"""A tool's definition as a server declared it, and the definition hash (a cross-component
contract, see :func:`definition_sha256`). Plain Python (no Django).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from gateway import canonical

CANONICAL_KEYS: Final = (
    "name",
    "title",
    "description",
    "inputSchema",
    "outputSchema",
    "annotations",
)
"""The wire keys of a Tool that the definition hash covers (and nothing else: not icons, _meta)."""


@dataclass(frozen=True)
class ToolDefinition:
    """One tool as a server declared it, normalised for hashing (see :func:`definition_sha256`).

    Absent ``title``/``description`` are ``""``, absent ``output_schema`` is None, absent
    ``annotations`` is ``{}``: the field names and types of ``registry.models.Tool``.
    """

    name: str
    title: str = ""
    description: str = ""
    input_schema: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    output_schema: dict[str, Any] | None = None
    annotations: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_wire(cls, tool: Mapping[str, Any]) -> ToolDefinition:
        """Build from the JSON of an MCP ``Tool`` (camelCase keys); ValueError if malformed."""
        wire = canonical.normalised_tool(tool)
        return cls(
            name=wire["name"],
            title=wire["title"],
            description=wire["description"],
            input_schema=copy.deepcopy(wire["inputSchema"]),
            output_schema=copy.deepcopy(wire["outputSchema"]),
            annotations=copy.deepcopy(wire["annotations"]),
        )

    def to_wire(self) -> dict[str, Any]:
        """The exact object that is canonicalised and hashed (camelCase, every key present)."""
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "inputSchema": self.input_schema,
            "outputSchema": self.output_schema,
            "annotations": self.annotations,
        }

    @property
    def definition_sha256(self) -> str:
        """Shorthand for :func:`definition_sha256` of this tool."""
        return definition_sha256(self)


def canonical_definition(tool: ToolDefinition | Mapping[str, Any]) -> bytes:
    """The canonical JSON bytes of a tool's definition (the input of the definition hash).

    ``tool`` is a :class:`ToolDefinition` or the wire JSON of an MCP Tool; the rules live in
    ``gateway/canonical.py``, shared with the reference gateway.
    """
    return canonical.canonical_bytes(tool.to_wire() if isinstance(tool, ToolDefinition)
                                     else tool)


def definition_sha256(tool: ToolDefinition | Mapping[str, Any]) -> str:
    """Lower-case hex SHA-256 of :func:`canonical_definition` — a CROSS-COMPONENT CONTRACT.

    The control plane pins this hash when a tool is approved and ships it in the policy
    bundle; the reference gateway recomputes it from the live ``tools/list`` result and denies
    the call when the two differ. Both call ``gateway/canonical.py`` (its docstring states the
    rules); any change there is a breaking change of the bundle.
    """
    return hashlib.sha256(canonical_definition(tool)).hexdigest()
