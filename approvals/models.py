"""Approval policies, access requests, runtime escalations and the decisions on them
(DESIGN.md §5 escalations, §6)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

from governance.audit.snapshot import AuditField, isoformat
from governance.tenancy.models import TenantScopedModel
from governance.tenancy.roles import Role
from registry.models import Agent, Grant, Risk, ToolScope


def describe_rule(rule: Mapping[str, Any], *, labels: bool = True) -> str:
    """Who a stage (or the alternates) admits, for people: "Approver, Admin or IdP group x"
    (``labels=False``: the role values, as service messages name them)."""
    roles = rule.get("roles") or []
    parts = [", ".join(Role(r).label if labels else r for r in roles)] if roles else []
    if rule.get("idp_group"):
        parts.append(f"IdP group {rule['idp_group']}")
    if rule.get("object_permission"):
        parts.append("approvers of the scope or its server")
    return " or ".join(parts) or "nobody"


class ApprovalPolicy(TenantScopedModel):
    """Who must approve access to a scope. The most specific policy applies: the scope's own,
    else the one for the scope's risk level, else the tenant default (neither set)."""

    scope = models.ForeignKey(ToolScope, null=True, blank=True, on_delete=models.CASCADE,
                              related_name="approval_policies")
    risk_level = models.CharField(max_length=10, choices=Risk.choices, blank=True)
    # How long a request waits for its decision (not how long the access lasts).
    decision_hours = models.PositiveIntegerField(default=24)
    # Undecided at the deadline: these approvers get one more period of the same length (any
    # one of them decides), then the system denies the item (status ``expired``).
    alternate_roles = models.JSONField(default=list, blank=True)
    alternate_idp_group = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "scope"], condition=models.Q(
                scope__isnull=False), name="approvalpolicy_one_per_scope"),
            models.UniqueConstraint(fields=["tenant", "risk_level"], condition=models.Q(
                scope__isnull=True), name="approvalpolicy_one_per_level"),
            models.CheckConstraint(condition=models.Q(scope__isnull=True) | models.Q(
                risk_level=""), name="approvalpolicy_scope_or_level"),
            models.CheckConstraint(condition=models.Q(decision_hours__gte=1),
                                   name="approvalpolicy_deadline_positive"),
        ]

    def __str__(self) -> str:
        if self.scope_id:
            return f"policy for scope {self.scope}"
        return f"policy for {self.risk_level} risk" if self.risk_level else "tenant default policy"

    def alternates_rule(self) -> dict[str, Any] | None:
        """The alternate approvers as the rule frozen into items (None when it names none)."""
        if not (self.alternate_roles or self.alternate_idp_group):
            return None
        return {"approvals_required": 1, "roles": list(self.alternate_roles),
                "idp_group": self.alternate_idp_group, "object_permission": False}

    def describe_alternates(self) -> str:
        """Who the alternate approvers are ("" when the policy names none)."""
        if not (self.alternate_roles or self.alternate_idp_group):
            return ""
        return describe_rule({"roles": self.alternate_roles,
                              "idp_group": self.alternate_idp_group})


class ApprovalStage(TenantScopedModel):
    """One ordered stage of a policy: ``approvals_required`` distinct eligible approvers."""

    policy = models.ForeignKey(ApprovalPolicy, on_delete=models.CASCADE, related_name="stages")
    position = models.PositiveIntegerField()
    approvals_required = models.PositiveIntegerField(default=1)
    # Eligible: members with one of these roles, or (if set) members of this IdP group.
    roles = models.JSONField(default=list, blank=True)
    idp_group = models.CharField(max_length=200, blank=True)
    # …or holders of the ``registry.approve_access`` object permission on the scope or on a
    # server whose tools it contains.
    object_permission = models.BooleanField(default=False)

    class Meta:
        ordering = ["policy", "position"]
        constraints = [
            models.UniqueConstraint(fields=["policy", "position"], name="approvalstage_order"),
            models.CheckConstraint(condition=models.Q(approvals_required__gte=1),
                                   name="approvalstage_needs_one"),
        ]

    def __str__(self) -> str:
        return f"stage {self.position + 1}: {self.approvals_required} of {self.describe()}"

    def rule(self) -> dict[str, Any]:
        """The stage as the rule frozen into items."""
        return {"approvals_required": self.approvals_required, "roles": list(self.roles),
                "idp_group": self.idp_group, "object_permission": self.object_permission}

    def describe(self) -> str:
        return describe_rule({"roles": self.roles, "idp_group": self.idp_group,
                              "object_permission": self.object_permission})


class Decidable(TenantScopedModel):
    """What access requests and escalations share: the policy frozen at creation, the stage
    being decided, the deadline and the outcome. The decision rules live in one place
    (``approvals.services.decisions``) for both."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        DENIED = "denied", "Denied"
        EXPIRED = "expired", "Expired"
        CANCELLED = "cancelled", "Cancelled"

    # The policy's stages as they were at creation (a later edit of the policy does not change
    # the rules of a running item); eligibility is checked at decision time.
    stages = models.JSONField(default=list)
    current_stage = models.PositiveIntegerField(default=0)
    # The policy's alternate approvers ({"roles", "idp_group"}) or None; ``on_alternates`` once
    # the first deadline passed and the item went to them.
    alternates = models.JSONField(null=True, blank=True)
    on_alternates = models.BooleanField(default=False)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(default=timezone.now)
    deadline = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)
    deny_reason = models.TextField(blank=True)
    reminded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True


class AccessRequest(Decidable):
    """A request for a scope for an agent, decided stage by stage by eligible approvers."""

    audit_fields = ("status", "agent", "scope", "duration_minutes", "current_stage",
                    AuditField("deadline", render=isoformat))

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="access_requests")
    scope = models.ForeignKey(ToolScope, on_delete=models.CASCADE,
                              related_name="access_requests")
    requester = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                                  related_name="access_requests")
    justification = models.TextField()
    ticket = models.CharField(max_length=200, blank=True)
    # Access lasts this long from the moment of approval.
    duration_minutes = models.PositiveIntegerField()
    grant = models.OneToOneField(Grant, null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="access_request")

    class Meta:
        ordering = ["deadline"]
        indexes = [models.Index(fields=["tenant", "status", "deadline"])]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=["pending", "approved", "denied", "expired",
                                               "cancelled"]),
                name="accessrequest_status_valid"),
            models.CheckConstraint(condition=models.Q(duration_minutes__gte=1),
                                   name="accessrequest_duration_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.scope} for {self.agent} ({self.status})"


class Escalation(Decidable):
    """One held tool call waiting for a human (DESIGN.md §5 escalations): created by a gateway,
    idempotent on (gateway, call_id), decided like an access request, then answered with a
    short-lived signed receipt that the gateway consumes exactly once."""

    audit_fields = ("status", "agent", "server", "tool", "arguments_sha256", "on_behalf_of",
                    "current_stage", AuditField("deadline", render=isoformat))

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    gateway = models.ForeignKey("bundles.Gateway", on_delete=models.CASCADE,
                                related_name="escalations")
    call_id = models.CharField(max_length=200)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="escalations")
    # The grant that asked for approval, and its scope (whose policy decides).
    grant = models.ForeignKey(Grant, null=True, on_delete=models.SET_NULL,
                              related_name="escalations")
    scope = models.ForeignKey(ToolScope, on_delete=models.CASCADE, related_name="escalations")
    server = models.CharField(max_length=200)
    tool = models.CharField(max_length=200)
    # What the gateway sent (possibly redacted) and the hash of the real arguments: the receipt
    # binds the hash, so an approval cannot be spent on other arguments.
    arguments = models.JSONField(null=True, blank=True)
    arguments_sha256 = models.CharField(max_length=64)
    bundle_revision = models.PositiveIntegerField(null=True, blank=True)
    reason = models.TextField(blank=True)
    consumed_at = models.DateTimeField(null=True, blank=True)
    # Delegation: the person the agent acts for (token subject) and the groups the token listed;
    # empty when the agent acts on its own.
    on_behalf_of = models.CharField(max_length=500, blank=True)
    on_behalf_of_groups = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["deadline"]
        indexes = [models.Index(fields=["tenant", "status", "deadline"]),
                   models.Index(fields=["agent", "created_at"])]
        constraints = [
            models.UniqueConstraint(fields=["gateway", "call_id"],
                                    name="escalation_once_per_call"),
            models.CheckConstraint(
                condition=models.Q(status__in=["pending", "approved", "denied", "expired"]),
                name="escalation_status_valid"),
            models.CheckConstraint(condition=models.Q(consumed_at__isnull=True) | models.Q(
                status="approved"), name="escalation_consumed_only_approved"),
        ]

    def __str__(self) -> str:
        return f"{self.agent} → {self.server}/{self.tool} ({self.status})"


class ApprovalDecision(TenantScopedModel):
    """One approver's decision at one stage of a request or an escalation; an approver counts
    once per item (the constraints hold per stage, the services across stages)."""

    class Outcome(models.TextChoices):
        APPROVE = "approve", "Approve"
        DENY = "deny", "Deny"

    request = models.ForeignKey(AccessRequest, null=True, blank=True, on_delete=models.CASCADE,
                                related_name="decisions")
    escalation = models.ForeignKey(Escalation, null=True, blank=True, on_delete=models.CASCADE,
                                   related_name="decisions")
    stage = models.PositiveIntegerField()
    approver = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                                 related_name="approval_decisions")
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(fields=["request", "stage", "approver"],
                                    name="approvaldecision_once_per_stage"),
            models.UniqueConstraint(fields=["escalation", "stage", "approver"],
                                    name="approvaldecision_once_per_escalation_stage"),
            models.CheckConstraint(
                condition=models.Q(request__isnull=True, escalation__isnull=False)
                | models.Q(request__isnull=False, escalation__isnull=True),
                name="approvaldecision_one_subject"),
        ]

    def __str__(self) -> str:
        return f"{self.approver} {self.outcome}s stage {self.stage + 1}"
