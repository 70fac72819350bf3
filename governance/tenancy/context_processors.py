"""Template context: the current tenant, the caller's role and capabilities, their tenants."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest

from governance.tenancy.roles import Cap


def tenancy(request: HttpRequest) -> dict:
    ctx = getattr(request, "tenancy", None)
    user = getattr(request, "user", None)
    memberships = []
    if user is not None and user.is_authenticated:
        memberships = list(user.memberships.select_related("tenant").order_by("tenant__name"))
    return {
        "tenancy": ctx,
        "current_tenant": ctx.tenant if ctx else None,
        "caps": {cap.name: ctx.can(cap) for cap in Cap} if ctx else {},
        "my_memberships": memberships,
        "oidc_enabled": settings.OIDC_ENABLED,
        "oidc_provider_name": settings.OIDC_PROVIDER_NAME,
    }
