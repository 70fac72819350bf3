"""Single exporters for a caller: 404 outside the tenant, 403 without MANAGE_EXPORTS."""

from __future__ import annotations

from exports.models import Exporter
from governance.tenancy.access import TenantContext, access_object
from governance.tenancy.roles import Cap


def access_exporter(ctx: TenantContext, pk) -> Exporter:
    exporter = access_object(ctx.tenant, Exporter, pk)
    ctx.require(Cap.MANAGE_EXPORTS)
    return exporter
