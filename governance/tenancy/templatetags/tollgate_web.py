"""Template filters every page may use (``{% load tollgate_web %}``). They live in the core
(tenancy is the core app that is always installed); the logic is in governance/web.py."""

from __future__ import annotations

from django import template

from governance import web

register = template.Library()

# ``{{ value|pretty_json }}`` inside a <pre>: indented JSON instead of a Python repr. The result
# is not marked safe, so autoescaping applies as to any other value.
register.filter("pretty_json", web.pretty_json)
