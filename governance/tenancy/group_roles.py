"""One tenant's IdP group mappings applied to one user, for a source of groups that speaks for
one tenant only (SCIM provisioning), where ``memberships_sync_from_groups`` speaks for the
whole installation (an OIDC login's groups claim).

The role is computed exactly as at login (``strongest`` of the mapped roles) and applied with
the same audited steps (``membership_create``, role change, removal with its token revocations).
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from governance.audit.services import Actor, audit_record
from governance.tenancy import services
from governance.tenancy.models import IdpGroupMapping, Membership, Tenant
from governance.tenancy.roles import strongest


@transaction.atomic
def membership_sync_for_tenant(
    *,
    tenant: Tenant,
    actor: Actor,
    user: AbstractBaseUser,
    groups: list[str],
    source: str,
    managed_sources: tuple[str, ...],
) -> Membership | None:
    """Make ``user``'s membership in ``tenant`` match ``groups`` through the tenant's mappings.

    Only a membership whose source is in ``managed_sources`` is changed (a membership an admin
    added by hand or an invitation created is left alone); it becomes ``source`` and its
    ``last_confirmed_at`` is set. Returns the membership in force, if any.
    """
    roles = list(
        IdpGroupMapping.objects.for_tenant(tenant).filter(group__in=groups)
        .values_list("role", flat=True)
    )
    role = strongest(roles)
    membership = (
        Membership.objects.for_tenant(tenant).select_for_update().filter(user=user).first()
    )
    if membership is not None and membership.source not in managed_sources:
        return membership
    if membership is None:
        if role is None:
            return None
        membership = services.membership_create(
            tenant=tenant, actor=actor, user=user, role=role, source=source
        )
    elif role is None:
        # The IdP is the source of truth for this membership: it goes even if it was the
        # tenant's last admin, as at login (an operator can always add an admin back by hand).
        services._remove(tenant=tenant, actor=actor, membership=membership)
        return None
    elif role != membership.role:
        services._set_role(tenant=tenant, actor=actor, membership=membership, role=role)
    changes = {"last_confirmed_at": timezone.now()}
    if membership.source != source:
        changes["source"] = source
        audit_record(tenant=tenant, actor=actor, action="membership.source_changed",
                     obj=membership, before={"source": membership.source},
                     after={"source": source})
    Membership.objects.filter(pk=membership.pk).update(**changes)
    for field, value in changes.items():
        setattr(membership, field, value)
    return membership


@transaction.atomic
def membership_end_for_tenant(
    *, tenant: Tenant, actor: Actor, user: AbstractBaseUser, managed_sources: tuple[str, ...]
) -> bool:
    """Remove ``user``'s membership in ``tenant`` if one of ``managed_sources`` made it (with its
    personal tokens and the service tokens they created). True when one was removed."""
    membership = (
        Membership.objects.for_tenant(tenant).select_for_update().filter(user=user).first()
    )
    if membership is None or membership.source not in managed_sources:
        return False
    services._remove(tenant=tenant, actor=actor, membership=membership)
    return True
