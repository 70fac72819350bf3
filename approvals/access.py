"""Single approvals objects for a caller: 404 outside the tenant, 403 for members who have no
business with them."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied

from approvals import selectors
from approvals.models import AccessRequest, ApprovalPolicy, Escalation
from governance.tenancy.access import TenantContext, access_object
from governance.tenancy.roles import Cap


def sees_every_request(ctx: TenantContext) -> bool:
    """Registry managers (admins) and auditors see every request of the tenant."""
    return ctx.can(Cap.MANAGE_REGISTRY) or ctx.can(Cap.VIEW_AUDIT)


def access_request(ctx: TenantContext, pk) -> AccessRequest:
    """A request, for its requester, admins, auditors and whoever may decide one of its stages
    (token callers without a user: admin and auditor tokens only)."""
    request = access_object(ctx.tenant, AccessRequest, pk)
    allowed = sees_every_request(ctx) or (
        ctx.user is not None and selectors.may_see_request(ctx.tenant, ctx.user, request))
    if not allowed:
        raise PermissionDenied("Only the requester, its approvers, admins and auditors may see "
                               "this request.")
    return request


def access_policy(ctx: TenantContext, pk, *, write: bool = False) -> ApprovalPolicy:
    policy = access_object(ctx.tenant, ApprovalPolicy, pk)
    if write:
        ctx.require(Cap.MANAGE_REGISTRY)
    return policy


def access_escalations(ctx: TenantContext) -> None:
    """Held tool calls are for approvers, admins and auditors (the arguments may be
    sensitive)."""
    if not (ctx.can(Cap.DECIDE_APPROVALS) or ctx.can(Cap.VIEW_AUDIT)):
        raise PermissionDenied("Only approvers, admins and auditors may see escalations.")


def access_escalation(ctx: TenantContext, pk) -> Escalation:
    """One held tool call (404 outside the tenant), for approvers, admins and auditors."""
    escalation = access_object(ctx.tenant, Escalation, pk)
    access_escalations(ctx)
    return escalation
