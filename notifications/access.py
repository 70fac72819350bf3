"""Single notification objects for a caller: 404 outside the tenant, 403 for non-admins."""

from __future__ import annotations

from governance.tenancy.access import TenantContext, access_object
from governance.tenancy.roles import Cap
from notifications.models import Channel, Delivery


def access_channel(ctx: TenantContext, pk) -> Channel:
    channel = access_object(ctx.tenant, Channel, pk)
    ctx.require(Cap.MANAGE_NOTIFICATIONS)
    return channel


def access_delivery(ctx: TenantContext, pk) -> Delivery:
    delivery = access_object(ctx.tenant, Delivery, pk)
    ctx.require(Cap.MANAGE_NOTIFICATIONS)
    return delivery
