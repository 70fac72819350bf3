"""Access requests: an agent's owner (or an admin) asks for a scope for a while; the policy's
approvers decide (the rules: ``approvals.services.decisions``); approval creates a time-bound
grant."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from approvals.models import AccessRequest
from approvals.selectors import policy_rules
from approvals.services.decisions import (
    Outcome,
    announce,
    decide_item,
    locked,
)
from governance.audit.services import Actor, audit_record
from governance.tenancy.access import member_can, member_context
from governance.tenancy.models import Tenant
from governance.tenancy.roles import Cap
from registry.access import can_manage_agent
from registry.models import Agent, ToolScope

MAX_DURATION_MINUTES = 90 * 24 * 60


def _may_request(tenant: Tenant, user: AbstractBaseUser, agent: Agent) -> bool:
    """Whether ``user``, in person with their current role, may act for ``agent``."""
    ctx = member_context(tenant, user)
    return ctx is not None and can_manage_agent(ctx, agent)


@transaction.atomic
def access_request_create(*, tenant: Tenant, actor: Actor, requester: AbstractBaseUser,
                          agent: Agent, scope: ToolScope, duration_minutes: int,
                          justification: str, ticket: str = "") -> AccessRequest:
    """An owner (or admin) asks for ``scope`` for ``agent``; the applicable policy is frozen
    into the request and its decision deadline starts now."""
    if agent.tenant_id != tenant.pk or scope.tenant_id != tenant.pk:
        raise ValidationError("Agent and scope must belong to this tenant.")
    if not _may_request(tenant, requester, agent):
        raise ValidationError("Only the agent's owner or an admin can request access for it.")
    if agent.status != Agent.Status.ACTIVE:
        raise ValidationError({"agent": f"Agent {agent.name} is {agent.status}."})
    justification = (justification or "").strip()
    if not justification:
        raise ValidationError({"justification": "Say why the agent needs this access."})
    if not 1 <= int(duration_minutes) <= MAX_DURATION_MINUTES:
        raise ValidationError({"duration_minutes": "Between 1 minute and 90 days."})
    if AccessRequest.objects.for_tenant(tenant).filter(
            agent=agent, scope=scope, status=AccessRequest.Status.PENDING).exists():
        raise ValidationError(f"A request for {scope.name} for {agent.name} is already pending.")
    rules = policy_rules(tenant, scope)
    request = AccessRequest.objects.create(
        tenant=tenant, agent=agent, scope=scope, requester=requester,
        justification=justification, ticket=(ticket or "").strip()[:200],
        duration_minutes=int(duration_minutes), stages=rules.stages,
        alternates=rules.alternates, deadline=timezone.now() + timedelta(
            hours=rules.decision_hours),
    )
    audit_record(tenant=tenant, actor=actor, action="access_request.created", obj=request,
                 after={**request.audit_snapshot(), "justification": justification,
                        "ticket": request.ticket, "stages": rules.stages,
                        "alternates": rules.alternates})
    announce(tenant, request, "approval.requested")
    return request



@transaction.atomic
def access_request_decide(*, tenant: Tenant, actor: Actor, request: AccessRequest,
                          approver: AbstractBaseUser, outcome: str,
                          reason: str = "", now: datetime | None = None) -> Outcome:
    """One approver's decision on the request's current stage (see the module's rules)."""
    return decide_item(tenant=tenant, actor=actor, item=request, approver=approver,
                       outcome=outcome, reason=reason, now=now)


@transaction.atomic
def access_request_cancel(*, tenant: Tenant, actor: Actor, request: AccessRequest,
                          by: AbstractBaseUser) -> Outcome:
    request = locked(tenant, request)
    if request.status != AccessRequest.Status.PENDING:
        return Outcome(request, f"Nothing to do: this request is already {request.status}.",
                       False)
    if by.pk != request.requester_id and not member_can(tenant, by, Cap.MANAGE_REGISTRY):
        raise ValidationError("Only the requester or an admin can cancel a request.")
    request.status = AccessRequest.Status.CANCELLED
    request.decided_at = timezone.now()
    request.save(update_fields=["status", "decided_at"])
    audit_record(tenant=tenant, actor=actor, action="access_request.cancelled", obj=request,
                 after=request.audit_snapshot())
    return Outcome(request, "Cancelled.", True)

