"""Reads of the notifications app, tenant first."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet

from governance.tenancy.models import Tenant
from notifications.models import Channel, Delivery


def channels(tenant: Tenant) -> QuerySet[Channel]:
    """The tenant's channels, with how many of their deliveries are pending and failed."""
    return Channel.objects.for_tenant(tenant).annotate(
        pending=Count("deliveries", filter=Q(deliveries__status=Delivery.Status.PENDING)),
        failed=Count("deliveries", filter=Q(deliveries__status=Delivery.Status.FAILED)),
    ).order_by("name")


def deliveries(tenant: Tenant, *, status: str | None = None, channel: Channel | int | None = None,
               event: str | None = None) -> QuerySet[Delivery]:
    """Newest first, optionally of one status, channel or event."""
    rows = Delivery.objects.for_tenant(tenant).select_related("channel")
    if status:
        rows = rows.filter(status=status)
    if channel:
        rows = rows.filter(channel=channel)
    if event:
        rows = rows.filter(event=event)
    return rows.order_by("-created_at", "-pk")
