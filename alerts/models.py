"""Alert rules of a tenant (one per kind, with defaults) and the alerts they raise.

An ``Alert`` is live (open or acknowledged) until it is resolved; while it is live, a new
occurrence of the same ``(rule_kind, key)`` bumps it instead of creating another — the partial
unique constraint below makes that hold even for two evaluators racing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from governance.audit.snapshot import AuditField
from governance.tenancy.models import TenantScopedModel


class Kind(models.TextChoices):
    GATEWAY_STALE = "gateway_stale", "Gateway stale"
    TOOL_DRIFT = "tool_drift", "Tool drift"
    DENIAL_BURST = "denial_burst", "Burst of denials"
    BREAK_GLASS_USED = "break_glass_used", "Break-glass used"
    AUDIT_CHAIN_BROKEN = "audit_chain_broken", "Audit chain broken"
    EXPORT_FAILING = "export_failing", "Export failing"
    BUNDLE_BUILD_FAILING = "bundle_build_failing", "Bundle build failing"
    REVISION_CONFLICT = "revision_conflict", "Revision conflict"


class Severity(models.TextChoices):
    INFO = "info", "Info"
    WARNING = "warning", "Warning"
    CRITICAL = "critical", "Critical"


@dataclass(frozen=True)
class KindSpec:
    """What a rule kind means, which of threshold/window it takes, and its defaults."""

    description: str
    severity: str
    threshold: int | None = None  # None: the kind takes no threshold
    window_minutes: int | None = None  # None: the kind takes no window
    threshold_label: str = ""
    window_label: str = ""
    # Stateful kinds describe a condition that holds until fixed: they resolve by themselves
    # once it clears. The others are events (each occurrence is news): they re-notify while open.
    stateful: bool = True


KIND_SPECS: dict[str, KindSpec] = {
    Kind.GATEWAY_STALE: KindSpec(
        "An active gateway has not been in contact for the window, or has run a revision older "
        "than the newest for longer than the window.",
        Severity.WARNING, window_minutes=15, window_label="minutes without contact or behind"),
    Kind.TOOL_DRIFT: KindSpec(
        "A tool's definition changed on its server and the tool is quarantined until reviewed.",
        Severity.WARNING),
    Kind.DENIAL_BURST: KindSpec(
        "One agent was denied at least the threshold number of calls within the window.",
        Severity.WARNING, threshold=20, window_minutes=5, threshold_label="denials",
        window_label="within minutes", stateful=False),
    Kind.BREAK_GLASS_USED: KindSpec(
        "An admin granted emergency access without approval.", Severity.CRITICAL,
        stateful=False),
    Kind.AUDIT_CHAIN_BROKEN: KindSpec(
        "The hourly verification found an edited, deleted or reordered audit event.",
        Severity.CRITICAL),
    Kind.EXPORT_FAILING: KindSpec(
        "A SIEM exporter failed the threshold number of times in a row.", Severity.WARNING,
        threshold=3, threshold_label="consecutive failures"),
    Kind.BUNDLE_BUILD_FAILING: KindSpec(
        "The last build of the tenant's bundle failed (it is retried; gateways keep the previous "
        "revision, so policy changes are not reaching them).", Severity.CRITICAL),
    Kind.REVISION_CONFLICT: KindSpec(
        "A gateway runs a bundle revision this control plane did not issue under that number "
        "(ahead of its newest, or a different bundle): typically the database was restored "
        "from an older backup. The control plane continues above that number and publishes at "
        "once; until the gateway activates it, it keeps enforcing its older bundle.",
        Severity.WARNING),
}


class AlertRule(TenantScopedModel):
    """One kind of alert for one tenant: on or off, its threshold/window and severity."""

    audit_fields = ("kind", "enabled", "threshold", "window_minutes", "severity")

    kind = models.CharField(max_length=30, choices=Kind.choices)
    enabled = models.BooleanField(default=True)
    threshold = models.PositiveIntegerField(null=True, blank=True)
    window_minutes = models.PositiveIntegerField(null=True, blank=True)
    severity = models.CharField(max_length=10, choices=Severity.choices)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["kind"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "kind"], name="alertrule_unique_kind"),
            models.CheckConstraint(condition=models.Q(kind__in=Kind.values),
                                   name="alertrule_kind_valid"),
            models.CheckConstraint(condition=models.Q(severity__in=Severity.values),
                                   name="alertrule_severity_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} ({'on' if self.enabled else 'off'})"

    @property
    def spec(self) -> KindSpec:
        return KIND_SPECS[self.kind]

    @property
    def window(self) -> timedelta:
        return timedelta(minutes=self.window_minutes or 0)


class Alert(TenantScopedModel):
    """Something that needs a person's attention, de-duplicated on ``(rule_kind, key)``."""

    audit_fields = (AuditField("kind", "rule_kind"), "key", "subject", "severity", "status",
                    "occurrences")

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        ACKNOWLEDGED = "acknowledged", "Acknowledged"
        RESOLVED = "resolved", "Resolved"

    LIVE = (Status.OPEN, Status.ACKNOWLEDGED)

    rule_kind = models.CharField(max_length=30, choices=Kind.choices)
    # What the alert is about, e.g. gateway:12, agent:payroll-bot, tool:7, exporter:3, chain.
    key = models.CharField(max_length=250)
    subject = models.CharField(max_length=300)
    detail = models.JSONField(default=dict, blank=True)
    severity = models.CharField(max_length=10, choices=Severity.choices)
    status = models.CharField(max_length=15, choices=Status.choices, default=Status.OPEN)
    first_seen_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    occurrences = models.PositiveIntegerField(default=1)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    ack_note = models.TextField(blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    # Who or what resolved it: "condition cleared: …" or "alice: …".
    resolution = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-last_seen_at", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "rule_kind", "key"],
                condition=models.Q(status__in=["open", "acknowledged"]),
                name="alert_one_live_per_key",
            ),
            models.CheckConstraint(condition=models.Q(rule_kind__in=Kind.values),
                                   name="alert_kind_valid"),
            models.CheckConstraint(condition=models.Q(severity__in=Severity.values),
                                   name="alert_severity_valid"),
            models.CheckConstraint(
                condition=models.Q(status__in=["open", "acknowledged", "resolved"]),
                name="alert_status_valid"),
        ]
        indexes = [
            models.Index(fields=["tenant", "status", "-last_seen_at"], name="alert_tenant_status"),
            models.Index(fields=["tenant", "rule_kind", "key"], name="alert_tenant_key"),
        ]

    def __str__(self) -> str:
        return self.subject

    @property
    def is_live(self) -> bool:
        return self.status in self.LIVE

    @property
    def badge(self) -> str:
        """The CSS badge class of its severity (existing colours: red, amber, grey)."""
        return {"critical": "risk-critical", "warning": "risk-medium"}.get(self.severity,
                                                                            "label")

    @property
    def status_badge(self) -> str:
        return {"open": "status-quarantined", "acknowledged": "status-pending"}.get(
            self.status, "status-active")
