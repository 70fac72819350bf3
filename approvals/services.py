"""Every write of the approvals app: keyword-only, atomic, audited in the same transaction.

Rules enforced here, whatever the caller (DESIGN.md §6):
* the requester and the agent's owner never approve their own request;
* eligibility is checked at decision time against the approver's *current* membership and IdP
  groups (a removed approver cannot decide);
* one approver counts once per stage; stages pass in order;
* decisions on one request are serialised by its row lock, so exactly one outcome is reached;
  a late duplicate decision is a no-op that says what happened;
* a deny needs a reason;
* the deadline wins: a decision arriving at or after the deadline finds the request expired.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from approvals.models import AccessRequest, ApprovalDecision, ApprovalPolicy, ApprovalStage
from governance.audit.services import Actor, audit_record
from governance.tenancy.models import ExternalIdentity, Membership, Tenant
from governance.tenancy.roles import Role
from registry import services as registry
from registry.models import Agent, Risk, ToolScope
from registry.services import AGENT_PERMISSION

MAX_DURATION_MINUTES = 90 * 24 * 60
# Without any policy of the tenant: one approver or admin, within a day.
BUILT_IN_STAGES = [{"approvals_required": 1, "roles": [Role.APPROVER.value, Role.ADMIN.value],
                    "idp_group": ""}]
BUILT_IN_DECISION_HOURS = 24


# --- Policies ---------------------------------------------------------------------------------

def _stage_doc(stage: ApprovalStage) -> dict[str, Any]:
    return {"approvals_required": stage.approvals_required, "roles": list(stage.roles),
            "idp_group": stage.idp_group}


def policy_for(tenant: Tenant, scope: ToolScope) -> tuple[list[dict[str, Any]], int]:
    """(stages, decision hours) of the most specific policy for ``scope``."""
    candidates = list(ApprovalPolicy.objects.for_tenant(tenant).filter(
        scope__isnull=True) | ApprovalPolicy.objects.for_tenant(tenant).filter(scope=scope))
    for match in (lambda p: p.scope_id == scope.pk,
                  lambda p: p.scope_id is None and p.risk_level == scope.risk_level,
                  lambda p: p.scope_id is None and p.risk_level == ""):
        found = next((p for p in candidates if match(p)), None)
        if found is not None:
            stages = [_stage_doc(s) for s in found.stages.order_by("position")]
            return stages, found.decision_hours
    return [dict(s) for s in BUILT_IN_STAGES], BUILT_IN_DECISION_HOURS


def _eligible_users(tenant: Tenant, stage: dict[str, Any]) -> set[int]:
    users = set(Membership.objects.for_tenant(tenant).filter(role__in=stage["roles"])
                .values_list("user_id", flat=True)) if stage["roles"] else set()
    if stage["idp_group"]:
        members = set(Membership.objects.for_tenant(tenant).values_list("user_id", flat=True))
        for user_id, groups in ExternalIdentity.objects.filter(user_id__in=members).values_list(
                "user_id", "last_groups"):
            if stage["idp_group"] in (groups or []):
                users.add(user_id)
    return users


@transaction.atomic
def approval_policy_save(*, tenant: Tenant, actor: Actor, scope: ToolScope | None = None,
                         risk_level: str = "", decision_hours: int = 24,
                         stages: list[dict[str, Any]]) -> ApprovalPolicy:
    """Create or replace the policy for a scope, a risk level, or the tenant default. Refused
    when a stage could not be passed today (fewer eligible members than approvals needed)."""
    if scope is not None and risk_level:
        raise ValidationError("A policy is for a scope or for a risk level, not both.")
    if risk_level and risk_level not in Risk.values:
        raise ValidationError({"risk_level": f"Use one of {', '.join(Risk.values)}."})
    if decision_hours < 1 or decision_hours > 24 * 30:
        raise ValidationError({"decision_hours": "Between 1 hour and 30 days."})
    if not stages:
        raise ValidationError({"stages": "At least one stage."})
    clean = []
    for i, stage in enumerate(stages):
        roles = sorted(set(stage.get("roles") or []))
        bad = set(roles) - set(Role.values)
        if bad:
            raise ValidationError({"stages": f"Stage {i + 1}: unknown role(s) {sorted(bad)}."})
        doc = {"approvals_required": int(stage.get("approvals_required") or 1), "roles": roles,
               "idp_group": (stage.get("idp_group") or "").strip()}
        if doc["approvals_required"] < 1:
            raise ValidationError({"stages": f"Stage {i + 1}: at least one approval."})
        eligible = len(_eligible_users(tenant, doc))
        if eligible < doc["approvals_required"]:
            raise ValidationError({"stages": (
                f"Stage {i + 1} needs {doc['approvals_required']} approval(s) but only "
                f"{eligible} member(s) are eligible today: no request could ever pass it.")})
        clean.append(doc)
    policy = ApprovalPolicy.objects.for_tenant(tenant).filter(
        scope=scope, risk_level=risk_level if scope is None else "").select_for_update().first()
    before = None
    if policy is None:
        policy = ApprovalPolicy.objects.create(tenant=tenant, scope=scope,
                                               risk_level=risk_level if scope is None else "",
                                               decision_hours=decision_hours)
    else:
        before = {"decision_hours": policy.decision_hours,
                  "stages": [_stage_doc(s) for s in policy.stages.order_by("position")]}
        policy.decision_hours = decision_hours
        policy.updated_at = timezone.now()
        policy.save(update_fields=["decision_hours", "updated_at"])
        policy.stages.all().delete()
    for position, doc in enumerate(clean):
        ApprovalStage.objects.create(tenant=tenant, policy=policy, position=position, **doc)
    audit_record(tenant=tenant, actor=actor, action="approval_policy.saved", obj=policy,
                 before=before, after={"decision_hours": decision_hours, "stages": clean})
    return policy


# --- Requests ---------------------------------------------------------------------------------

def _request_state(request: AccessRequest) -> dict[str, Any]:
    return {"status": request.status, "agent": request.agent.name, "scope": request.scope.name,
            "duration_minutes": request.duration_minutes, "current_stage": request.current_stage,
            "deadline": request.deadline.isoformat()}


def _may_request(tenant: Tenant, user: AbstractBaseUser, agent: Agent) -> bool:
    role = Membership.objects.for_tenant(tenant).filter(user=user).values_list(
        "role", flat=True).first()
    if role == Role.ADMIN:
        return True
    return role == Role.DEVELOPER and user.has_perm(AGENT_PERMISSION, agent)


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
    stages, hours = policy_for(tenant, scope)
    request = AccessRequest.objects.create(
        tenant=tenant, agent=agent, scope=scope, requester=requester,
        justification=justification, ticket=(ticket or "").strip()[:200],
        duration_minutes=int(duration_minutes), stages=stages,
        deadline=timezone.now() + timedelta(hours=hours),
    )
    audit_record(tenant=tenant, actor=actor, action="access_request.created", obj=request,
                 after={**_request_state(request), "justification": justification,
                        "ticket": request.ticket, "stages": stages})
    return request


@dataclass(frozen=True)
class Outcome:
    """What a decision did: the request as it now stands and a sentence for the person."""

    request: AccessRequest
    message: str
    changed: bool


def _locked(tenant: Tenant, request: AccessRequest) -> AccessRequest:
    return (AccessRequest.objects.for_tenant(tenant).select_for_update(of=("self",))
            .select_related("agent", "scope", "requester").get(pk=request.pk))


def _expire(tenant: Tenant, request: AccessRequest, now: datetime) -> None:
    request.status = AccessRequest.Status.EXPIRED
    request.decided_at = now
    request.save(update_fields=["status", "decided_at"])
    audit_record(tenant=tenant, actor=Actor.system("approvals"), action="access_request.expired",
                 obj=request, after=_request_state(request))


@transaction.atomic
def access_request_decide(*, tenant: Tenant, actor: Actor, request: AccessRequest,
                          approver: AbstractBaseUser, outcome: str,
                          reason: str = "", now: datetime | None = None) -> Outcome:
    """One approver's decision on the request's current stage (see the module's rules)."""
    if outcome not in ApprovalDecision.Outcome.values:
        raise ValidationError({"outcome": "approve or deny"})
    reason = (reason or "").strip()
    if outcome == ApprovalDecision.Outcome.DENY and not reason:
        raise ValidationError({"reason": "Say why the request is denied."})
    request = _locked(tenant, request)
    now = now or timezone.now()
    if request.status == AccessRequest.Status.PENDING and now >= request.deadline:
        _expire(tenant, request, now)
        return Outcome(request, "This request expired at its deadline before your decision.",
                       True)
    if request.status != AccessRequest.Status.PENDING:
        return Outcome(request, f"Nothing to do: this request is already {request.status}.",
                       False)
    if approver.pk == request.requester_id:
        raise ValidationError("You requested this access: someone else must decide.")
    if approver.has_perm(AGENT_PERMISSION, request.agent) or approver.pk == (
            request.agent.owner_id):
        raise ValidationError("You own this agent: someone else must decide.")
    stage = request.stages[request.current_stage]
    if approver.pk not in _eligible_users(tenant, stage):
        raise ValidationError(f"You are not an eligible approver for stage "
                              f"{request.current_stage + 1} ({_describe(stage)}).")
    try:
        with transaction.atomic():
            ApprovalDecision.objects.create(tenant=tenant, request=request,
                                            stage=request.current_stage, approver=approver,
                                            outcome=outcome, reason=reason, created_at=now)
    except IntegrityError:
        return Outcome(request, "Nothing to do: you have already decided this stage.", False)
    verb = "approved" if outcome == ApprovalDecision.Outcome.APPROVE else "denied"
    audit_record(tenant=tenant, actor=actor, action=f"access_request.{verb}", obj=request,
                 after={"stage": request.current_stage + 1, "approver": approver.get_username(),
                        "outcome": outcome, "reason": reason})
    if outcome == ApprovalDecision.Outcome.DENY:
        request.status = AccessRequest.Status.DENIED
        request.deny_reason = reason
        request.decided_at = now
        request.save(update_fields=["status", "deny_reason", "decided_at"])
        return Outcome(request, "Denied.", True)
    approvals = request.decisions.filter(stage=request.current_stage,
                                         outcome=ApprovalDecision.Outcome.APPROVE).count()
    if approvals < stage["approvals_required"]:
        return Outcome(request, f"Approved: {approvals} of {stage['approvals_required']} "
                                f"approvals at stage {request.current_stage + 1}.", True)
    if request.current_stage + 1 < len(request.stages):
        request.current_stage += 1
        request.save(update_fields=["current_stage"])
        return Outcome(request, f"Stage {request.current_stage} passed; stage "
                                f"{request.current_stage + 1} decides next.", True)
    grant = registry.grant_create(
        tenant=tenant, actor=actor, agent=request.agent, scope=request.scope,
        expires_at=now + timedelta(minutes=request.duration_minutes),
    )
    request.status = AccessRequest.Status.APPROVED
    request.decided_at = now
    request.grant = grant
    request.save(update_fields=["status", "decided_at", "grant"])
    audit_record(tenant=tenant, actor=actor, action="access_request.granted", obj=request,
                 after={**_request_state(request), "grant": grant.pk,
                        "expires_at": grant.expires_at.isoformat()})
    return Outcome(request, f"Approved: {request.scope.name} granted to {request.agent.name} "
                            f"until {grant.expires_at:%Y-%m-%d %H:%M} UTC.", True)


def _describe(stage: dict[str, Any]) -> str:
    parts = [", ".join(stage["roles"])] if stage["roles"] else []
    if stage["idp_group"]:
        parts.append(f"IdP group {stage['idp_group']}")
    return " or ".join(parts) or "nobody"


@transaction.atomic
def access_request_cancel(*, tenant: Tenant, actor: Actor, request: AccessRequest,
                          by: AbstractBaseUser) -> Outcome:
    request = _locked(tenant, request)
    if request.status != AccessRequest.Status.PENDING:
        return Outcome(request, f"Nothing to do: this request is already {request.status}.",
                       False)
    is_admin = Membership.objects.for_tenant(tenant).filter(user=by, role=Role.ADMIN).exists()
    if by.pk != request.requester_id and not is_admin:
        raise ValidationError("Only the requester or an admin can cancel a request.")
    request.status = AccessRequest.Status.CANCELLED
    request.decided_at = timezone.now()
    request.save(update_fields=["status", "decided_at"])
    audit_record(tenant=tenant, actor=actor, action="access_request.cancelled", obj=request,
                 after=_request_state(request))
    return Outcome(request, "Cancelled.", True)


def access_requests_expire_due(*, now: datetime | None = None) -> int:
    """Pending requests past their deadline are expired by the system actor (Celery beat)."""
    now = now or timezone.now()
    count = 0
    for pk in AccessRequest.objects.filter(
            status=AccessRequest.Status.PENDING, deadline__lte=now).values_list("pk", flat=True):
        with transaction.atomic():
            request = AccessRequest.objects.select_for_update(of=("self",)).select_related(
                "tenant", "agent", "scope").get(pk=pk)
            if request.status == AccessRequest.Status.PENDING and request.deadline <= now:
                _expire(request.tenant, request, now)
                count += 1
    return count
