"""Template filters every page may use (``{% load tollgate_web %}``). They live in the core
(tenancy is the core app that is always installed); the logic is in governance/web.py."""

from __future__ import annotations

from django import template

from governance import text_reveal, web

register = template.Library()

# ``{{ value|pretty_json }}`` inside a <pre>: indented JSON instead of a Python repr. The result
# is not marked safe, so autoescaping applies as to any other value.
register.filter("pretty_json", web.pretty_json)

# ``{{ tool.description|reveal }}``: escaped, with every invisible, bidirectional, tag or control
# character shown as a visible ``⟦U+200B⟧`` marker (governance/text_reveal.py). Use it for every
# piece of attacker-controlled text: tool names, titles, descriptions, schemas, diffs.
register.filter("reveal", text_reveal.reveal, is_safe=True)
