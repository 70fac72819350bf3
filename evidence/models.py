"""Evidence packs: a zip of CSV, JSON and an HTML report for one tenant and one period, built by
a Celery worker and stored in the database (like bundle blobs: every machine can serve it)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from governance.tenancy.models import TenantScopedModel


class EvidencePack(TenantScopedModel):
    """One requested evidence pack and, once built, its zip and the zip's SHA-256."""

    audit_fields = ("period_start", "period_end", "status")

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    # Calendar days in UTC, both included: [period_start 00:00, period_end + 1 day 00:00).
    period_start = models.DateField()
    period_end = models.DateField()
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    # Who asked, as the audit trail names them (also for service tokens, which have no user).
    requested_by_label = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)
    step = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    # Build attempts so far; each attempt starts from nothing, and only the current attempt may
    # write progress or the result.
    attempts = models.PositiveSmallIntegerField(default=0)
    content = models.BinaryField(null=True, blank=True)
    size = models.PositiveBigIntegerField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    # What the manifest lists ([{name, sha256, size}]) and the findings the page shows.
    files = models.JSONField(default=list, blank=True)
    summary = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # When its task message was last sent (request, retry, or re-sent by the sweep).
    queued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="evidence_tenant_recent"),
            models.Index(fields=["status", "created_at"], name="evidence_status"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=["queued", "running", "done", "failed"]),
                name="evidencepack_status_valid",
            ),
            models.CheckConstraint(condition=models.Q(progress__lte=100),
                                   name="evidencepack_progress_percent"),
            models.CheckConstraint(condition=models.Q(period_start__lte=models.F("period_end")),
                                   name="evidencepack_period_ordered"),
        ]

    def __str__(self) -> str:
        return f"evidence {self.period_start}…{self.period_end} ({self.status})"

    @property
    def is_open(self) -> bool:
        """Still being worked on (the page keeps polling)."""
        return self.status in (self.Status.QUEUED, self.Status.RUNNING)

    @property
    def days(self) -> int:
        return (self.period_end - self.period_start).days + 1

    @property
    def badge(self) -> str:
        """The CSS badge class the sync runs already use for the same states."""
        return {"queued": "sync-queued", "running": "sync-running", "done": "sync-succeeded",
                "failed": "sync-failed"}[self.status]

    def filename(self) -> str:
        return (f"tollgate-evidence-{self.tenant.slug}-{self.period_start.isoformat()}-"
                f"{self.period_end.isoformat()}.zip")
