"""Reads of the exports app: exporters, the rows an exporter has still to send, and its lag."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Max, Q, QuerySet
from django.utils import timezone

from governance.audit.models import AuditEvent
from governance.decisions.models import DecisionLog
from governance.exports.models import Exporter
from governance.tenancy.models import Tenant

# The time column whose age is an exporter's lag: when the audit event was recorded, when
# Tollgate received the decision.
TIME_FIELD = {"audit": "created_at", "decisions": "received_at"}


def exporters(tenant: Tenant) -> QuerySet[Exporter]:
    """The tenant's exporters by name."""
    return (Exporter.objects.for_tenant(tenant).select_related("tenant", "created_by")
            .order_by("name"))


def stream_rows(tenant: Tenant | int, stream: str) -> QuerySet:
    """Every row of one of the tenant's streams (never another tenant's)."""
    tenant_id = tenant if isinstance(tenant, int) else tenant.pk
    if stream == Exporter.Stream.AUDIT:
        return AuditEvent.objects.filter(tenant_id=tenant_id)
    if stream == Exporter.Stream.DECISIONS:
        return DecisionLog.objects.filter(tenant_id=tenant_id)
    raise ValueError(f"unknown stream {stream!r}")


def stream_head(tenant: Tenant, stream: str) -> int:
    """Id of the newest row of the stream (0 when empty): the cursor of "only new events"."""
    return stream_rows(tenant, stream).aggregate(head=Max("id"))["head"] or 0


def rows_after(tenant: Tenant | int, stream: str, after_id: int, limit: int) -> list:
    """Up to ``limit`` rows with an id above ``after_id``, in id order."""
    return list(stream_rows(tenant, stream).filter(id__gt=after_id).order_by("id")[:limit])


def pending_batch(exporter: Exporter, *, limit: int,
                  now: datetime | None = None) -> tuple[list, bool]:
    """The next rows to send and whether more are ready after them.

    Decision-log ids come from a sequence shared by concurrent ingestion transactions, so a row
    with a lower id can still commit after a higher one is visible. Only rows received more than
    EXPORT_SETTLE_SECONDS ago are sent, and the batch stops at the first newer row (never skips
    it), so the cursor never passes a row that could still appear below it. Audit ids need no
    such window: a tenant's events are written under its chain's row lock, so they commit in id
    order.
    """
    rows = rows_after(exporter.tenant_id, exporter.stream, exporter.cursor, limit)
    if exporter.stream == Exporter.Stream.DECISIONS:
        settled = (now or timezone.now()) - timedelta(seconds=settings.EXPORT_SETTLE_SECONDS)
        for position, row in enumerate(rows):
            if row.received_at > settled:
                return rows[:position], False
    return rows, len(rows) == limit


def exporter_lag(exporter: Exporter, now: datetime | None = None) -> dict:
    """``rows_behind``: rows after the cursor; ``seconds_behind``: age of the oldest of them
    (None when nothing is waiting)."""
    waiting = stream_rows(exporter.tenant_id, exporter.stream).filter(id__gt=exporter.cursor)
    oldest = (waiting.order_by("id").values_list(TIME_FIELD[exporter.stream], flat=True)
              .first())
    if oldest is None:
        return {"rows_behind": 0, "seconds_behind": None}
    age = ((now or timezone.now()) - oldest).total_seconds()
    return {"rows_behind": waiting.count(), "seconds_behind": max(0.0, age)}


def all_exporter_lags(now: datetime | None = None) -> list[tuple]:
    """Every exporter of every tenant (disabled ones too: they fall behind as well), for
    /metrics: ``(tenant slug, exporter name, kind, stream, rows_behind, seconds_behind)``."""
    now = now or timezone.now()
    lags = []
    for exporter in Exporter.objects.select_related("tenant").order_by("tenant__slug", "name"):
        lag = exporter_lag(exporter, now)
        lags.append((exporter.tenant.slug, exporter.name, exporter.kind, exporter.stream,
                     lag["rows_behind"], lag["seconds_behind"]))
    return lags


def due_exporter_ids(now: datetime | None = None) -> list[int]:
    """Enabled exporters whose next run is due (not backing off after a failure)."""
    now = now or timezone.now()
    return list(Exporter.objects.filter(enabled=True).filter(
        Q(next_attempt_at__lte=now) | Q(next_attempt_at__isnull=True),
    ).order_by("next_attempt_at", "pk").values_list("pk", flat=True))
