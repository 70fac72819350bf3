"""Append-only, hash-chained audit trail (one chain per tenant, plus one platform chain)."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from governance.tenancy.models import Tenant

GENESIS_HASH = "0" * 64


class AuditChain(models.Model):
    """Head of one hash chain; its row lock serialises writers so the chain never forks."""

    PLATFORM_KEY = "platform"

    key = models.CharField(max_length=40, unique=True)
    tenant = models.OneToOneField(
        Tenant, null=True, blank=True, on_delete=models.PROTECT, related_name="audit_chain"
    )
    last_seq = models.BigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, default=GENESIS_HASH)

    def __str__(self) -> str:
        return self.key

    @staticmethod
    def key_for(tenant: Tenant | None) -> str:
        return AuditChain.PLATFORM_KEY if tenant is None else f"tenant:{tenant.pk}"


class AppendOnlyQuerySet(models.QuerySet):
    """Refuses bulk edits: audit rows are written once by the service and never changed."""

    def update(self, **kwargs):
        raise TypeError("Audit events are append-only")

    def delete(self):
        raise TypeError("Audit events are append-only")


class AuditEvent(models.Model):
    """One recorded action: who did what to which object, before/after, and where from."""

    class ActorType(models.TextChoices):
        USER = "user", "User"
        TOKEN = "token", "API token"
        GATEWAY = "gateway", "Gateway"
        SYSTEM = "system", "System"
        ANONYMOUS = "anonymous", "Anonymous"

    chain = models.ForeignKey(AuditChain, on_delete=models.PROTECT, related_name="events")
    tenant = models.ForeignKey(
        Tenant, null=True, blank=True, on_delete=models.PROTECT, related_name="audit_events"
    )
    seq = models.BigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)
    actor_type = models.CharField(max_length=10, choices=ActorType.choices)
    actor_id = models.CharField(max_length=64, blank=True)
    actor_label = models.CharField(max_length=200, blank=True)
    action = models.CharField(max_length=100)
    object_type = models.CharField(max_length=100, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=300, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    # Text, not inet: PostgreSQL rewrites some IPv6 forms, which would break the hash.
    ip = models.CharField(max_length=45, null=True, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-seq"]
        constraints = [
            models.UniqueConstraint(fields=["chain", "seq"], name="auditevent_unique_seq"),
        ]
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="audit_tenant_time"),
            models.Index(fields=["tenant", "action"], name="audit_tenant_action"),
            models.Index(fields=["tenant", "object_type", "object_id"], name="audit_tenant_obj"),
            models.Index(fields=["tenant", "actor_type", "actor_id"], name="audit_tenant_actor"),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise TypeError("Audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise TypeError("Audit events are append-only")
