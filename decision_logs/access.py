"""Single decision-log rows for a caller: 404 outside the tenant, 403 without VIEW_AUDIT."""

from __future__ import annotations

from decision_logs.models import DecisionLog, ReplayRun
from governance.tenancy.access import TenantContext, access_object
from governance.tenancy.roles import Cap


def access_decision(ctx: TenantContext, pk) -> DecisionLog:
    decision = access_object(ctx.tenant, DecisionLog, pk)
    ctx.require(Cap.VIEW_AUDIT)
    return decision


def access_replay(ctx: TenantContext, pk) -> ReplayRun:
    """One shadow replay: 404 outside the tenant, 403 without VIEW_AUDIT."""
    run = access_object(ctx.tenant, ReplayRun, pk)
    ctx.require(Cap.VIEW_AUDIT)
    return run
