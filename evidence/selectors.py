"""Reads of the evidence app, tenant first (what a pack contains is read by sections.py)."""

from __future__ import annotations

from django.db.models import QuerySet

from evidence.models import EvidencePack
from governance.tenancy.models import Tenant


def packs(tenant: Tenant) -> QuerySet[EvidencePack]:
    """Newest first, without the zip itself (it can be large)."""
    return (EvidencePack.objects.for_tenant(tenant).select_related("tenant", "requested_by")
            .defer("content").order_by("-created_at", "-pk"))


def any_open(tenant: Tenant) -> bool:
    return packs(tenant).filter(status__in=[EvidencePack.Status.QUEUED,
                                            EvidencePack.Status.RUNNING]).exists()
