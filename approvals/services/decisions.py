"""The rules of decidable items (access requests and escalations), in one place for both.

The applicable policy is frozen into the item when it is created and the same rules decide
both, whatever the caller (DESIGN.md §6):
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

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from approvals import notices
from approvals.models import (
    AccessRequest,
    ApprovalDecision,
    Decidable,
    Escalation,
    describe_rule,
)
from approvals.selectors import (
    current_stage_rule,
    eligible_for,
    eligible_user_ids,
    excluded_approvers,
    member_users,
)
from bundles import hot
from governance.audit.services import Actor, audit_record
from governance.tenancy.models import Tenant
from notifications.services import notify
from registry import services as registry
from registry.services import AGENT_PERMISSION


@dataclass(frozen=True)
class Outcome:
    """What a decision did: the item as it now stands and a sentence for the person."""

    request: Decidable
    message: str
    changed: bool

    @property
    def item(self) -> Decidable:
        return self.request


# --- Names ------------------------------------------------------------------------------------

def _kind(item: Decidable) -> str:
    return "access_request" if isinstance(item, AccessRequest) else "escalation"


def _noun(item: Decidable) -> str:
    return "request" if isinstance(item, AccessRequest) else "escalation"


# --- Deciding ---------------------------------------------------------------------------------

def locked(tenant: Tenant, item: Decidable) -> Decidable:
    """``item`` re-read under its row lock (decisions on one item are serialised by it)."""
    model = type(item)
    related = ("agent", "scope", "requester") if model is AccessRequest else ("agent", "scope")
    return (model.objects.for_tenant(tenant).select_for_update(of=("self",))
            .select_related(*related).get(pk=item.pk))


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
                     after={**item.audit_snapshot(), "reason": reason})
        wake_escalation(item)
    announce(tenant, item, "escalation.decided" if isinstance(item, Escalation)
             else "approval.decided")


def _expire(tenant: Tenant, item: Decidable, now: datetime) -> None:
    """The automatic denial at the (last) deadline, by the system actor."""
    system = Actor.system("approvals")
    item.status = Decidable.Status.EXPIRED
    item.decided_at = now
    item.deny_reason = "No decision by the deadline: denied automatically."
    item.save(update_fields=["status", "decided_at", "deny_reason"])
    audit_record(tenant=tenant, actor=system, action=f"{_kind(item)}.expired", obj=item,
                 after=item.audit_snapshot())
    if isinstance(item, Escalation):
        wake_escalation(item)
    announce(tenant, item, "escalation.decided" if isinstance(item, Escalation)
             else "approval.decided")


def deadline_passed(tenant: Tenant, item: Decidable, now: datetime) -> bool:
    """Handle a passed deadline on a locked pending item: hand it to the alternates (True: it
    is still pending) or expire it (False)."""
    if item.alternates and not item.on_alternates:
        item.on_alternates = True
        item.deadline = item.deadline + (item.deadline - item.created_at)
        item.reminded_at = None
        item.save(update_fields=["on_alternates", "deadline", "reminded_at"])
        audit_record(tenant=tenant, actor=Actor.system("approvals"),
                     action=f"{_kind(item)}.to_alternates", obj=item,
                     after={**item.audit_snapshot(), "alternates": item.alternates})
        announce(tenant, item, "approval.reminder")
        if now < item.deadline:
            return True
    _expire(tenant, item, now)
    return False


def decide_item(*, tenant: Tenant, actor: Actor, item: Decidable, approver: AbstractBaseUser,
                outcome: str, reason: str = "", now: datetime | None = None) -> Outcome:
    if outcome not in ApprovalDecision.Outcome.values:
        raise ValidationError({"outcome": "approve or deny"})
    reason = (reason or "").strip()
    if outcome == ApprovalDecision.Outcome.DENY and not reason:
        raise ValidationError({"reason": f"Say why the {_noun(item)} is denied."})
    item = locked(tenant, item)
    noun = _noun(item)
    now = now or timezone.now()
    if item.status == Decidable.Status.PENDING and now >= item.deadline:
        if not deadline_passed(tenant, item, now):
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
            announce(tenant, item, "escalation.created" if isinstance(item, Escalation)
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
                 after={**item.audit_snapshot(), "grant": grant.pk,
                        "expires_at": grant.expires_at.isoformat()})
    announce(tenant, item, "approval.decided")
    return Outcome(item, f"Approved: {item.scope.name} granted to {item.agent.name} "
                         f"until {grant.expires_at:%Y-%m-%d %H:%M} UTC.", True)


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
                    deadline_passed(item.tenant, item, now)
                    count += 1
    return count


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
                             action=f"{_kind(item)}.reminded", obj=item,
                             after=item.audit_snapshot())
                announce(item.tenant, item, "approval.reminder")
                count += 1
    return count


# --- Notifications ----------------------------------------------------------------------------

def announce(tenant: Tenant, item: Decidable, event: str) -> None:
    """Queue the notification of ``event`` about ``item`` (delivered by Celery after commit;
    never blocks or fails the decision)."""
    if event in ("approval.requested", "approval.reminder", "escalation.created"):
        recipients = eligible_for(tenant, item) - excluded_approvers(item)
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
    notify(tenant=tenant, event=event, subject=subjects[event], text=notices.item_summary(item),
           facts=notices.item_facts(item), link=notices.item_path(tenant, item),
           recipients=member_users(tenant, pk__in=recipients), data=notices.item_data(item))


def escalation_topic(escalation_id) -> str:
    """The announcement topic long polls on one escalation wait on."""
    return f"escalation:{escalation_id}"


def wake_escalation(escalation: Escalation) -> None:
    message = {"topic": escalation_topic(escalation.pk), "kind": "escalation",
               "status": escalation.status}
    transaction.on_commit(lambda: hot.safely("escalation announcement", hot.publish, message))

