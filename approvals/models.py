"""Approval policies, access requests and the decisions on them (DESIGN.md §6)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from governance.tenancy.models import TenantScopedModel
from governance.tenancy.roles import Role
from registry.models import Agent, Grant, Risk, ToolScope


class ApprovalPolicy(TenantScopedModel):
    """Who must approve access to a scope. The most specific policy applies: the scope's own,
    else the one for the scope's risk level, else the tenant default (neither set)."""

    scope = models.ForeignKey(ToolScope, null=True, blank=True, on_delete=models.CASCADE,
                              related_name="approval_policies")
    risk_level = models.CharField(max_length=10, choices=Risk.choices, blank=True)
    # How long a request waits for its decision (not how long the access lasts).
    decision_hours = models.PositiveIntegerField(default=24)
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


class ApprovalStage(TenantScopedModel):
    """One ordered stage of a policy: ``approvals_required`` distinct eligible approvers."""

    policy = models.ForeignKey(ApprovalPolicy, on_delete=models.CASCADE, related_name="stages")
    position = models.PositiveIntegerField()
    approvals_required = models.PositiveIntegerField(default=1)
    # Eligible: members with one of these roles, or (if set) members of this IdP group.
    roles = models.JSONField(default=list, blank=True)
    idp_group = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["policy", "position"]
        constraints = [
            models.UniqueConstraint(fields=["policy", "position"], name="approvalstage_order"),
            models.CheckConstraint(condition=models.Q(approvals_required__gte=1),
                                   name="approvalstage_needs_one"),
        ]

    def __str__(self) -> str:
        return f"stage {self.position + 1}: {self.approvals_required} of {self.describe()}"

    def describe(self) -> str:
        parts = [", ".join(Role(r).label for r in self.roles)] if self.roles else []
        if self.idp_group:
            parts.append(f"IdP group {self.idp_group}")
        return " or ".join(parts) or "nobody"


class AccessRequest(TenantScopedModel):
    """A request for a scope for an agent, decided stage by stage by eligible approvers."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        DENIED = "denied", "Denied"
        EXPIRED = "expired", "Expired"
        CANCELLED = "cancelled", "Cancelled"

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="access_requests")
    scope = models.ForeignKey(ToolScope, on_delete=models.CASCADE,
                              related_name="access_requests")
    requester = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                                  related_name="access_requests")
    justification = models.TextField()
    ticket = models.CharField(max_length=200, blank=True)
    # Access lasts this long from the moment of approval.
    duration_minutes = models.PositiveIntegerField()
    # The policy's stages as they were when the request was made (a later edit of the policy
    # does not change the rules of a running request); eligibility is checked at decision time.
    stages = models.JSONField(default=list)
    current_stage = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(default=timezone.now)
    deadline = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)
    deny_reason = models.TextField(blank=True)
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


class ApprovalDecision(TenantScopedModel):
    """One approver's decision at one stage; an approver counts once per stage."""

    class Outcome(models.TextChoices):
        APPROVE = "approve", "Approve"
        DENY = "deny", "Deny"

    request = models.ForeignKey(AccessRequest, on_delete=models.CASCADE,
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
        ]

    def __str__(self) -> str:
        return f"{self.approver} {self.outcome}s stage {self.stage + 1}"
