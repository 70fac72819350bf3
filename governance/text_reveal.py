"""Characters a person cannot see, and how pages make them visible (the ``reveal`` filter).

Tool descriptions and other attacker-controlled text can carry zero-width characters,
bidirectional overrides, Unicode tag characters (an invisible copy of ASCII: U+E0000–E007F),
variation selectors (data smuggled after an ordinary letter) and terminal control sequences.
A model reads them; a reviewer does not see them. Every page that shows such text renders each
of them as a visible marker (``⟦U+200B⟧``; a run of tag characters as the text it spells), and
the tool-definition review (registry/review_findings.py) flags the same characters, so what is
flagged is exactly what is marked.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from typing import Any

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

TAG_FIRST, TAG_LAST = 0xE0000, 0xE007F
BIDI = frozenset([0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)])
# Letters and symbols that render as nothing (fillers, blank patterns, inherent vowels).
BLANK = frozenset([0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x2800, 0x3164, 0xFFA0])
ALLOWED_CONTROLS = frozenset("\n\t\r")


def _is_variation_selector(cp: int) -> bool:
    return 0xFE00 <= cp <= 0xFE0F or 0xE0100 <= cp <= 0xE01EF or 0x180B <= cp <= 0x180F


def char_kind(ch: str) -> str | None:
    """``tag``, ``bidi``, ``control``, ``variation`` or ``invisible`` for a character a reader
    cannot see (or that changes how the rest is shown); None for an ordinary one."""
    cp = ord(ch)
    if TAG_FIRST <= cp <= TAG_LAST:
        return "tag"
    if cp in BIDI:
        return "bidi"
    if ch in ALLOWED_CONTROLS:
        return None
    if cp < 0x20 or 0x7F <= cp <= 0x9F:
        return "control"
    if _is_variation_selector(cp):
        return "variation"
    if cp in BLANK or unicodedata.category(ch) in ("Cf", "Zl", "Zp", "Co", "Cn", "Cs"):
        return "invisible"
    return None


def hidden_characters(text: str) -> Iterator[tuple[int, str]]:
    """``(index, kind)`` of every character :func:`char_kind` names, except the one variation
    selector an emoji takes (``⚠️`` is U+26A0 U+FE0F): a selector right after an ordinary
    character. A second one in a row, or one of the supplementary range, is smuggling."""
    previous: str | None = "start"
    for i, ch in enumerate(text):
        kind = char_kind(ch)
        if (kind == "variation" and ord(ch) in (0xFE0E, 0xFE0F) and previous is None
                and i > 0):
            previous = "emoji"
            continue
        previous = kind
        if kind is not None:
            yield i, kind


def decode_tags(run: str) -> str:
    """The ASCII text a run of Unicode tag characters spells (unprintable ones as ``?``)."""
    out = []
    for ch in run:
        value = ord(ch) - TAG_FIRST
        out.append(chr(value) if 0x20 <= value < 0x7F else "?")
    return "".join(out)


def _marker(ch: str) -> tuple[str, str]:
    """(visible text, title) for one hidden character."""
    cp = ord(ch)
    name = unicodedata.name(ch, "") or ("ESCAPE" if cp == 0x1B else "unnamed character")
    return f"⟦U+{cp:04X}⟧", name


def _segments(text: str) -> Iterator[tuple[str, str, str]]:
    """``(kind, text, title)``: kind "" for plain text, "char" for one marker, "tags" for a run
    of tag characters shown as the text they spell."""
    hidden = dict(hidden_characters(text))
    start = i = 0
    while i < len(text):
        kind = hidden.get(i)
        if kind is None:
            i += 1
            continue
        if start < i:
            yield "", text[start:i], ""
        if kind == "tag":
            end = i
            while hidden.get(end) == "tag":
                end += 1
            yield ("tags", f"⟦tags “{decode_tags(text[i:end])}”⟧",
                   f"{end - i} invisible Unicode tag characters")
            i = end
        else:
            visible, title = _marker(text[i])
            yield "char", visible, title
            i += 1
        start = i
    if start < len(text):
        yield "", text[start:], ""


def reveal_text(value: Any) -> str:
    """Plain text with every hidden character replaced by its marker (for excerpts, logs)."""
    text = "" if value is None else str(value)
    return "".join(part for _, part, _ in _segments(text))


def reveal(value: Any) -> SafeString:
    """HTML: the text escaped, each hidden character a visible ``⟦U+XXXX⟧`` marker (a
    ``<mark class="hidden-char">`` with the character's name as its title). The ``reveal``
    template filter; use it wherever attacker-controlled text is shown."""
    text = "" if value is None else str(value)
    out = []
    for kind, part, title in _segments(text):
        if not kind:
            out.append(escape(part))
        else:
            out.append(f'<mark class="hidden-char" title="{escape(title)}">{escape(part)}</mark>')
    return mark_safe("".join(out))  # noqa: S308 — every piece above is escaped
