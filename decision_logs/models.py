"""Decision logs uploaded by gateways (DESIGN.md §5 ``POST logs``) and their hourly roll-up.

A ``DecisionLog`` row is one OPA decision-log event about one MCP call. Rows are written in bulk
by the ingestion service (never one by one), are immutable, and are deleted only by the
retention purge. The columns are the MCP fields of the contract, flattened so the search page's
filters hit an index; ``labels`` and ``arguments`` (optional, already redacted by the gateway)
keep the rest.

``DecisionRollup`` counts events per tenant, hour and outcome. The ingestion service adds to it
in the same transaction, counting only rows it really inserted (a re-sent batch adds nothing),
so the dashboard's chart and ``/metrics``' counter never scan the log table.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from bundles.models import Gateway
from governance.tenancy.models import Tenant, TenantScopedModel


class Outcome(models.TextChoices):
    ALLOW = "allow", "Allowed"
    DENY = "deny", "Denied"
    ESCALATE = "escalate", "Escalated"


class DecisionLog(TenantScopedModel):
    """One gateway decision about one MCP call."""

    # The composite indexes below all start with the tenant; a single-column one would only
    # slow ingestion down.
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, db_index=False)
    id = models.BigAutoField(primary_key=True)
    decision_id = models.CharField(max_length=100)
    timestamp = models.DateTimeField()
    received_at = models.DateTimeField(default=timezone.now)
    gateway = models.ForeignKey(Gateway, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="+", db_index=False)
    bundle_revision = models.BigIntegerField(null=True, blank=True)
    agent = models.CharField(max_length=200, blank=True)
    principal = models.CharField(max_length=500, blank=True)
    server = models.CharField(max_length=200)
    tool = models.CharField(max_length=200)
    call_id = models.CharField(max_length=200, blank=True)
    arguments_sha256 = models.CharField(max_length=64)
    arguments = models.JSONField(null=True, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    reason = models.CharField(max_length=1000, blank=True)
    # The grant that decided the call (data.json's grant id, the Grant's pk) and, for an
    # escalated call, the escalation the gateway created; kept as plain values so a log row
    # outlives what it names.
    grant_id = models.BigIntegerField(null=True, blank=True)
    escalation_id = models.UUIDField(null=True, blank=True)
    labels = models.JSONField(default=dict, blank=True)
    # Delegation: the person the agent acted for (the token's subject) and the groups it listed.
    on_behalf_of = models.CharField(max_length=500, blank=True)
    on_behalf_of_groups = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-timestamp", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "decision_id"],
                                    name="decisionlog_unique_decision_id"),
            models.CheckConstraint(condition=models.Q(outcome__in=["allow", "deny", "escalate"]),
                                   name="decisionlog_outcome_valid"),
        ]
        indexes = [
            models.Index(fields=["tenant", "-timestamp"], name="decisionlog_tenant_time"),
            models.Index(fields=["tenant", "agent", "-timestamp"], name="decisionlog_agent"),
            models.Index(fields=["tenant", "server", "tool", "-timestamp"],
                         name="decisionlog_tool"),
            models.Index(fields=["tenant", "outcome", "-timestamp"], name="decisionlog_outcome"),
            models.Index(fields=["tenant", "gateway", "-timestamp"], name="decisionlog_gateway"),
        ]

    def __str__(self) -> str:
        return f"{self.outcome} {self.agent} → {self.server}/{self.tool} ({self.decision_id})"


class DecisionRollup(TenantScopedModel):
    """How many decisions of one outcome a tenant's gateways logged in one hour."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, db_index=False)
    hour = models.DateTimeField()
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    count = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["hour", "outcome"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "hour", "outcome"],
                                    name="decisionrollup_unique_bucket"),
        ]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00} {self.outcome}: {self.count}"


class ReplayRun(TenantScopedModel):
    """One shadow replay: the decision log of the last ``days`` days decided again against the
    candidate policy (the registry as it stands), by a worker, with its progress and result."""

    audit_fields = ("days", "status")

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    days = models.PositiveSmallIntegerField()
    requested_by_label = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)
    step = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    # The window replayed, fixed when the run starts: [since, until).
    since = models.DateTimeField(null=True, blank=True)
    until = models.DateTimeField(null=True, blank=True)
    # Counts (replayed, changed, not replayable, per transition, per agent and tool), the
    # changed decisions (the first REPLAY_MAX_CHANGES) and the ones that could not be replayed.
    summary = models.JSONField(default=dict, blank=True)
    changes = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["tenant", "-created_at"], name="replay_tenant_recent")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=["queued", "running", "done", "failed"]),
                name="replayrun_status_valid"),
            models.CheckConstraint(condition=models.Q(progress__lte=100),
                                   name="replayrun_progress_percent"),
        ]

    def __str__(self) -> str:
        return f"replay of {self.days} days ({self.status})"

    @property
    def is_open(self) -> bool:
        """Still being worked on (the page keeps polling)."""
        return self.status in (self.Status.QUEUED, self.Status.RUNNING)

    @property
    def badge(self) -> str:
        return {"done": "sync-succeeded"}.get(self.status, f"sync-{self.status}")
