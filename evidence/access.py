"""Single evidence packs for a caller: 404 outside the tenant, 403 without EXPORT_EVIDENCE."""

from __future__ import annotations

from django.http import Http404

from evidence import selectors
from evidence.models import EvidencePack
from governance.tenancy.access import TenantContext
from governance.tenancy.roles import Cap


def access_pack(ctx: TenantContext, pk) -> EvidencePack:
    """The pack without its zip (the download service reads that)."""
    try:
        pack = selectors.packs(ctx.tenant).get(pk=pk)
    except (EvidencePack.DoesNotExist, ValueError, TypeError):
        raise Http404("No such evidence pack") from None
    ctx.require(Cap.EXPORT_EVIDENCE)
    return pack
