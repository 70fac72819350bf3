"""Reads of tenancy data, tenant first."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, QuerySet
from django.utils import timezone

from governance.tenancy.models import IdpGroupMapping, Invitation, Membership, Tenant

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


def pending_invitations() -> QuerySet[Invitation]:
    """Neither taken up, nor revoked, nor expired (of every tenant; narrow with for_tenant)."""
    return Invitation.objects.filter(
        accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=timezone.now()
    )


INVITATION_STATES = ("pending", "accepted", "revoked", "expired")


def invitation_list(tenant: Tenant, *, state: str = "") -> QuerySet[Invitation]:
    """The tenant's invitations, newest first; ``state`` narrows to one of INVITATION_STATES."""
    invitations = Invitation.objects.all()
    if state == "pending":
        invitations = pending_invitations()
    elif state == "accepted":
        invitations = invitations.filter(accepted_at__isnull=False)
    elif state == "revoked":
        invitations = invitations.filter(accepted_at__isnull=True, revoked_at__isnull=False)
    elif state == "expired":
        invitations = invitations.filter(accepted_at__isnull=True, revoked_at__isnull=True,
                                         expires_at__lte=timezone.now())
    return (invitations.for_tenant(tenant).select_related("invited_by", "accepted_by")
            .order_by("-created_at", "-pk"))
