"""Approver object permissions: ``registry.approve_access`` on a scope or a server, which
policy stages with ``object_permission`` count as eligible."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from guardian.shortcuts import assign_perm, get_user_perms, remove_perm

from approvals.selectors import APPROVE_PERMISSION
from governance.audit.services import Actor, audit_record
from governance.tenancy.models import Membership, Tenant
from registry.models import McpServer, ToolScope


def _approver_target(tenant: Tenant, user: AbstractBaseUser, obj: ToolScope | McpServer) -> str:
    """Check a grant/revoke of the approve permission; return the object's label."""
    if not isinstance(obj, ToolScope | McpServer):
        raise ValidationError("The approve permission is given on a scope or on a server.")
    if obj.tenant_id != tenant.pk:
        raise ValidationError("That scope or server does not belong to this tenant.")
    if not Membership.objects.for_tenant(tenant).filter(user=user).exists():
        raise ValidationError({"member": f"{user.get_username()} is not a member of this "
                                         "tenant: add them as a member first."})
    return f"{'scope' if isinstance(obj, ToolScope) else 'server'} {obj.name}"


def _holds_approve(user: AbstractBaseUser, obj: ToolScope | McpServer) -> bool:
    return APPROVE_PERMISSION in get_user_perms(user, obj)


@transaction.atomic
def approver_permission_grant(*, tenant: Tenant, actor: Actor, user: AbstractBaseUser,
                              obj: ToolScope | McpServer) -> None:
    """Give a member ``registry.approve_access`` on a scope or server: stages with
    ``object_permission`` then count them as eligible for that scope (or the server's)."""
    label = _approver_target(tenant, user, obj)
    if _holds_approve(user, obj):
        raise ValidationError(f"{user.get_username()} already approves for {label}.")
    assign_perm(f"registry.{APPROVE_PERMISSION}", user, obj)
    audit_record(tenant=tenant, actor=actor, action="approver_permission.granted", obj=obj,
                 after={"user": user.get_username(), "permission": APPROVE_PERMISSION,
                        "object": label})


@transaction.atomic
def approver_permission_revoke(*, tenant: Tenant, actor: Actor, user: AbstractBaseUser,
                               obj: ToolScope | McpServer) -> None:
    """Take ``registry.approve_access`` on a scope or server away from a member (pending items
    re-check eligibility at decision time, so it applies to them at once)."""
    label = _approver_target(tenant, user, obj)
    if not _holds_approve(user, obj):
        raise ValidationError(f"{user.get_username()} does not approve for {label}.")
    remove_perm(f"registry.{APPROVE_PERMISSION}", user, obj)
    audit_record(tenant=tenant, actor=actor, action="approver_permission.revoked", obj=obj,
                 before={"user": user.get_username(), "permission": APPROVE_PERMISSION,
                         "object": label})
