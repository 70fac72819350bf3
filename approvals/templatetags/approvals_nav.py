"""The navigation's approvals counter: computed only where the template asks for it (for
people who may decide), in three queries."""

from __future__ import annotations

from django import template

from approvals.selectors import inbox_count

register = template.Library()


@register.simple_tag(takes_context=True)
def approvals_inbox_count(context) -> int:
    """How many items wait for the signed-in person's decision in the current tenant."""
    request = context.get("request")
    ctx = getattr(request, "tenancy", None)
    if ctx is None or ctx.user is None:
        return 0
    return inbox_count(ctx.tenant, ctx.user)
