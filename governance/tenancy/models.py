"""Tenants, memberships, IdP group mappings, external identities and API tokens."""

from __future__ import annotations

import hashlib
from typing import Any

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

from governance.audit.snapshot import AuditField, AuditSnapshotModel
from governance.tenancy.roles import Role

SLUG_VALIDATOR = RegexValidator(
    r"^[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?$",
    "Use 1–50 lowercase letters, digits and inner hyphens.",
)


# The escalation contract's settings (DESIGN.md §5), kept in ``Tenant.settings["escalation"]``;
# these are the values of a tenant that has not set them. The bundle carries them (data.json).
ESCALATION_DEFAULTS = {
    # How long a held call waits for a human before it is expired (a denial).
    "decision_timeout_seconds": 900,
    # How long a gateway holds the agent's call before answering "pending, retry".
    "hold_seconds": 60,
}


class Tenant(AuditSnapshotModel):
    """An organisation: everything else in Tollgate belongs to exactly one tenant."""

    audit_fields = ("slug", "name", "registry_resync_minutes", "decision_log_retention_days")

    slug = models.CharField(max_length=50, unique=True, validators=[SLUG_VALIDATOR])
    name = models.CharField(max_length=200)
    settings = models.JSONField(default=dict, blank=True)
    # Every active MCP server of the tenant is re-synced this often (0 = never, manual only).
    registry_resync_minutes = models.PositiveIntegerField(default=60)
    # Decision logs older than this are purged by Celery beat (decision_logs.tasks).
    decision_log_retention_days = models.PositiveIntegerField(default=90)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        permissions = [
            # Worked example of django-guardian object permissions: granted on one Tenant object,
            # it lets a non-admin member manage that tenant's IdP group mappings, and nothing else.
            ("manage_group_mappings", "Can manage IdP group mappings of this tenant"),
        ]

    def __str__(self) -> str:
        return self.name

    def escalation_settings(self) -> dict[str, Any]:
        """The escalation settings in force: the configured ones over the defaults."""
        configured = self.settings.get("escalation", {}) if isinstance(self.settings, dict) \
            else {}
        if not isinstance(configured, dict):
            configured = {}
        return {k: configured.get(k, default) for k, default in ESCALATION_DEFAULTS.items()}


class TenantScopedQuerySet(models.QuerySet):
    """Querysets of tenant-owned rows; every read path starts with ``for_tenant``."""

    def for_tenant(self, tenant: Tenant) -> TenantScopedQuerySet:
        return self.filter(tenant=tenant)


class TenantScopedManager(models.Manager.from_queryset(TenantScopedQuerySet)):
    """Default manager of tenant-owned models."""


class TenantScopedModel(AuditSnapshotModel):
    """Base of every tenant-owned model: a non-null, indexed tenant, a scoping manager and
    ``audit_snapshot()`` of its ``audit_fields``."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, db_index=True)

    objects = TenantScopedManager()

    class Meta:
        abstract = True


class Membership(TenantScopedModel):
    """A user's role in a tenant; ``source`` says who manages it (the IdP, SCIM, an invitation
    or an admin) and ``last_confirmed_at`` when that source last vouched for it."""

    audit_fields = ("user", "role", "source")

    class Source(models.TextChoices):
        IDP = "idp", "IdP login"
        SCIM = "scim", "SCIM"
        INVITATION = "invitation", "Invitation"
        MANUAL = "manual", "Added by an admin"

    # Memberships that follow the IdP's groups (at sign-in, re-validation or SCIM): added,
    # changed and removed with them. The others are left alone by group sync.
    IDP_MANAGED = (Source.IDP, Source.SCIM)

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=20, choices=Role.choices)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.MANUAL)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    # When an IdP sign-in or re-validation, a SCIM request or the invitation last confirmed it
    # (null: never, e.g. added by hand).
    last_confirmed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["user__username"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "user"], name="membership_unique_user"),
            models.CheckConstraint(
                condition=models.Q(role__in=Role.values), name="membership_role_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} · {self.role}"


class IdpGroupMapping(TenantScopedModel):
    """Members of IdP group ``group`` get ``role`` in the tenant at their next login."""

    audit_fields = ("group", "role")

    group = models.CharField(max_length=200)
    role = models.CharField(max_length=20, choices=Role.choices)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["group"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "group"], name="groupmapping_unique_group"),
            models.CheckConstraint(
                condition=models.Q(role__in=Role.values), name="groupmapping_role_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.group} → {self.role}"


class ExternalIdentity(models.Model):
    """The (issuer, subject) pair an OIDC login is matched on (never the e-mail address)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="external_identities"
    )
    issuer = models.CharField(max_length=500)
    subject = models.CharField(max_length=255)
    last_groups = models.JSONField(default=list, blank=True)
    last_login_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["issuer", "subject"], name="identity_unique_subject")
        ]

    def __str__(self) -> str:
        return f"{self.subject} @ {self.issuer}"


class UserSession(models.Model):
    """One signed-in browser session: lets offboarding, back-channel logout and re-validation
    find a user's sessions without scanning the session store."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="user_sessions"
    )
    session_key = models.CharField(max_length=40, unique=True)
    # The OIDC login behind the session (blank for a local password login); ``sid`` is the
    # IdP's session id when its ID token carries one (back-channel logout names it).
    issuer = models.CharField(max_length=500, blank=True)
    subject = models.CharField(max_length=255, blank=True)
    sid = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # When the IdP last vouched for the session (the login, then each re-validation).
    last_checked_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["issuer", "sid"], name="usersession_issuer_sid"),
            models.Index(fields=["issuer", "subject"], name="usersession_issuer_subject"),
        ]

    def __str__(self) -> str:
        return f"{self.user} · {self.session_key[:8]}…"


def hash_token(plaintext: str) -> str:
    """Tokens carry 256 random bits, so one SHA-256 is a safe, fast lookup hash."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


class ApiToken(TenantScopedModel):
    """A bearer token for the admin REST API, bound to one tenant and one role."""

    # Never the hash: the prefix identifies a token in the trail.
    audit_fields = ("name", "kind", "role", "prefix", AuditField("owner", "user"), "expires_at")

    class Kind(models.TextChoices):
        PERSONAL = "personal", "Personal"
        SERVICE = "service", "Service"

    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    # Personal tokens act as their user (and never exceed the user's current role);
    # service tokens belong to the tenant and act as themselves.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="api_tokens",
    )
    role = models.CharField(max_length=20, choices=Role.choices)
    token_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=16)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(kind="personal", user__isnull=False)
                    | models.Q(kind="service", user__isnull=True)
                ),
                name="apitoken_owner_matches_kind",
            ),
            models.CheckConstraint(
                condition=models.Q(role__in=Role.values), name="apitoken_role_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and self.expires_at > timezone.now()

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= timezone.now():
            return "expired"
        return "active"


class Invitation(TenantScopedModel):
    """An admin's invitation into the tenant with a role, by e-mail address or by IdP subject.

    It takes effect at the invitee's next sign-in (OIDC, or the local password in the demo):
    the membership is created then, never before, so inviting says nothing about who exists
    elsewhere in the installation. Single use; it expires.
    """

    audit_fields = ("invitee", "role", "expires_at")

    email = models.EmailField(max_length=254, blank=True)
    # An (issuer, subject) pair exactly as ExternalIdentity stores it for OIDC sign-ins.
    issuer = models.CharField(max_length=500, blank=True)
    subject = models.CharField(max_length=255, blank=True)
    role = models.CharField(max_length=20, choices=Role.choices)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    (~models.Q(email="") & models.Q(issuer="", subject=""))
                    | (models.Q(email="") & ~models.Q(issuer="") & ~models.Q(subject=""))
                ),
                name="invitation_email_or_subject",
            ),
            models.CheckConstraint(
                condition=models.Q(role__in=Role.values), name="invitation_role_valid"
            ),
        ]
        indexes = [models.Index(fields=["email"]), models.Index(fields=["issuer", "subject"])]

    def __str__(self) -> str:
        return f"{self.invitee} → {self.role}"

    @property
    def invitee(self) -> str:
        return self.email or f"{self.subject} @ {self.issuer}"

    @property
    def state(self) -> str:
        if self.accepted_at is not None:
            return "accepted"
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= timezone.now():
            return "expired"
        return "pending"
