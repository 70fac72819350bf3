"""Who is calling, in which tenant, with which role — and the ``access_<thing>`` helpers.

Every tenant-scoped view reaches tenant data only through a ``TenantContext`` resolved here:
a caller who is not a member of the tenant in the URL gets 404 (no existence leaks), a member
without the capability gets 403.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import Http404

from governance.audit.models import AuditEvent
from governance.audit.services import Actor
from governance.tenancy.models import (
    ApiToken,
    IdpGroupMapping,
    Invitation,
    Membership,
    Tenant,
    TenantScopedModel,
)
from governance.tenancy.roles import IDENTITY_CAPABILITIES, Cap, principal_capabilities

# Capabilities a session user may also hold through a django-guardian object permission on the
# Tenant, without the role that normally carries them.
OBJECT_PERMISSIONS: dict[Cap, str] = {
    Cap.MANAGE_GROUP_MAPPINGS: "tenancy.manage_group_mappings",
}

M = TypeVar("M", bound=TenantScopedModel)


@dataclass
class TenantContext:
    """The resolved caller of a tenant-scoped request."""

    tenant: Tenant
    role: str
    user: AbstractBaseUser | None
    membership: Membership | None = None
    token: ApiToken | None = None

    @property
    def actor(self) -> Actor:
        if self.token is not None:
            owner = f"{self.user.get_username()} via " if self.user is not None else ""
            return Actor(
                AuditEvent.ActorType.TOKEN,
                str(self.token.pk),
                f"{owner}token {self.token.name} ({self.token.prefix}…)",
            )
        return Actor.user(self.user)

    @property
    def is_service_token(self) -> bool:
        return self.token is not None and self.token.user_id is None

    def can(self, cap: Cap) -> bool:
        if cap in principal_capabilities(self.role, service_token=self.is_service_token):
            return True
        perm = OBJECT_PERMISSIONS.get(cap)
        return bool(
            perm and self.token is None and self.user is not None
            and self.user.has_perm(perm, self.tenant)
        )

    def require(self, cap: Cap) -> None:
        if not self.can(cap):
            if self.is_service_token and cap in IDENTITY_CAPABILITIES:
                raise PermissionDenied(
                    "A service token cannot administer members, invitations, group mappings or "
                    "tokens; sign in as a person (or use a personal token).")
            raise PermissionDenied(f"Your role ({self.role}) does not allow this.")


def _tenant_or_404(slug: str) -> Tenant:
    try:
        return Tenant.objects.get(slug=slug)
    except Tenant.DoesNotExist:
        raise Http404("No such tenant") from None


def resolve_for_user(user: AbstractBaseUser, slug: str) -> TenantContext:
    """A logged-in user in tenant ``slug``: 404 unless they are a member."""
    membership = (
        Membership.objects.select_related("tenant").filter(user=user, tenant__slug=slug).first()
    )
    if membership is None:
        raise Http404("No such tenant")
    return TenantContext(
        tenant=membership.tenant, role=membership.role, user=user, membership=membership
    )


def resolve_for_token(token: ApiToken, slug: str) -> TenantContext:
    """An API token in tenant ``slug``: 404 unless the token belongs to that tenant."""
    if token.tenant.slug != slug:
        raise Http404("No such tenant")
    membership = None
    if token.user is not None:
        membership = Membership.objects.for_tenant(token.tenant).filter(user=token.user).first()
        if membership is None:
            raise Http404("No such tenant")
    return TenantContext(
        tenant=token.tenant, role=token.role, user=token.user, membership=membership, token=token
    )


def member_context(tenant: Tenant, user: AbstractBaseUser) -> TenantContext | None:
    """``user`` acting in person in ``tenant`` with their current role, whatever token or
    session they came with (services re-check the person this way); None for a non-member."""
    membership = Membership.objects.for_tenant(tenant).filter(user=user).first()
    if membership is None:
        return None
    return TenantContext(tenant=tenant, role=membership.role, user=user, membership=membership)


def member_can(tenant: Tenant, user: AbstractBaseUser, cap: Cap) -> bool:
    """Whether ``user``, in person with their current role in ``tenant``, holds ``cap``."""
    ctx = member_context(tenant, user)
    return ctx is not None and ctx.can(cap)


def access_object(tenant: Tenant, model: type[M], pk: object) -> M:
    """One row of a tenant-owned model, or 404 (also for another tenant's row)."""
    try:
        return model.objects.for_tenant(tenant).get(pk=pk)
    except (model.DoesNotExist, ValueError, TypeError):
        raise Http404(f"No such {model._meta.verbose_name}") from None


def access_membership(ctx: TenantContext, membership_id: int) -> Membership:
    membership = access_object(ctx.tenant, Membership, membership_id)
    ctx.require(Cap.MANAGE_MEMBERS)
    return membership


def access_invitation(ctx: TenantContext, invitation_id: int) -> Invitation:
    invitation = access_object(ctx.tenant, Invitation, invitation_id)
    ctx.require(Cap.MANAGE_MEMBERS)
    return invitation


def access_group_mapping(ctx: TenantContext, mapping_id: int) -> IdpGroupMapping:
    mapping = access_object(ctx.tenant, IdpGroupMapping, mapping_id)
    ctx.require(Cap.MANAGE_GROUP_MAPPINGS)
    return mapping


def access_api_token(ctx: TenantContext, token_id: int) -> ApiToken:
    """Own personal tokens for everyone; any token of the tenant for service-token managers."""
    token = access_object(ctx.tenant, ApiToken, token_id)
    own = ctx.user is not None and token.user_id == ctx.user.pk and ctx.token is None
    if not own:
        ctx.require(Cap.MANAGE_SERVICE_TOKENS)
    return token


def visible_tokens(ctx: TenantContext) -> models.QuerySet[ApiToken]:
    tokens = ApiToken.objects.for_tenant(ctx.tenant).select_related("user", "created_by")
    if ctx.can(Cap.MANAGE_SERVICE_TOKENS):
        return tokens
    return tokens.filter(user=ctx.user)
