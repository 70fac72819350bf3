"""Gateways and their tokens, signing keys, and the signed bundles the gateways pull."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

from governance.audit.snapshot import AuditField, isoformat
from governance.tenancy.models import Tenant, TenantScopedModel


class Gateway(TenantScopedModel):
    """One enforcement point of the tenant's fleet; it authenticates with its tokens."""

    audit_fields = ("name", "description", "labels", "status")

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        DISABLED = "disabled", "Disabled"

    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    # Free-form key → value strings, as OPA status reports carry them (env, region, …).
    labels = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)
    # Telemetry from the gateway's own reports (POST status) and polls; not registry state.
    last_contact_at = models.DateTimeField(null=True, blank=True)
    last_status_at = models.DateTimeField(null=True, blank=True)
    active_revision = models.BigIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_report = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="gateway_unique_name"),
            models.CheckConstraint(
                condition=models.Q(status__in=["active", "disabled"]), name="gateway_status_valid"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def reported_bundle(self) -> dict[str, Any]:
        """The bundle entry of the last status report (``{}`` when there is none)."""
        return bundle_entry(self.last_report)

    @property
    def reported_sha256(self) -> str:
        """The SHA-256 of the active bundle as the gateway last reported it ("" if not sent)."""
        return str(self.reported_bundle.get("active_sha256") or "").lower()

    @property
    def reported_codes(self) -> set[str]:
        """The error codes of the last status report (``code`` and each of ``errors``)."""
        entry = self.reported_bundle
        errors = entry.get("errors") if isinstance(entry.get("errors"), list) else []
        codes = {entry.get("code")} | {e.get("code") for e in errors if isinstance(e, dict)}
        return {c for c in codes if isinstance(c, str) and c}


def bundle_entry(report: Any) -> dict[str, Any]:
    """The one bundle entry of an OPA status report: ``mcp``, else the first by name."""
    bundles = report.get("bundles") if isinstance(report, dict) else None
    if isinstance(bundles, dict) and bundles:
        chosen = bundles.get("mcp") or bundles.get(next(iter(sorted(bundles))))
        return chosen if isinstance(chosen, dict) else {}
    return {}


class GatewayToken(TenantScopedModel):
    """A bearer credential of one gateway: 256 random bits, stored as SHA-256, shown once."""

    audit_fields = ("gateway", "name", "prefix")  # never the hash

    gateway = models.ForeignKey(Gateway, on_delete=models.CASCADE, related_name="tokens")
    name = models.CharField(max_length=100)
    token_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=16)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def state(self) -> str:
        return "revoked" if self.revoked_at is not None else "active"


class SigningKey(TenantScopedModel):
    """An ES256 key pair that signs the tenant's bundles; the private half is encrypted."""

    # Never the private key (not even whether it is set: every key has one).
    audit_fields = ("kid", "state", AuditField("activate_after", render=isoformat))

    class State(models.TextChoices):
        PENDING = "pending", "Pending (published, not signing yet)"
        ACTIVE = "active", "Active (signs new bundles)"
        RETIRED = "retired", "Retired (still published, signs nothing)"
        REVOKED = "revoked", "Revoked (withdrawn)"

    kid = models.CharField(max_length=64, unique=True)
    state = models.CharField(max_length=10, choices=State.choices)
    public_jwk = models.JSONField()
    # Fernet token of the PKCS#8 PEM, encrypted with SECRET_ENCRYPTION_KEYS.
    private_key_encrypted = models.TextField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)
    # A pending key starts signing at this time (published at least one poll interval before).
    activate_after = models.DateTimeField(null=True, blank=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    retired_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant"], condition=models.Q(state="active"),
                name="signingkey_one_active_per_tenant",
            ),
            models.CheckConstraint(
                condition=models.Q(state__in=["pending", "active", "retired", "revoked"]),
                name="signingkey_state_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kid} ({self.state})"

    @property
    def published(self) -> bool:
        return self.state != self.State.REVOKED


class BundleBlob(models.Model):
    """A bundle tarball, content-addressed: the durable store every web process reads."""

    sha256 = models.CharField(max_length=64, primary_key=True)
    content = models.BinaryField()
    size = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.sha256


class Bundle(TenantScopedModel):
    """One published revision of a tenant's policy."""

    revision_number = models.PositiveBigIntegerField()
    blob = models.ForeignKey(
        BundleBlob, on_delete=models.PROTECT, db_column="sha256", related_name="bundles"
    )
    size = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    key = models.ForeignKey(SigningKey, on_delete=models.PROTECT, related_name="bundles")
    # SHA-256 over the content files (not the manifest/signature): "did anything change?".
    content_sha256 = models.CharField(max_length=64)
    # The tenant's audit chain up to this sequence number is reflected in the bundle.
    through_seq = models.BigIntegerField(default=0)
    # The earliest moment the content goes stale by itself (a grant expiring), if any.
    next_change_at = models.DateTimeField(null=True, blank=True)
    trigger = models.CharField(max_length=40)
    summary = models.JSONField(default=dict)
    build_ms = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-revision_number"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "revision_number"], name="bundle_unique_revision"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id} r{self.revision_number}"

    @property
    def sha256(self) -> str:
        return self.blob_id

    @property
    def etag(self) -> str:
        return f'"{self.blob_id}"'

    SUMMARY_ORDER = ("agents", "servers", "tools", "scopes", "grants")

    @property
    def summary_items(self) -> list[tuple[str, int]]:
        """The counts in a fixed order (PostgreSQL's jsonb does not keep key order)."""
        return [(k, self.summary[k]) for k in self.SUMMARY_ORDER if k in self.summary]


class PublishState(models.Model):
    """Per tenant: the row builders lock (one build at a time) and the last revision number."""

    tenant = models.OneToOneField(
        Tenant, primary_key=True, on_delete=models.PROTECT, related_name="publish_state"
    )
    # Never lowered: raised by builds, and by gateways reporting a revision above it.
    last_revision = models.BigIntegerField(default=0)
    # The highest revision a gateway reported that is not this control plane's bundle of that
    # number (a database restored from an older backup): the current bundle must be above it,
    # so a build is due (and forced) while it is not.
    conflict_revision = models.BigIntegerField(default=0)
    current = models.ForeignKey(
        Bundle, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.tenant_id} @ r{self.last_revision}"

    @property
    def conflict_pending(self) -> bool:
        """A gateway holds a revision the current bundle is not above: publish above it."""
        return bool(self.conflict_revision) and (
            self.current is None or self.current.revision_number <= self.conflict_revision)
