"""SCIM 2.0 provisioning: the tenant's SCIM bearer tokens, and the Users and Groups its IdP
pushes (RFC 7643/7644).

A resource is kept as the SCIM document the IdP last wrote (validated by scim2-models, without
the password), beside the columns Tollgate searches and acts on: ``userName``, ``externalId``,
``active`` and ``displayName``. A user is tied to one Django user (the same one an OIDC login
with the same (issuer, subject) finds); a group's user members are rows of
``ScimGroupMember`` so that they can drive roles through the tenant's IdP group mappings.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from governance.tenancy.models import TenantScopedModel


class ScimToken(TenantScopedModel):
    """A bearer token the tenant's IdP uses on /scim/v2/<tenant>/ (hashed at rest)."""

    # Never the hash: the prefix identifies a token in the trail.
    audit_fields = ("name", "prefix")

    name = models.CharField(max_length=100)
    token_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=16)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "SCIM token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class ScimUser(TenantScopedModel):
    """A SCIM User of one tenant, tied to the Django user it provisions."""

    audit_fields = ("scim_id", "user_name", "external_id", "active")

    scim_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="scim_users"
    )
    user_name = models.CharField(max_length=255)
    # userName is not case-exact (RFC 7643 §4.1.1): uniqueness and ``eq`` use this key.
    user_name_key = models.CharField(max_length=255)
    external_id = models.CharField(max_length=255, blank=True)
    active = models.BooleanField(default=True)
    document = models.JSONField(default=dict)
    version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "pk"]
        verbose_name = "SCIM user"
        constraints = [
            models.UniqueConstraint(fields=["tenant", "user_name_key"],
                                    name="scimuser_unique_username"),
            models.UniqueConstraint(fields=["tenant", "external_id"],
                                    condition=~models.Q(external_id=""),
                                    name="scimuser_unique_external_id"),
            models.UniqueConstraint(fields=["tenant", "user"], name="scimuser_unique_user"),
        ]

    def __str__(self) -> str:
        return self.user_name


class ScimGroup(TenantScopedModel):
    """A SCIM Group of one tenant; its ``displayName`` is what IdP group mappings match."""

    audit_fields = ("scim_id", "display_name", "external_id")

    scim_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    display_name = models.CharField(max_length=200)
    external_id = models.CharField(max_length=255, blank=True)
    document = models.JSONField(default=dict)
    version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "pk"]
        verbose_name = "SCIM group"
        constraints = [
            # One name, one role: two groups of a name would make the mapping ambiguous.
            models.UniqueConstraint(fields=["tenant", "display_name"],
                                    name="scimgroup_unique_display_name"),
        ]

    def __str__(self) -> str:
        return self.display_name


class ScimGroupMember(TenantScopedModel):
    """A user member of a SCIM group (nested groups stay in the group's document only)."""

    group = models.ForeignKey(ScimGroup, on_delete=models.CASCADE, related_name="memberships")
    member = models.ForeignKey(ScimUser, on_delete=models.CASCADE, related_name="group_links")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["group", "member"], name="scimmember_unique"),
        ]
