"""Every write of the approvals app: keyword-only, atomic, audited in the same transaction.

Access requests (a scope for an agent, for a while) and escalations (one held tool call) are
both *decidable items*: the applicable policy is frozen into the item when it is created and the
same rules decide both, whatever the caller (DESIGN.md §6):
* the requester and the agent's owner never approve their own item;
* eligibility is checked at decision time against the approver's *current* membership, IdP
  groups and object permissions (a removed approver cannot decide);
* one approver counts once: per stage, and across the stages (and alternates) of an item — who
  decided one stage is not eligible for a later one, so N stages always take N people;
  stages pass in order;
* decisions on one item are serialised by its row lock, so exactly one outcome is reached;
  a late duplicate decision is a no-op that says what happened;
* a deny needs a reason;
* the deadline wins: a decision arriving at or after the deadline finds the item gone to its
  alternate approvers (when the policy names some; they get one more period of the same
  length) or expired — the automatic denial by the system actor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from guardian.shortcuts import get_users_with_perms

from approvals.models import (
    AccessRequest,
    ApprovalDecision,
    ApprovalPolicy,
    ApprovalStage,
    Decidable,
    Escalation,
    describe_rule,
)
from bundles import hot, keys
from bundles.models import Gateway
from bundles.services import gateway_actor, signing_key_for_build
from governance.alerting import alert_raise
from governance.audit.services import Actor, audit_record
from governance.tenancy.models import ExternalIdentity, Membership, Tenant
from governance.tenancy.roles import Role
from notifications.services import notify
from registry import services as registry
from registry.compiler import escalation_settings
from registry.models import Agent, Grant, McpServer, Risk, Tool, ToolScope
from registry.services import AGENT_PERMISSION

MAX_DURATION_MINUTES = 90 * 24 * 60
# Without any policy of the tenant: one approver or admin, within a day.
BUILT_IN_STAGES = [{"approvals_required": 1, "roles": [Role.APPROVER.value, Role.ADMIN.value],
                    "idp_group": "", "object_permission": False}]
BUILT_IN_DECISION_HOURS = 24
# The guardian object permission (on a scope, or on a server) that a stage can name.
APPROVE_PERMISSION = "approve_access"
RECEIPT_TYPE = "tollgate-receipt+jwt"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


# --- Policies ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rules:
    """The applicable policy, as frozen into a new item."""

    stages: list[dict[str, Any]]
    decision_hours: int
    alternates: dict[str, Any] | None


def _stage_doc(stage: ApprovalStage) -> dict[str, Any]:
    return {"approvals_required": stage.approvals_required, "roles": list(stage.roles),
            "idp_group": stage.idp_group, "object_permission": stage.object_permission}


def _alternates_doc(policy: ApprovalPolicy) -> dict[str, Any] | None:
    if not (policy.alternate_roles or policy.alternate_idp_group):
        return None
    return {"approvals_required": 1, "roles": list(policy.alternate_roles),
            "idp_group": policy.alternate_idp_group, "object_permission": False}


def policy_rules(tenant: Tenant, scope: ToolScope) -> Rules:
    """The most specific policy for ``scope``: its own, else its risk level's, else the tenant
    default, else the built-in one (one approver or admin within a day)."""
    candidates = list(ApprovalPolicy.objects.for_tenant(tenant).filter(
        Q(scope__isnull=True) | Q(scope=scope)).prefetch_related("stages"))
    for match in (lambda p: p.scope_id == scope.pk,
                  lambda p: p.scope_id is None and p.risk_level == scope.risk_level,
                  lambda p: p.scope_id is None and p.risk_level == ""):
        found = next((p for p in candidates if match(p)), None)
        if found is not None:
            stages = [_stage_doc(s) for s in sorted(found.stages.all(), key=lambda s: s.position)]
            return Rules(stages, found.decision_hours, _alternates_doc(found))
    return Rules([dict(s) for s in BUILT_IN_STAGES], BUILT_IN_DECISION_HOURS, None)


def policy_for(tenant: Tenant, scope: ToolScope) -> tuple[list[dict[str, Any]], int]:
    """(stages, decision hours) of the most specific policy for ``scope``."""
    rules = policy_rules(tenant, scope)
    return rules.stages, rules.decision_hours


def _members(tenant: Tenant) -> set[int]:
    return set(Membership.objects.for_tenant(tenant).values_list("user_id", flat=True))


def _permission_holders(objects) -> set[int]:
    users: set[int] = set()
    for obj in objects:
        users.update(u.pk for u in get_users_with_perms(
            obj, with_group_users=True, only_with_perms_in=[APPROVE_PERMISSION]))
    return users


def object_approvers(tenant: Tenant, scope_id: int | None) -> set[int]:
    """Members holding ``registry.approve_access`` on the scope or on a server whose tools it
    contains; without a scope (a default policy), on any scope or server of the tenant."""
    if scope_id is None:
        objects = [*ToolScope.objects.for_tenant(tenant), *McpServer.objects.for_tenant(tenant)]
    else:
        objects = [*ToolScope.objects.for_tenant(tenant).filter(pk=scope_id),
                   *McpServer.objects.for_tenant(tenant).filter(tools__scopes=scope_id)
                   .distinct()]
    return _permission_holders(objects) & _members(tenant)


def eligible_user_ids(tenant: Tenant, stage: dict[str, Any], *,
                      scope_id: int | None = None) -> set[int]:
    """Who may decide ``stage`` now: members with one of its roles, members in its IdP group,
    and (when the stage says so) holders of the approve permission on the scope or server."""
    users = set(Membership.objects.for_tenant(tenant).filter(role__in=stage["roles"])
                .values_list("user_id", flat=True)) if stage["roles"] else set()
    if stage["idp_group"]:
        for user_id, groups in ExternalIdentity.objects.filter(
                user_id__in=_members(tenant)).values_list("user_id", "last_groups"):
            if stage["idp_group"] in (groups or []):
                users.add(user_id)
    if stage.get("object_permission"):
        users |= object_approvers(tenant, scope_id)
    return users



def _distinct_approvers(stages: list[dict[str, Any]], eligible: list[set[int]]) -> int:
    """How many of the stages' approvals distinct people can give at most, each person counting
    once across the stages: a maximum matching of people to stages, stage i taking up to its
    ``approvals_required`` of its eligible people (augmenting paths, breadth first)."""
    assigned: dict[int, int] = {}  # person → the stage they count for
    filled = [0] * len(stages)

    def augment(start: int) -> bool:
        via_person: dict[int, int] = {}  # person → the stage that reached them
        via_stage: dict[int, int] = {start: -1}  # stage → the person (assigned to it) reaching it
        queue = [start]
        while queue:
            stage = queue.pop(0)
            for person in eligible[stage]:
                if person in via_person or assigned.get(person) == stage:
                    continue
                via_person[person] = stage
                if person not in assigned:  # a free person: shift everyone along the path
                    while True:
                        stage = via_person[person]
                        assigned[person] = stage
                        if stage == start:
                            return True
                        person = via_stage[stage]
                nxt = assigned[person]
                if nxt not in via_stage:
                    via_stage[nxt] = person
                    queue.append(nxt)
        return False

    for index, doc in enumerate(stages):
        while filled[index] < doc["approvals_required"] and augment(index):
            filled[index] += 1
    return sum(filled)


def _clean_stage(doc: dict[str, Any], label: str) -> dict[str, Any]:
    roles = sorted(set(doc.get("roles") or []))
    bad = set(roles) - set(Role.values)
    if bad:
        raise ValidationError({"stages": f"{label}: unknown role(s) {sorted(bad)}."})
    clean = {"approvals_required": int(doc.get("approvals_required") or 1), "roles": roles,
             "idp_group": (doc.get("idp_group") or "").strip(),
             "object_permission": bool(doc.get("object_permission"))}
    if clean["approvals_required"] < 1:
        raise ValidationError({"stages": f"{label}: at least one approval."})
    return clean


@transaction.atomic
def approval_policy_save(*, tenant: Tenant, actor: Actor, scope: ToolScope | None = None,
                         risk_level: str = "", decision_hours: int = 24,
                         stages: list[dict[str, Any]], alternate_roles: list[str] | None = None,
                         alternate_idp_group: str = "") -> ApprovalPolicy:
    """Create or replace the policy for a scope, a risk level, or the tenant default. Refused
    when a stage could not be passed today (fewer eligible members than approvals needed, or
    too few different people for all the stages, one approver counting once), or when
    alternates are named but nobody is one."""
    if scope is not None and risk_level:
        raise ValidationError("A policy is for a scope or for a risk level, not both.")
    if risk_level and risk_level not in Risk.values:
        raise ValidationError({"risk_level": f"Use one of {', '.join(Risk.values)}."})
    if decision_hours < 1 or decision_hours > 24 * 30:
        raise ValidationError({"decision_hours": "Between 1 hour and 30 days."})
    if not stages:
        raise ValidationError({"stages": "At least one stage."})
    scope_id = scope.pk if scope is not None else None
    clean, eligible_sets = [], []
    for i, stage in enumerate(stages):
        doc = _clean_stage(stage, f"Stage {i + 1}")
        eligible = eligible_user_ids(tenant, doc, scope_id=scope_id)
        if len(eligible) < doc["approvals_required"]:
            raise ValidationError({"stages": (
                f"Stage {i + 1} needs {doc['approvals_required']} approval(s) but only "
                f"{len(eligible)} member(s) are eligible today: no request could ever pass it.")})
        clean.append(doc)
        eligible_sets.append(eligible)
    needed = sum(doc["approvals_required"] for doc in clean)
    if len(clean) > 1 and _distinct_approvers(clean, eligible_sets) < needed:
        raise ValidationError({"stages": (
            f"The stages need {needed} approvals from {needed} different people (one approver "
            f"counts once across the stages) but today's eligible members cannot fill them: "
            f"no request could ever pass.")})
    alternates = _clean_stage({"roles": alternate_roles or [], "idp_group": alternate_idp_group},
                              "Alternates")
    if (alternates["roles"] or alternates["idp_group"]) and not eligible_user_ids(
            tenant, alternates):
        raise ValidationError({"alternate_roles": "Nobody is an alternate approver today: "
                                                  "name a role or group that has members."})
    policy = ApprovalPolicy.objects.for_tenant(tenant).filter(
        scope=scope, risk_level=risk_level if scope is None else "").select_for_update().first()
    before = None
    if policy is None:
        policy = ApprovalPolicy(tenant=tenant, scope=scope,
                                risk_level=risk_level if scope is None else "")
    else:
        before = {"decision_hours": policy.decision_hours,
                  "stages": [_stage_doc(s) for s in policy.stages.order_by("position")],
                  "alternates": _alternates_doc(policy)}
        policy.updated_at = timezone.now()
        policy.stages.all().delete()
    policy.decision_hours = decision_hours
    policy.alternate_roles = alternates["roles"]
    policy.alternate_idp_group = alternates["idp_group"]
    policy.save()
    for position, doc in enumerate(clean):
        ApprovalStage.objects.create(tenant=tenant, policy=policy, position=position, **doc)
    audit_record(tenant=tenant, actor=actor, action="approval_policy.saved", obj=policy,
                 before=before, after={"decision_hours": decision_hours, "stages": clean,
                                       "alternates": _alternates_doc(policy)})
    return policy


# --- Requests ---------------------------------------------------------------------------------

def _request_state(request: AccessRequest) -> dict[str, Any]:
    return {"status": request.status, "agent": request.agent.name, "scope": request.scope.name,
            "duration_minutes": request.duration_minutes, "current_stage": request.current_stage,
            "deadline": request.deadline.isoformat()}


def _escalation_state(escalation: Escalation) -> dict[str, Any]:
    return {"status": escalation.status, "agent": escalation.agent.name,
            "server": escalation.server, "tool": escalation.tool,
            "arguments_sha256": escalation.arguments_sha256,
            "current_stage": escalation.current_stage,
            "deadline": escalation.deadline.isoformat()}


def _state(item: Decidable) -> dict[str, Any]:
    return _request_state(item) if isinstance(item, AccessRequest) else _escalation_state(item)


def _kind(item: Decidable) -> str:
    return "access_request" if isinstance(item, AccessRequest) else "escalation"


def _noun(item: Decidable) -> str:
    return "request" if isinstance(item, AccessRequest) else "escalation"


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
    rules = policy_rules(tenant, scope)
    request = AccessRequest.objects.create(
        tenant=tenant, agent=agent, scope=scope, requester=requester,
        justification=justification, ticket=(ticket or "").strip()[:200],
        duration_minutes=int(duration_minutes), stages=rules.stages,
        alternates=rules.alternates, deadline=timezone.now() + timedelta(
            hours=rules.decision_hours),
    )
    audit_record(tenant=tenant, actor=actor, action="access_request.created", obj=request,
                 after={**_request_state(request), "justification": justification,
                        "ticket": request.ticket, "stages": rules.stages,
                        "alternates": rules.alternates})
    _announce(tenant, request, "approval.requested")
    return request


@dataclass(frozen=True)
class Outcome:
    """What a decision did: the item as it now stands and a sentence for the person."""

    request: Decidable
    message: str
    changed: bool

    @property
    def item(self) -> Decidable:
        return self.request


def _locked(tenant: Tenant, item: Decidable) -> Decidable:
    model = type(item)
    related = ("agent", "scope", "requester") if model is AccessRequest else ("agent", "scope")
    return (model.objects.for_tenant(tenant).select_for_update(of=("self",))
            .select_related(*related).get(pk=item.pk))


def current_stage_rule(item: Decidable) -> dict[str, Any]:
    """The rule the next decision is checked against: the current stage, or the alternates
    once the first deadline has passed."""
    if item.on_alternates and item.alternates:
        return item.alternates
    return item.stages[item.current_stage]


def eligible_for(tenant: Tenant, item: Decidable) -> set[int]:
    """Who may decide ``item`` now (before the self-approval rules)."""
    return eligible_user_ids(tenant, current_stage_rule(item), scope_id=item.scope_id)


def _excluded(item: Decidable) -> set[int]:
    """The people who may not decide this item now: its requester, the agent's owner and
    whoever already decided one of its stages (one approver counts once)."""
    people = {item.agent.owner_id, *item.decisions.values_list("approver_id", flat=True)}
    if isinstance(item, AccessRequest):
        people.add(item.requester_id)
    return {p for p in people if p is not None}


def _earlier_decision(item: Decidable, approver: AbstractBaseUser) -> ApprovalDecision | None:
    """``approver``'s decision at another stage of ``item`` than the current one, if any (their
    decision at the current stage makes a repeat a no-op instead)."""
    return (item.decisions.filter(approver=approver).exclude(stage=item.current_stage)
            .order_by("stage").first())


def _finish(tenant: Tenant, actor: Actor, item: Decidable, status: str, now: datetime,
            reason: str = "") -> None:
    item.status = status
    item.decided_at = now
    item.deny_reason = reason
    item.save(update_fields=["status", "decided_at", "deny_reason"])
    if isinstance(item, Escalation):
        audit_record(tenant=tenant, actor=actor, action="escalation.resolved", obj=item,
                     after={**_escalation_state(item), "reason": reason})
        _wake_escalation(item)
    _announce(tenant, item, "escalation.decided" if isinstance(item, Escalation)
              else "approval.decided")


def _expire(tenant: Tenant, item: Decidable, now: datetime) -> None:
    """The automatic denial at the (last) deadline, by the system actor."""
    system = Actor.system("approvals")
    item.status = Decidable.Status.EXPIRED
    item.decided_at = now
    item.deny_reason = "No decision by the deadline: denied automatically."
    item.save(update_fields=["status", "decided_at", "deny_reason"])
    audit_record(tenant=tenant, actor=system, action=f"{_kind(item)}.expired", obj=item,
                 after=_state(item))
    if isinstance(item, Escalation):
        _wake_escalation(item)
    _announce(tenant, item, "escalation.decided" if isinstance(item, Escalation)
              else "approval.decided")


def _deadline_passed(tenant: Tenant, item: Decidable, now: datetime) -> bool:
    """Handle a passed deadline on a locked pending item: hand it to the alternates (True: it
    is still pending) or expire it (False)."""
    if item.alternates and not item.on_alternates:
        item.on_alternates = True
        item.deadline = item.deadline + (item.deadline - item.created_at)
        item.reminded_at = None
        item.save(update_fields=["on_alternates", "deadline", "reminded_at"])
        audit_record(tenant=tenant, actor=Actor.system("approvals"),
                     action=f"{_kind(item)}.to_alternates", obj=item,
                     after={**_state(item), "alternates": item.alternates})
        _announce(tenant, item, "approval.reminder")
        if now < item.deadline:
            return True
    _expire(tenant, item, now)
    return False


def _decide(*, tenant: Tenant, actor: Actor, item: Decidable, approver: AbstractBaseUser,
            outcome: str, reason: str = "", now: datetime | None = None) -> Outcome:
    if outcome not in ApprovalDecision.Outcome.values:
        raise ValidationError({"outcome": "approve or deny"})
    reason = (reason or "").strip()
    if outcome == ApprovalDecision.Outcome.DENY and not reason:
        raise ValidationError({"reason": f"Say why the {_noun(item)} is denied."})
    item = _locked(tenant, item)
    noun = _noun(item)
    now = now or timezone.now()
    if item.status == Decidable.Status.PENDING and now >= item.deadline:
        if not _deadline_passed(tenant, item, now):
            return Outcome(item, f"This {noun} expired at its deadline before your decision.",
                           True)
    if item.status != Decidable.Status.PENDING:
        return Outcome(item, f"Nothing to do: this {noun} is already {item.status}.", False)
    if isinstance(item, AccessRequest) and approver.pk == item.requester_id:
        raise ValidationError("You requested this access: someone else must decide.")
    if approver.pk == item.agent.owner_id or approver.has_perm(AGENT_PERMISSION, item.agent):
        raise ValidationError("You own this agent: someone else must decide.")
    earlier = _earlier_decision(item, approver)
    if earlier is not None:
        which = "the alternates" if item.on_alternates else f"stage {item.current_stage + 1}"
        raise ValidationError(f"You already decided stage {earlier.stage + 1} of this {noun}: "
                              f"one approver counts once, so someone else must decide {which}.")
    rule = current_stage_rule(item)
    if approver.pk not in eligible_user_ids(tenant, rule, scope_id=item.scope_id):
        which = "the alternates" if item.on_alternates else f"stage {item.current_stage + 1}"
        raise ValidationError(f"You are not an eligible approver for {which} "
                              f"({describe_rule(rule, labels=False)}).")
    subject = {"request": item} if isinstance(item, AccessRequest) else {"escalation": item}
    try:
        with transaction.atomic():
            ApprovalDecision.objects.create(tenant=tenant, stage=item.current_stage,
                                            approver=approver, outcome=outcome, reason=reason,
                                            created_at=now, **subject)
    except IntegrityError:
        return Outcome(item, "Nothing to do: you have already decided this stage.", False)
    verb = "approved" if outcome == ApprovalDecision.Outcome.APPROVE else "denied"
    audit_record(tenant=tenant, actor=actor, action=f"{_kind(item)}.{verb}", obj=item,
                 after={"stage": item.current_stage + 1, "approver": approver.get_username(),
                        "outcome": outcome, "reason": reason,
                        "alternate": item.on_alternates})
    if outcome == ApprovalDecision.Outcome.DENY:
        _finish(tenant, actor, item, Decidable.Status.DENIED, now, reason)
        return Outcome(item, "Denied.", True)
    if not item.on_alternates:
        filters = {"request": item} if isinstance(item, AccessRequest) else {"escalation": item}
        approvals = ApprovalDecision.objects.filter(
            stage=item.current_stage, outcome=ApprovalDecision.Outcome.APPROVE,
            **filters).count()
        if approvals < rule["approvals_required"]:
            return Outcome(item, f"Approved: {approvals} of {rule['approvals_required']} "
                                 f"approvals at stage {item.current_stage + 1}.", True)
        if item.current_stage + 1 < len(item.stages):
            item.current_stage += 1
            item.save(update_fields=["current_stage"])
            # The next stage's approvers learn it waits for them (not who decided earlier).
            _announce(tenant, item, "escalation.created" if isinstance(item, Escalation)
                      else "approval.requested")
            return Outcome(item, f"Stage {item.current_stage} passed; stage "
                                 f"{item.current_stage + 1} decides next.", True)
    if isinstance(item, Escalation):
        _finish(tenant, actor, item, Decidable.Status.APPROVED, now)
        return Outcome(item, f"Approved: the gateway may now run {item.tool} once for "
                             f"{item.agent.name}.", True)
    grant = registry.grant_create(
        tenant=tenant, actor=actor, agent=item.agent, scope=item.scope,
        expires_at=now + timedelta(minutes=item.duration_minutes),
    )
    item.status = AccessRequest.Status.APPROVED
    item.decided_at = now
    item.grant = grant
    item.save(update_fields=["status", "decided_at", "grant"])
    audit_record(tenant=tenant, actor=actor, action="access_request.granted", obj=item,
                 after={**_request_state(item), "grant": grant.pk,
                        "expires_at": grant.expires_at.isoformat()})
    _announce(tenant, item, "approval.decided")
    return Outcome(item, f"Approved: {item.scope.name} granted to {item.agent.name} "
                         f"until {grant.expires_at:%Y-%m-%d %H:%M} UTC.", True)


@transaction.atomic
def access_request_decide(*, tenant: Tenant, actor: Actor, request: AccessRequest,
                          approver: AbstractBaseUser, outcome: str,
                          reason: str = "", now: datetime | None = None) -> Outcome:
    """One approver's decision on the request's current stage (see the module's rules)."""
    return _decide(tenant=tenant, actor=actor, item=request, approver=approver,
                   outcome=outcome, reason=reason, now=now)


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


def deadlines_due(*, now: datetime | None = None) -> int:
    """Pending items past their deadline go to their alternates or expire (Celery beat)."""
    now = now or timezone.now()
    count = 0
    for model in (AccessRequest, Escalation):
        for pk in model.objects.filter(status=Decidable.Status.PENDING,
                                       deadline__lte=now).values_list("pk", flat=True):
            with transaction.atomic():
                item = model.objects.select_for_update(of=("self",)).select_related(
                    "tenant", "agent", "scope").get(pk=pk)
                if item.status == Decidable.Status.PENDING and item.deadline <= now:
                    _deadline_passed(item.tenant, item, now)
                    count += 1
    return count




# --- Notifications and reminders --------------------------------------------------------------

def _announce(tenant: Tenant, item: Decidable, event: str) -> None:
    """Queue the notification of ``event`` about ``item`` (delivered by Celery after commit;
    never blocks or fails the decision)."""
    if event in ("approval.requested", "approval.reminder", "escalation.created"):
        recipients = eligible_for(tenant, item) - _excluded(item)
    elif isinstance(item, AccessRequest):
        recipients = {item.requester_id}
    else:
        recipients = set()
    what = (f"{item.scope.name} for agent {item.agent.name}" if isinstance(item, AccessRequest)
            else f"{item.server}/{item.tool} for agent {item.agent.name}")
    subjects = {
        "approval.requested": f"Approval needed: {what}",
        "escalation.created": f"Approval needed now: {what}",
        "approval.reminder": f"Reminder: {what} waits for a decision until "
                             f"{item.deadline:%Y-%m-%d %H:%M} UTC",
        "approval.decided": f"{what}: {item.status}",
        "escalation.decided": f"{what}: {item.status}",
    }
    notify(tenant=tenant, event=event, subject=subjects[event],
           text=subjects[event] + (f". Reason: {item.deny_reason}" if item.deny_reason else "."),
           link=item_link(tenant, item), recipients=_member_users(tenant, pk__in=recipients),
           data={"kind": _kind(item), "id": str(item.pk), "status": item.status,
                 "deadline": item.deadline.isoformat()})


def _member_users(tenant: Tenant, **filters) -> list[AbstractBaseUser]:
    """The tenant's members (as users) matching ``filters`` on the user, e.g. ``pk__in``."""
    return list(get_user_model().objects.filter(memberships__tenant=tenant, **filters))


def item_link(tenant: Tenant, item: Decidable) -> str:
    from django.urls import NoReverseMatch, reverse

    name = "approvals:request" if isinstance(item, AccessRequest) else "approvals:escalation"
    try:
        path = reverse(name, args=[tenant.slug, item.pk])
    except NoReverseMatch:
        path = f"/t/{tenant.slug}/"
    return settings.TOLLGATE_BASE_URL.rstrip("/") + path


def reminders_due(*, now: datetime | None = None) -> int:
    """Remind the eligible approvers once when a fifth of an item's waiting time is left."""
    now = now or timezone.now()
    count = 0
    for model in (AccessRequest, Escalation):
        for pk, created, deadline in model.objects.filter(
                status=Decidable.Status.PENDING, reminded_at__isnull=True,
                deadline__gt=now).values_list("pk", "created_at", "deadline"):
            if deadline - now > (deadline - created) / 5:
                continue
            with transaction.atomic():
                item = model.objects.select_for_update(of=("self",)).select_related(
                    "tenant", "agent", "scope").get(pk=pk)
                if item.status != Decidable.Status.PENDING or item.reminded_at is not None:
                    continue
                item.reminded_at = now
                item.save(update_fields=["reminded_at"])
                audit_record(tenant=item.tenant, actor=Actor.system("approvals"),
                             action=f"{_kind(item)}.reminded", obj=item, after=_state(item))
                _announce(item.tenant, item, "approval.reminder")
                count += 1
    return count


# --- Runtime escalations (DESIGN.md §5) -------------------------------------------------------

class Refused(Exception):
    """An escalation call the gateway API answers with an error: ``status``, ``code``,
    ``message`` (and ``retry_after`` for a flood)."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = (status, code, message,
                                                                  retry_after)


def escalation_topic(escalation_id) -> str:
    """The announcement topic long polls on one escalation wait on."""
    return f"escalation:{escalation_id}"


def _wake_escalation(escalation: Escalation) -> None:
    message = {"topic": escalation_topic(escalation.pk), "kind": "escalation",
               "status": escalation.status}
    transaction.on_commit(lambda: hot.safely("escalation announcement", hot.publish, message))


def _in_force(now: datetime) -> Q:
    return Q(status=Grant.Status.ACTIVE) & (Q(expires_at__isnull=True) | Q(expires_at__gt=now))


def _flood_alert(tenant: Tenant, gateway: Gateway, agent: Agent, count: int,
                 now: datetime) -> None:
    """Once per agent and minute: an audit event and a notification to the alert channels."""
    if not cache.add(f"approvals:flood:{agent.pk}:{int(now.timestamp()) // 60}", 1, 120):
        return
    with transaction.atomic():
        audit_record(tenant=tenant, actor=gateway_actor(gateway), action="escalation.flood",
                     obj=agent, after={"agent": agent.name, "gateway": gateway.name,
                                       "in_last_minute": count,
                                       "limit": settings.ESCALATION_RATE_LIMIT_PER_MINUTE})
        admins = _member_users(tenant, memberships__role=Role.ADMIN)
        subject = (f"Escalation flood: agent {agent.name} asked for approval {count} times in "
                   f"a minute; further escalations are refused")
        notify(tenant=tenant, event="escalation.flood", subject=subject, text=subject + ".",
               recipients=admins, data={"agent": agent.name, "gateway": gateway.name,
                                        "count": count})


def _validate_call(body: dict[str, Any]) -> dict[str, Any]:
    def text(name: str, limit: int = 200, required: bool = True) -> str:
        value = body.get(name, "")
        if not isinstance(value, str) or (required and not value.strip()) or len(value) > limit:
            raise Refused(400, "invalid", f"{name}: a string of 1 to {limit} characters.")
        return value.strip()

    call = {"call_id": text("call_id"), "agent": text("agent"), "server": text("server"),
            "tool": text("tool"), "reason": text("reason", 2000, required=False)}
    sha = body.get("arguments_sha256")
    if not isinstance(sha, str) or not _SHA256.match(sha):
        raise Refused(400, "invalid", "arguments_sha256: 64 lowercase hex digits.")
    call["arguments_sha256"] = sha
    arguments = body.get("arguments")
    if arguments is not None and not isinstance(arguments, dict):
        raise Refused(400, "invalid", "arguments: an object (possibly redacted) or absent.")
    call["arguments"] = arguments
    revision = body.get("bundle_revision")
    if revision is not None and (not isinstance(revision, int) or isinstance(revision, bool)
                                 or revision < 0):
        raise Refused(400, "invalid", "bundle_revision: a non-negative integer.")
    call["bundle_revision"] = revision
    return call


def _same_call(existing: Escalation, call: dict[str, Any]) -> bool:
    return (existing.agent.name, existing.server, existing.tool, existing.arguments_sha256) == (
        call["agent"], call["server"], call["tool"], call["arguments_sha256"])


def _existing(gateway: Gateway, call: dict[str, Any]) -> Escalation | None:
    existing = Escalation.objects.select_related("agent").filter(
        gateway=gateway, call_id=call["call_id"]).first()
    if existing is not None and not _same_call(existing, call):
        raise Refused(409, "conflict", f"call_id {call['call_id']} was already used for "
                                       f"another call; use a new call_id per tool call.")
    return existing


def escalation_create(*, tenant: Tenant, gateway: Gateway, body: Any,
                      now: datetime | None = None) -> tuple[Escalation, bool]:
    """``POST escalations``: (the escalation, created?). Idempotent on (gateway, call_id): the
    same call again returns the existing one. Raises ``Refused``: 400 malformed or nothing to
    approve (unknown agent or tool, no grant in force asks for approval: the gateway denies),
    409 a call_id reused for another call, 429 the agent's flood limit."""
    if not isinstance(body, dict):
        raise Refused(400, "invalid", "An escalation is a JSON object.")
    call = _validate_call(body)
    now = now or timezone.now()
    existing = _existing(gateway, call)
    if existing is not None:
        return existing, False
    limit = settings.ESCALATION_RATE_LIMIT_PER_MINUTE
    with transaction.atomic():
        # The agent's row lock serialises its escalations, so the flood count is exact.
        agent = Agent.objects.for_tenant(tenant).select_for_update().filter(
            name=call["agent"]).first()
        if agent is None:
            raise Refused(400, "invalid", f"agent: no agent {call['agent']} in this tenant.")
        existing = _existing(gateway, call)  # a concurrent twin committed while we waited
        if existing is not None:
            return existing, False
        recent = Escalation.objects.filter(agent=agent, created_at__gt=now - timedelta(
            seconds=60)).count()
        if recent < limit:
            escalation = _create_escalation(tenant, gateway, agent, call, now)
            return escalation, True
    _flood_alert(tenant, gateway, agent, recent + 1, now)
    raise Refused(429, "rate_limited", f"Agent {agent.name} has asked for approval {recent} "
                  f"times in the last minute (limit {limit}): refused, not queued.",
                  retry_after=60)


def _create_escalation(tenant: Tenant, gateway: Gateway, agent: Agent, call: dict[str, Any],
                       now: datetime) -> Escalation:
    if agent.status != Agent.Status.ACTIVE:
        raise Refused(400, "invalid", f"agent: {agent.name} is {agent.status}.")
    tool = Tool.objects.for_tenant(tenant).filter(server__name=call["server"],
                                                  name=call["tool"]).first()
    if tool is None:
        raise Refused(400, "invalid", f"tool: no tool {call['tool']} on server "
                                      f"{call['server']} in this tenant.")
    grant = (Grant.objects.for_tenant(tenant).filter(_in_force(now), agent=agent,
                                                     scope__tools=tool)
             .exclude(approval_mode=Grant.ApprovalMode.NEVER).select_related("scope")
             .order_by("pk").first())
    if grant is None:
        raise Refused(400, "invalid", f"No grant in force lets agent {agent.name} call "
                                      f"{call['server']}/{call['tool']} with approval: deny "
                                      f"the call (and refresh the bundle).")
    rules = policy_rules(tenant, grant.scope)
    timeout = int(escalation_settings(tenant)["decision_timeout_seconds"])
    escalation = Escalation.objects.create(
        tenant=tenant, gateway=gateway, call_id=call["call_id"], agent=agent, grant=grant,
        scope=grant.scope, server=call["server"], tool=call["tool"],
        arguments=call["arguments"], arguments_sha256=call["arguments_sha256"],
        bundle_revision=call["bundle_revision"], reason=call["reason"], stages=rules.stages,
        alternates=rules.alternates, created_at=now, deadline=now + timedelta(seconds=timeout),
    )
    audit_record(tenant=tenant, actor=gateway_actor(gateway), action="escalation.created",
                 obj=escalation, after={**_escalation_state(escalation),
                                        "call_id": escalation.call_id, "grant": grant.pk,
                                        "gateway": gateway.name,
                                        "arguments_sent": call["arguments"] is not None})
    _announce(tenant, escalation, "escalation.created")
    return escalation


@transaction.atomic
def escalation_decide(*, tenant: Tenant, actor: Actor, escalation: Escalation,
                      approver: AbstractBaseUser, outcome: str, reason: str = "",
                      now: datetime | None = None) -> Outcome:
    """One approver's decision on an escalation (the same rules as access requests)."""
    return _decide(tenant=tenant, actor=actor, item=escalation, approver=approver,
                   outcome=outcome, reason=reason, now=now)


@transaction.atomic
def escalation_refresh(*, tenant: Tenant, escalation: Escalation,
                       now: datetime | None = None) -> Escalation:
    """The escalation as it stands, its passed deadline handled first (alternates or expiry);
    what the gateway's GET sees."""
    now = now or timezone.now()
    if escalation.status == Decidable.Status.PENDING and now >= escalation.deadline:
        escalation = _locked(tenant, escalation)
        if escalation.status == Decidable.Status.PENDING and now >= escalation.deadline:
            _deadline_passed(tenant, escalation, now)
    return escalation


def escalation_receipt(*, escalation: Escalation, now: datetime | None = None
                       ) -> tuple[str, datetime]:
    """A short-lived ES256 receipt for an approved, unconsumed escalation, signed with the
    tenant's active bundle key (gateways already trust its JWKS) and bound to the agent, the
    tool, the arguments' hash and the escalation id. Minted on each read; one use in total,
    enforced by ``escalation_consume``."""
    now = now or timezone.now()
    tenant = escalation.tenant
    with transaction.atomic():  # the tenant's very first key may be created here
        key = signing_key_for_build(tenant=tenant)
    expires = now + timedelta(seconds=settings.ESCALATION_RECEIPT_SECONDS)
    payload = {"iss": settings.TOLLGATE_BASE_URL, "scope": tenant.slug,
               "sub": str(escalation.pk), "jti": str(escalation.pk),
               "agent": escalation.agent.name, "server": escalation.server,
               "tool": escalation.tool, "arguments_sha256": escalation.arguments_sha256,
               "iat": int(now.timestamp()), "exp": int(expires.timestamp())}
    token = jwt.encode(payload, keys.load_private(key.private_key_encrypted), algorithm="ES256",
                       headers={"kid": key.kid, "typ": RECEIPT_TYPE})
    return token, expires


@transaction.atomic
def escalation_consume(*, tenant: Tenant, gateway: Gateway, escalation: Escalation,
                       now: datetime | None = None) -> Escalation:
    """``POST escalations/<id>/consume``: atomically spend the approval; anything but an
    approved, unspent escalation is ``Refused`` 409 (a second consume, a denial, an expiry)."""
    escalation = _locked(tenant, escalation)
    if escalation.status != Decidable.Status.APPROVED:
        raise Refused(409, "conflict", f"The escalation is {escalation.status}: there is no "
                                       f"approval to use.")
    if escalation.consumed_at is not None:
        raise Refused(409, "conflict", f"The approval was already used at "
                                       f"{escalation.consumed_at.isoformat()}.")
    escalation.consumed_at = now or timezone.now()
    escalation.save(update_fields=["consumed_at"])
    audit_record(tenant=tenant, actor=gateway_actor(gateway), action="escalation.consumed",
                 obj=escalation, after={**_escalation_state(escalation),
                                        "gateway": gateway.name,
                                        "consumed_at": escalation.consumed_at.isoformat()})
    return escalation


# --- Break-glass and grant expiry -------------------------------------------------------------

@transaction.atomic
def break_glass_grant(*, tenant: Tenant, actor: Actor, admin: AbstractBaseUser, agent: Agent,
                      scope: ToolScope, justification: str, minutes: int) -> Grant:
    """An admin's emergency self-grant: no approval, at most BREAK_GLASS_MAX_MINUTES, flagged
    on the grant (and so in the bundle and the evidence), audited as ``grant.break_glass`` and
    alerted to every admin."""
    if not Membership.objects.for_tenant(tenant).filter(user=admin, role=Role.ADMIN).exists():
        raise ValidationError("Only an admin can break the glass.")
    if agent.tenant_id != tenant.pk or scope.tenant_id != tenant.pk:
        raise ValidationError("Agent and scope must belong to this tenant.")
    justification = (justification or "").strip()
    if not justification:
        raise ValidationError({"justification": "Say why this cannot wait for an approval."})
    limit = settings.BREAK_GLASS_MAX_MINUTES
    if not 1 <= int(minutes) <= limit:
        raise ValidationError({"minutes": f"Between 1 and {limit} minutes."})
    now = timezone.now()
    grant = registry.grant_create(tenant=tenant, actor=actor, agent=agent, scope=scope,
                                  created_by=admin, expires_at=now + timedelta(
                                      minutes=int(minutes)))
    grant.break_glass = True
    grant.justification = justification
    grant.save(update_fields=["break_glass", "justification"])
    audit_record(tenant=tenant, actor=actor, action="grant.break_glass", obj=grant,
                 after={"break_glass": True, "agent": agent.name, "scope": scope.name,
                        "justification": justification, "minutes": int(minutes),
                        "expires_at": grant.expires_at.isoformat()})
    admins = _member_users(tenant, memberships__role=Role.ADMIN)
    subject = (f"Break-glass: {admin.get_username()} granted {scope.name} to agent "
               f"{agent.name} for {int(minutes)} minutes")
    notify(tenant=tenant, event="break_glass.used", subject=subject,
           text=f"{subject}. Justification: {justification}", recipients=admins,
           data={"grant": grant.pk, "agent": agent.name, "scope": scope.name,
                 "admin": admin.get_username(), "expires_at": grant.expires_at.isoformat()})
    # The break-glass alert rule (one alert per grant), in this same transaction.
    alert_raise(tenant=tenant, kind="break_glass_used", key=f"grant:{grant.pk}", subject=subject,
                detail={"grant": grant.pk, "agent": agent.name, "scope": scope.name,
                        "admin": admin.get_username(), "minutes": int(minutes),
                        "justification": justification, "expires_at": grant.expires_at},
                actor=actor)
    return grant


def grants_expire_due(*, now: datetime | None = None) -> int:
    """Active grants past their expiry become ``expired`` (audited by the system actor), which
    publishes a bundle without them (Celery beat)."""
    now = now or timezone.now()
    count = 0
    for pk in Grant.objects.filter(status=Grant.Status.ACTIVE, expires_at__lte=now
                                   ).values_list("pk", flat=True):
        with transaction.atomic():
            grant = Grant.objects.select_for_update(of=("self",)).select_related(
                "tenant", "agent", "scope").get(pk=pk)
            if grant.status != Grant.Status.ACTIVE or grant.expires_at > now:
                continue
            grant.status = Grant.Status.EXPIRED
            grant.save(update_fields=["status"])
            audit_record(tenant=grant.tenant, actor=Actor.system("approvals"),
                         action="grant.expired", obj=grant,
                         after={"agent": grant.agent.name, "scope": grant.scope.name,
                                "expires_at": grant.expires_at.isoformat(),
                                "break_glass": grant.break_glass})
            count += 1
    return count


# --- Eligibility of one person, for reads (inbox, counters) -----------------------------------

@dataclass(frozen=True)
class ApproverProfile:
    """What makes one person eligible for a stage in one tenant: their role and IdP groups."""

    user_id: int
    role: str | None
    groups: frozenset[str]

    def admits(self, stage: dict[str, Any]) -> bool:
        """The rule of ``eligible_user_ids``, for one person: a member whose role the stage names,
        or (when it names one) a member in the stage's IdP group."""
        if self.role is None:
            return False
        if self.role in (stage.get("roles") or []):
            return True
        group = stage.get("idp_group") or ""
        return bool(group) and group in self.groups


def approver_profile(tenant: Tenant, user: AbstractBaseUser) -> ApproverProfile:
    """``user``'s role and IdP groups in ``tenant``, in one query (no membership: no role)."""
    role, groups = None, set()
    for member_role, last_groups in Membership.objects.for_tenant(tenant).filter(
            user=user).values_list("role", "user__external_identities__last_groups"):
        role = member_role
        groups.update(last_groups or [])
    return ApproverProfile(user.pk, role, frozenset(groups))


@transaction.atomic
def approval_policy_delete(*, tenant: Tenant, actor: Actor, policy: ApprovalPolicy) -> None:
    """Remove a policy: requests made from now on fall back to the next less specific one
    (running requests keep the stages they were made with)."""
    policy = ApprovalPolicy.objects.for_tenant(tenant).select_for_update().get(pk=policy.pk)
    before = {"scope": policy.scope.name if policy.scope_id else None,
              "risk_level": policy.risk_level, "decision_hours": policy.decision_hours,
              "stages": [_stage_doc(s) for s in policy.stages.order_by("position")]}
    audit_record(tenant=tenant, actor=actor, action="approval_policy.deleted", obj=policy,
                 before=before)
    policy.delete()


# --- Approver object permissions --------------------------------------------------------------

def _approver_target(tenant: Tenant, user: AbstractBaseUser, obj: ToolScope | McpServer) -> str:
    """Check a grant/revoke of the approve permission; return the object's label."""
    if not isinstance(obj, ToolScope | McpServer):
        raise ValidationError("The approve permission is given on a scope or on a server.")
    if obj.tenant_id != tenant.pk:
        raise ValidationError("That scope or server does not belong to this tenant.")
    if not Membership.objects.for_tenant(tenant).filter(user=user).exists():
        raise ValidationError({"member": f"{user.get_username()} is not a member of this "
                                         "tenant: add them as a member first."})
    return f"{'scope' if isinstance(obj, ToolScope) else 'server'} {obj.name}"


def _holds_approve(user: AbstractBaseUser, obj: ToolScope | McpServer) -> bool:
    from guardian.shortcuts import get_user_perms

    return APPROVE_PERMISSION in get_user_perms(user, obj)


@transaction.atomic
def approver_permission_grant(*, tenant: Tenant, actor: Actor, user: AbstractBaseUser,
                              obj: ToolScope | McpServer) -> None:
    """Give a member ``registry.approve_access`` on a scope or server: stages with
    ``object_permission`` then count them as eligible for that scope (or the server's)."""
    from guardian.shortcuts import assign_perm

    label = _approver_target(tenant, user, obj)
    if _holds_approve(user, obj):
        raise ValidationError(f"{user.get_username()} already approves for {label}.")
    assign_perm(f"registry.{APPROVE_PERMISSION}", user, obj)
    audit_record(tenant=tenant, actor=actor, action="approver_permission.granted", obj=obj,
                 after={"user": user.get_username(), "permission": APPROVE_PERMISSION,
                        "object": label})


@transaction.atomic
def approver_permission_revoke(*, tenant: Tenant, actor: Actor, user: AbstractBaseUser,
                               obj: ToolScope | McpServer) -> None:
    """Take ``registry.approve_access`` on a scope or server away from a member (pending items
    re-check eligibility at decision time, so it applies to them at once)."""
    from guardian.shortcuts import remove_perm

    label = _approver_target(tenant, user, obj)
    if not _holds_approve(user, obj):
        raise ValidationError(f"{user.get_username()} does not approve for {label}.")
    remove_perm(f"registry.{APPROVE_PERMISSION}", user, obj)
    audit_record(tenant=tenant, actor=actor, action="approver_permission.revoked", obj=obj,
                 before={"user": user.get_username(), "permission": APPROVE_PERMISSION,
                         "object": label})
