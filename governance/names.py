"""The display name of a tenant's object (an exporter, a notification channel): one line of
visible text.

A name shows up in pages, audit events, e-mail subjects, Slack messages and log lines; a line
break or a control character in it could forge a line of any of those, and an invisible or
bidirectional formatting character could make it look like another name. Services call
:func:`clean_name` before they store one, so the web form and the API refuse such a name with
the same message on the ``name`` field, and nothing is stored.
"""

from __future__ import annotations

import unicodedata

from django.core.exceptions import ValidationError

# Control (C0, DEL, C1: line feed, carriage return, tab, NUL, escape…), format (bidi overrides
# and isolates, zero-width characters, soft hyphen…), surrogate, private use, and the Unicode
# line and paragraph separators.
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})


def clean_name(value: str | None, *, noun: str, limit: int = 100, field: str = "name") -> str:
    """``value`` without surrounding spaces; a ValidationError on ``field`` when it is empty,
    longer than ``limit`` or holds a line break, a control or an invisible formatting
    character (``noun`` names the object in the message: "Give the exporter a name…")."""
    name = (value or "").strip()
    if not name or len(name) > limit:
        raise ValidationError({field: f"Give the {noun} a name of 1–{limit} characters."})
    for char in name:
        if unicodedata.category(char) in REFUSED_CATEGORIES:
            raise ValidationError({field: (
                f"A name is one line of visible text: no line breaks, tabs, control or "
                f"invisible formatting characters (found U+{ord(char):04X}).")})
    return name
