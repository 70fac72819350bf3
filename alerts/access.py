"""Single alert objects for a caller: 404 outside the tenant, 403 without the capability."""

from __future__ import annotations

from alerts.models import Alert, AlertRule
from governance.tenancy.access import TenantContext, access_object
from governance.tenancy.roles import Cap


def access_alert(ctx: TenantContext, pk, *, write: bool = False) -> Alert:
    """Auditors and admins read alerts; acknowledging and resolving is for admins."""
    alert = access_object(ctx.tenant, Alert, pk)
    ctx.require(Cap.MANAGE_ALERTS if write else Cap.VIEW_AUDIT)
    return alert


def access_alert_rule(ctx: TenantContext, pk) -> AlertRule:
    rule = access_object(ctx.tenant, AlertRule, pk)
    ctx.require(Cap.MANAGE_ALERTS)
    return rule
