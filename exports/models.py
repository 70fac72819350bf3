"""SIEM exporters: per tenant, one stream (audit events or decision logs) to one receiver.

An exporter keeps a cursor — the id of the last row its receiver accepted — and the worker
sends the rows after it in id order, advancing the cursor only once the receiver has taken them
(at least once). Failures back off exponentially; the fields below are what the exporter page,
the alerts ("export failing") and ``/metrics`` (export lag) read.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from governance.audit.snapshot import AuditField, presence
from governance.tenancy.models import TenantScopedModel


class Exporter(TenantScopedModel):
    """Where one stream of a tenant's events goes; the HEC token is encrypted at rest."""

    # Never the token itself: only whether one is set.
    audit_fields = ("name", "kind", "stream", "enabled", "path", "host", "port", "url", "index",
                    AuditField("token", "token_encrypted", render=presence))

    class Kind(models.TextChoices):
        JSONL = "jsonl", "JSON lines file"
        SYSLOG_UDP = "syslog_udp", "Syslog CEF over UDP"
        SYSLOG_TCP = "syslog_tcp", "Syslog CEF over TCP"
        SPLUNK_HEC = "splunk_hec", "Splunk HEC (HTTP event collector)"

    class Stream(models.TextChoices):
        AUDIT = "audit", "Audit events"
        DECISIONS = "decisions", "Decision logs"

    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=12, choices=Kind.choices)
    stream = models.CharField(max_length=10, choices=Stream.choices)
    # jsonl: a file name inside EXPORT_FILE_DIR/<tenant slug>/ (never a path).
    path = models.CharField(max_length=100, blank=True)
    # syslog: the receiver.
    host = models.CharField(max_length=255, blank=True)
    port = models.PositiveIntegerField(null=True, blank=True)
    # splunk_hec: the collector URL, the optional index and the token (a Fernet token under
    # SECRET_ENCRYPTION_KEYS; pages and the API show only the hint).
    url = models.CharField(max_length=2000, blank=True)
    index = models.CharField(max_length=80, blank=True)
    token_encrypted = models.TextField(blank=True)
    token_hint = models.CharField(max_length=10, blank=True)
    enabled = models.BooleanField(default=True)
    # Id of the last row the receiver accepted (AuditEvent.id or DecisionLog.id).
    cursor = models.BigIntegerField(default=0)
    exported_total = models.PositiveBigIntegerField(default=0)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    # The sweep queues enabled exporters whose next attempt is due; a failure pushes it out.
    next_attempt_at = models.DateTimeField(null=True, blank=True, default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        indexes = [
            models.Index(fields=["enabled", "next_attempt_at"], name="exporter_due"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="exporter_unique_name"),
            models.CheckConstraint(
                condition=models.Q(kind__in=["jsonl", "syslog_udp", "syslog_tcp", "splunk_hec"]),
                name="exporter_kind_valid",
            ),
            models.CheckConstraint(condition=models.Q(stream__in=["audit", "decisions"]),
                                   name="exporter_stream_valid"),
            models.CheckConstraint(condition=models.Q(cursor__gte=0),
                                   name="exporter_cursor_not_negative"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def target(self) -> str:
        """Where it sends, safe to show (never the token)."""
        if self.kind == self.Kind.JSONL:
            return f"{self.tenant.slug}/{self.path}"
        if self.kind in (self.Kind.SYSLOG_UDP, self.Kind.SYSLOG_TCP):
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"{'udp' if self.kind == self.Kind.SYSLOG_UDP else 'tcp'}://{host}:{self.port}"
        return self.url

    @property
    def status(self) -> str:
        """disabled, failing (the last run failed), ok (the last run succeeded) or new."""
        if not self.enabled:
            return "disabled"
        if self.consecutive_failures:
            return "failing"
        return "ok" if self.last_success_at else "new"
