"""Approval policies: who must approve access to a scope (its own policy, its risk level's, the
tenant default), saved only when every stage can be passed today."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from approvals.models import ApprovalPolicy, ApprovalStage
from approvals.selectors import eligible_user_ids
from governance.audit.services import Actor, audit_record
from governance.tenancy.models import Tenant
from governance.tenancy.roles import Role
from registry.models import Risk, ToolScope


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
                  "stages": [s.rule() for s in policy.stages.order_by("position")],
                  "alternates": policy.alternates_rule()}
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
                                       "alternates": policy.alternates_rule()})
    return policy



@transaction.atomic
def approval_policy_delete(*, tenant: Tenant, actor: Actor, policy: ApprovalPolicy) -> None:
    """Remove a policy: requests made from now on fall back to the next less specific one
    (running requests keep the stages they were made with)."""
    policy = ApprovalPolicy.objects.for_tenant(tenant).select_for_update().get(pk=policy.pk)
    before = {"scope": policy.scope.name if policy.scope_id else None,
              "risk_level": policy.risk_level, "decision_hours": policy.decision_hours,
              "stages": [s.rule() for s in policy.stages.order_by("position")]}
    audit_record(tenant=tenant, actor=actor, action="approval_policy.deleted", obj=policy,
                 before=before)
    policy.delete()

