"""Reads of the exports app: exporters, the rows an exporter has still to send, and its lag."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import (
    Case,
    Count,
    DateTimeField,
    IntegerField,
    Max,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    When,
)
from django.utils import timezone

from decision_logs.models import DecisionLog
from exports.models import Exporter
from governance.audit.models import AuditEvent
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
    /metrics: ``(tenant slug, exporter name, kind, stream, rows_behind, seconds_behind)`` —
    what :func:`exporter_lag` says for each, in ONE query (correlated subqueries on each
    stream's table), so a scrape costs the same however many exporters there are."""
    now = now or timezone.now()

    def waiting(model):
        return model.objects.filter(tenant_id=OuterRef("tenant_id"), id__gt=OuterRef("cursor"))

    def rows(model):
        counted = waiting(model).order_by().values("tenant_id").annotate(n=Count("pk"))
        return Subquery(counted.values("n")[:1], output_field=IntegerField())

    def oldest(model, stream):
        return Subquery(waiting(model).order_by("id").values(TIME_FIELD[stream])[:1],
                        output_field=DateTimeField())

    audit, decided = Exporter.Stream.AUDIT, Exporter.Stream.DECISIONS
    exporters = Exporter.objects.annotate(
        rows_behind=Case(When(stream=audit, then=rows(AuditEvent)),
                         When(stream=decided, then=rows(DecisionLog))),
        oldest=Case(When(stream=audit, then=oldest(AuditEvent, audit)),
                    When(stream=decided, then=oldest(DecisionLog, decided))),
    ).order_by("tenant__slug", "name").values_list("tenant__slug", "name", "kind", "stream",
                                                   "rows_behind", "oldest")
    return [(slug, name, kind, stream, int(n or 0),
             max(0.0, (now - first).total_seconds()) if first is not None else None)
            for slug, name, kind, stream, n, first in exporters]


def due_exporter_ids(now: datetime | None = None) -> list[int]:
    """Enabled exporters whose next run is due (not backing off after a failure)."""
    now = now or timezone.now()
    return list(Exporter.objects.filter(enabled=True).filter(
        Q(next_attempt_at__lte=now) | Q(next_attempt_at__isnull=True),
    ).order_by("next_attempt_at", "pk").values_list("pk", flat=True))
