"""What changed between two bundles: a diff of their ``mcp/data.json`` documents, per section.

Pure (no Django). The compiler names every entry (agents, servers and scopes by name, tools as
``<server>/<tool>``, grants by id), so two revisions compare entry by entry: an entry is added,
removed, or changed, and a changed entry lists each top-level field with its value before and
after. ``read_data`` takes the document out of a stored bundle tarball.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from typing import Any

DATA_FILE = "mcp/data.json"
# The largest data.json read out of a tarball (the compiler's huge-tenant case is ~50 MB).
MAX_DATA_BYTES = 256 * 1024 * 1024

# (section, label), in the order a person reads them.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("agents", "Agents"),
    ("servers", "Servers"),
    ("tools", "Tools"),
    ("scopes", "Scopes"),
    ("grants", "Grants"),
    ("withheld_tools", "Withheld tools"),
    ("escalation", "Escalation settings"),
)
SECTION_LABELS = dict(SECTIONS)


class BundleReadError(ValueError):
    """The tarball is not a bundle whose data.json can be read."""


def display(value: Any) -> str:
    """A field value for a person: text as is, nothing as —, the rest as compact JSON."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return value or "(empty)"
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(", ", ": "))


@dataclass(frozen=True)
class FieldChange:
    """One field of a changed entry."""

    field: str
    before: Any
    after: Any

    @property
    def before_text(self) -> str:
        return display(self.before)

    @property
    def after_text(self) -> str:
        return display(self.after)

    def as_dict(self) -> dict[str, Any]:
        return {"field": self.field, "before": self.before, "after": self.after}


@dataclass(frozen=True)
class Entry:
    """An added or removed entry, with its whole value."""

    key: str
    label: str
    value: Any

    @property
    def fields(self) -> list[tuple[str, str]]:
        """(field, text) pairs to show the entry."""
        if isinstance(self.value, dict):
            return [(name, display(v)) for name, v in sorted(self.value.items())]
        return [("", display(self.value))]

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "value": self.value}


@dataclass(frozen=True)
class Change:
    """An entry present in both documents whose fields differ."""

    key: str
    label: str
    fields: tuple[FieldChange, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label,
                "fields": [f.as_dict() for f in self.fields]}


@dataclass
class SectionDiff:
    name: str
    label: str
    added: list[Entry] = field(default_factory=list)
    removed: list[Entry] = field(default_factory=list)
    changed: list[Change] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "added": [e.as_dict() for e in self.added],
            "removed": [e.as_dict() for e in self.removed],
            "changed": [c.as_dict() for c in self.changed],
        }


@dataclass
class BundleDiff:
    """Every section, in ``SECTIONS`` order (empty ones included)."""

    sections: list[SectionDiff]

    @property
    def is_empty(self) -> bool:
        return all(s.is_empty for s in self.sections)

    @property
    def changed_sections(self) -> list[SectionDiff]:
        return [s for s in self.sections if not s.is_empty]

    def section(self, name: str) -> SectionDiff:
        return next(s for s in self.sections if s.name == name)

    def as_dict(self) -> dict[str, Any]:
        return {"is_empty": self.is_empty,
                "sections": {s.name: s.as_dict() for s in self.sections}}


def _entries(data: dict[str, Any], section: str) -> dict[str, Any]:
    """A section as {key: value}, whatever its shape in data.json."""
    value = data.get(section)
    if section == "grants":
        # A list of grants, each named by its id (the id of the Grant row).
        return {str(g.get("id")): g for g in value or () if isinstance(g, dict)}
    if section == "escalation":
        return {"settings": value} if value is not None else {}
    return dict(value) if isinstance(value, dict) else {}


def _label(section: str, key: str, value: Any) -> str:
    if section == "grants" and isinstance(value, dict):
        return f"{value.get('agent')} → {value.get('scope')} (grant {key})"
    return key


def _field_changes(before: Any, after: Any) -> tuple[FieldChange, ...]:
    if isinstance(before, dict) and isinstance(after, dict):
        return tuple(
            FieldChange(name, before.get(name), after.get(name))
            for name in sorted(before.keys() | after.keys())
            if before.get(name) != after.get(name) or (name in before) != (name in after)
        )
    # withheld_tools maps a tool to its status (a string): the status is the one field.
    return (FieldChange("status" if isinstance(after, str) else "value", before, after),)


def _section_diff(old: dict[str, Any], new: dict[str, Any], name: str,
                  label: str) -> SectionDiff:
    before, after = _entries(old, name), _entries(new, name)
    diff = SectionDiff(name=name, label=label)
    for key in sorted(after.keys() - before.keys()):
        diff.added.append(Entry(key, _label(name, key, after[key]), after[key]))
    for key in sorted(before.keys() - after.keys()):
        diff.removed.append(Entry(key, _label(name, key, before[key]), before[key]))
    for key in sorted(before.keys() & after.keys()):
        if before[key] != after[key]:
            diff.changed.append(Change(key, _label(name, key, after[key]),
                                       _field_changes(before[key], after[key])))
    if name == "grants":  # ids are numbers: 2 before 10
        for rows in (diff.added, diff.removed, diff.changed):
            rows.sort(key=lambda e: (len(e.key), e.key))
    return diff


def diff_data(old: dict[str, Any], new: dict[str, Any]) -> BundleDiff:
    """What changed from ``old`` to ``new`` (two parsed data.json documents)."""
    return BundleDiff([_section_diff(old, new, name, label) for name, label in SECTIONS])


def read_data(tarball: bytes, *, max_bytes: int = MAX_DATA_BYTES) -> dict[str, Any]:
    """The parsed ``mcp/data.json`` of a bundle tarball (gzipped tar, in memory).

    Only that one regular file is read, never extracted to disk, and only up to ``max_bytes``.
    """
    try:
        with tarfile.open(fileobj=io.BytesIO(bytes(tarball)), mode="r:gz") as tar:
            for member in tar:
                if member.name.lstrip("/") != DATA_FILE:
                    continue
                if not member.isfile():
                    raise BundleReadError(f"{DATA_FILE} in the bundle is not a regular file.")
                if member.size > max_bytes:
                    raise BundleReadError(
                        f"{DATA_FILE} is larger than {max_bytes} bytes; not read.")
                handle = tar.extractfile(member)
                if handle is None:  # pragma: no cover - isfile() was checked
                    raise BundleReadError(f"{DATA_FILE} cannot be read.")
                raw = handle.read(max_bytes + 1)
                break
            else:
                raise BundleReadError(f"The bundle has no {DATA_FILE}.")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleReadError(f"The bundle is not a readable gzipped tar: {exc}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleReadError(f"{DATA_FILE} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BundleReadError(f"{DATA_FILE} is not a JSON object.")
    return data
