"""The navigation's alerts counter: alerts nobody has acknowledged yet (one query, only where
the template asks for it, i.e. for people who may see alerts)."""

from __future__ import annotations

from django import template

from alerts.selectors import unacknowledged_count

register = template.Library()


@register.simple_tag(takes_context=True)
def alerts_unacknowledged_count(context) -> int:
    request = context.get("request")
    ctx = getattr(request, "tenancy", None)
    if ctx is None:
        return 0
    return unacknowledged_count(ctx.tenant)
