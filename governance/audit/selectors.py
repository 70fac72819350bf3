"""Reads of the audit trail, tenant first."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Q, QuerySet

from governance.audit.models import AuditEvent
from governance.tenancy.models import Tenant


def audit_event_list(
    tenant: Tenant,
    *,
    actor: str = "",
    action: str = "",
    obj: str = "",
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet[AuditEvent]:
    """A tenant's events, newest first; ``action`` is exact, or a prefix ending in ".". """
    events = AuditEvent.objects.filter(tenant=tenant)
    if actor:
        events = events.filter(Q(actor_label__icontains=actor) | Q(actor_id=actor))
    if action:
        events = events.filter(action__startswith=action) if action.endswith(".") else (
            events.filter(action=action)
        )
    if obj:
        events = events.filter(
            Q(object_repr__icontains=obj) | Q(object_type=obj) | Q(object_id=obj)
        )
    if since:
        events = events.filter(created_at__gte=since)
    if until:
        events = events.filter(created_at__lt=until)
    return events.order_by("-created_at", "-seq")


def audit_actions(tenant: Tenant) -> list[str]:
    return list(
        AuditEvent.objects.filter(tenant=tenant)
        .order_by("action").values_list("action", flat=True).distinct()
    )
