"""Single SCIM tokens for a caller: 404 outside the tenant, 403 without MANAGE_MEMBERS (SCIM
provisions the tenant's members, so only whoever manages members manages its tokens)."""

from __future__ import annotations

from governance.tenancy.access import TenantContext, access_object
from governance.tenancy.roles import Cap
from scim.models import ScimToken


def access_scim_token(ctx: TenantContext, pk) -> ScimToken:
    token = access_object(ctx.tenant, ScimToken, pk)
    ctx.require(Cap.MANAGE_MEMBERS)
    return token
