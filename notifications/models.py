"""Notification channels of a tenant (e-mail, Slack, signed webhook) and their deliveries."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from governance.audit.snapshot import AuditField, presence
from governance.tenancy.models import TenantScopedModel

# Every event Tollgate notifies about, with the label the channel form shows.
EVENTS: dict[str, str] = {
    "approval.requested": "Access request waiting for a decision",
    "approval.reminder": "Reminder: a decision deadline is near",
    "approval.decided": "Access request approved, denied or expired",
    "escalation.created": "Escalation raised by an agent",
    "escalation.decided": "Escalation decided",
    "escalation.flood": "Unusually many escalations",
    "break_glass.used": "Break-glass access used",
    "alert.raised": "Alert raised (gateway stale, tool drift, denial burst, break-glass, audit "
                    "chain, export failing)",
    "notification.test": "Test message (“Send test”)",
}


class Channel(TenantScopedModel):
    """Where a tenant's notifications go; URLs and secrets are encrypted at rest."""

    # Never the URL or the secret themselves: the URL's hint, and whether a secret is set.
    audit_fields = ("name", "kind", "enabled", "events", "addresses", "to_recipients",
                    AuditField("url", "url_hint"),
                    AuditField("secret", "secret_encrypted", render=presence))

    class Kind(models.TextChoices):
        EMAIL = "email", "E-mail"
        SLACK = "slack", "Slack (incoming webhook)"
        WEBHOOK = "webhook", "Webhook (signed JSON)"

    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    enabled = models.BooleanField(default=True)
    # Event names the channel subscribes to; empty: every event.
    events = models.JSONField(default=list, blank=True)
    # E-mail: fixed addresses, and whether the people an event names (approvers…) get it too.
    addresses = models.JSONField(default=list, blank=True)
    to_recipients = models.BooleanField(default=False)
    # Slack and webhook: the URL (a Slack URL is a credential) and the webhook's HMAC secret,
    # Fernet tokens under SECRET_ENCRYPTION_KEYS; the hints are what pages and the API show.
    url_encrypted = models.TextField(blank=True)
    url_hint = models.CharField(max_length=300, blank=True)
    secret_encrypted = models.TextField(blank=True)
    secret_hint = models.CharField(max_length=10, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="channel_unique_name"),
            models.CheckConstraint(
                condition=models.Q(kind__in=["email", "slack", "webhook"]),
                name="channel_kind_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def wants(self, event: str) -> bool:
        """Enabled and subscribed to ``event`` (no subscriptions: every event)."""
        return self.enabled and (not self.events or event in self.events)

    @property
    def target(self) -> str:
        """Where it sends, safe to show: addresses, or the URL's host and last characters."""
        if self.kind == self.Kind.EMAIL:
            shown = ", ".join(self.addresses)
            if self.to_recipients:
                shown = f"{shown} + the people named" if shown else "the people named"
            return shown
        return self.url_hint


class Delivery(TenantScopedModel):
    """One notification to one channel; the worker retries it with backoff until sent or
    failed."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=50)
    subject = models.CharField(max_length=300)
    # text, link, data and the recipients' addresses, as given to notify().
    payload = models.JSONField(default=dict)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name_plural = "deliveries"
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="delivery_tenant_recent"),
            models.Index(fields=["status", "next_attempt_at"], name="delivery_due"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=["pending", "sent", "failed"]),
                name="delivery_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event} → {self.channel_id} ({self.status})"
