"""Reads of tenancy data, tenant first."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, QuerySet

from governance.tenancy.models import IdpGroupMapping, Membership, Tenant

User = get_user_model()


def membership_list(tenant: Tenant, *, search: str = "") -> QuerySet[Membership]:
    members = Membership.objects.for_tenant(tenant).select_related("user")
    if search:
        members = members.filter(
            Q(user__username__icontains=search) | Q(user__email__icontains=search)
        )
    return members.order_by("user__username")


def group_mapping_list(tenant: Tenant) -> QuerySet[IdpGroupMapping]:
    return IdpGroupMapping.objects.for_tenant(tenant).order_by("group")


def user_memberships(user: AbstractBaseUser) -> QuerySet[Membership]:
    return Membership.objects.filter(user=user).select_related("tenant").order_by("tenant__name")


def user_by_login(login: str) -> AbstractBaseUser | None:
    """An active user by username or e-mail address (exact, case-insensitive)."""
    login = login.strip()
    if not login:
        return None
    users = list(
        User.objects.filter(Q(username__iexact=login) | Q(email__iexact=login), is_active=True)[:2]
    )
    return users[0] if len(users) == 1 else None
