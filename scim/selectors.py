"""Reads of SCIM provisioning, tenant first."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet

from governance.tenancy.models import Tenant, hash_token
from scim.models import ScimGroup, ScimToken, ScimUser


def scim_tokens(tenant: Tenant) -> QuerySet[ScimToken]:
    return ScimToken.objects.for_tenant(tenant).select_related("created_by")


def scim_token_by_plaintext(plaintext: str) -> ScimToken | None:
    """The token a bearer credential names, revoked or not (None for an unknown one)."""
    if not plaintext:
        return None
    return (ScimToken.objects.select_related("tenant")
            .filter(token_hash=hash_token(plaintext)).first())


def _as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def scim_users(tenant: Tenant) -> QuerySet[ScimUser]:
    return ScimUser.objects.for_tenant(tenant).select_related("user")


def scim_user(tenant: Tenant, scim_id: str) -> ScimUser | None:
    key = _as_uuid(scim_id)
    return None if key is None else scim_users(tenant).filter(scim_id=key).first()


def scim_groups(tenant: Tenant) -> QuerySet[ScimGroup]:
    return ScimGroup.objects.for_tenant(tenant)


def scim_group(tenant: Tenant, scim_id: str) -> ScimGroup | None:
    key = _as_uuid(scim_id)
    return None if key is None else scim_groups(tenant).filter(scim_id=key).first()


def groups_of(scim_user: ScimUser) -> list[ScimGroup]:
    """The groups a user is a direct member of (a User's read-only ``groups``)."""
    return list(ScimGroup.objects.for_tenant(scim_user.tenant)
                .filter(memberships__member=scim_user).order_by("display_name"))


def groups_by_member(tenant: Tenant, users: list[ScimUser]) -> dict[int, list[ScimGroup]]:
    """``groups_of`` for a page of users in one query."""
    found: dict[int, list[ScimGroup]] = {u.pk: [] for u in users}
    for group in (ScimGroup.objects.for_tenant(tenant)
                  .filter(memberships__member__in=users)
                  .order_by("display_name").prefetch_related("memberships")):
        for link in group.memberships.all():
            if link.member_id in found:
                found[link.member_id].append(group)
    return found
