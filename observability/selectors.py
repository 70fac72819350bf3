"""Reads of the dashboard (one tenant) and of ``/metrics`` (every tenant at once).

The dashboard reads the decision roll-up and narrow, indexed slices of the other apps' tables.
The ``/metrics`` readers are aggregate queries over all tenants — one query per family whatever
the number of tenants, bundles or approvals (gateways are read row by row: a fleet, not a log) —
because Prometheus scrapes every few seconds and several web processes answer it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import (
    Count,
    Q,
    QuerySet,
    Sum,
)

from approvals.models import AccessRequest, Decidable, Escalation
from bundles import hot
from bundles.models import Bundle, Gateway, PublishState
from bundles.selectors import conflict_reason
from decision_logs import selectors as decisions
from decision_logs.models import Outcome
from governance.tenancy.models import Tenant
from registry.models import Tool

# --- Fleet freshness (shared by the dashboard and /metrics) -------------------------------------

CURRENT, BEHIND, STALE, NEVER = "current", "behind", "stale", "never"
CONFLICT = "conflict"  # runs a revision this control plane did not issue under that number
FLEET_STATES = (CURRENT, BEHIND, CONFLICT, STALE, NEVER)
FLEET_STATE_LABELS = {CURRENT: "On the newest revision", BEHIND: "Behind",
                      CONFLICT: "Revision conflict", STALE: "Stale (no contact)",
                      NEVER: "Never seen"}


def stale_after() -> timedelta:
    """A gateway silent for longer than this is stale: the fleet page's threshold."""
    return timedelta(seconds=settings.GATEWAY_STALE_SECONDS)


def freshness_state(*, last_contact: datetime | None, active_revision: int | None,
                    newest: int | None, now: datetime, conflict: str = "") -> str:
    """never (no poll or report ever), stale (silent longer than GATEWAY_STALE_SECONDS),
    conflict (its revision is not this control plane's bundle of that number:
    ``bundles.selectors.conflict_reason``, e.g. after a restore), behind (runs an older
    revision than the tenant's current bundle, or none yet), current."""
    if last_contact is None:
        return NEVER
    if now - last_contact > stale_after():
        return STALE
    if conflict:
        return CONFLICT
    if newest is not None and (active_revision is None or active_revision < newest):
        return BEHIND
    return CURRENT


def _contact_times(gateway_ids: list[int]) -> dict[int, datetime]:
    """Last contact as the hot path counted it (one Redis call or one cache query); the
    database's copy (at most a minute old) when the hot store is down."""
    try:
        seen = hot.contact_times(gateway_ids)
    except Exception:  # noqa: BLE001 - the hot store being down must not break a page
        return {}
    return {pk: datetime.fromtimestamp(ts, tz=UTC) for pk, ts in seen.items()}


@dataclass(frozen=True)
class GatewayFreshness:
    tenant_slug: str
    gateway_id: int
    name: str
    last_contact_at: datetime | None
    active_revision: int | None
    newest: int | None
    state: str

    @property
    def behind(self) -> int | None:
        if self.newest is None or self.active_revision is None:
            return None
        return max(0, self.newest - self.active_revision)


def _freshness(gateways: QuerySet[Gateway], newest: dict[int, int], now: datetime
               ) -> list[GatewayFreshness]:
    rows = list(gateways.filter(status=Gateway.Status.ACTIVE).order_by("tenant_id", "name")
                .values("pk", "tenant_id", "tenant__slug", "name", "last_contact_at",
                        "active_revision", "last_report"))
    contacts = _contact_times([r["pk"] for r in rows])
    hashes = _revision_hashes(rows)
    result = []
    for row in rows:
        last = row["last_contact_at"]
        polled = contacts.get(row["pk"])
        if polled is not None:
            last = max(last, polled) if last else polled
        tenant_newest = newest.get(row["tenant_id"])
        running = row["active_revision"]
        reported = Gateway(last_report=row["last_report"])  # unsaved: for its report properties
        conflict = conflict_reason(
            running=running, sha256=reported.reported_sha256, codes=reported.reported_codes,
            newest=tenant_newest, ours=hashes.get((row["tenant_id"], running)))
        result.append(GatewayFreshness(
            tenant_slug=row["tenant__slug"], gateway_id=row["pk"], name=row["name"],
            last_contact_at=last, active_revision=running, newest=tenant_newest,
            state=freshness_state(last_contact=last, active_revision=running,
                                  newest=tenant_newest, now=now, conflict=conflict)))
    return result


def _revision_hashes(rows: list[dict]) -> dict[tuple[int, int], str]:
    """``{(tenant id, revision): tarball SHA-256}`` of the bundles the gateways say they run."""
    wanted = {(row["tenant_id"], row["active_revision"]) for row in rows
              if row["active_revision"] is not None}
    if not wanted:
        return {}
    found = Bundle.objects.filter(
        tenant_id__in={t for t, _ in wanted}, revision_number__in={n for _, n in wanted}
    ).values_list("tenant_id", "revision_number", "blob_id")  # one query, then exact pairs
    return {(t, n): sha for t, n, sha in found if (t, n) in wanted}


# --- Dashboard ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    key: str
    label: str
    hours: int
    bucket_hours: int


RANGES = {"24h": Range("24h", "last 24 hours", 24, 1), "7d": Range("7d", "last 7 days", 168, 6)}
DEFAULT_RANGE = "24h"


@dataclass(frozen=True)
class DecisionBucket:
    start: datetime
    end: datetime
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _hour_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def decision_buckets(tenant: Tenant, *, range_key: str, now: datetime) -> list[DecisionBucket]:
    """Decisions per outcome in consecutive buckets (1 h for 24 h, 6 h for 7 days) ending with
    the current hour, from the hourly roll-up; empty buckets included."""
    span = RANGES[range_key]
    until = _hour_floor(now) + timedelta(hours=1)
    since = until - timedelta(hours=span.hours)
    step = timedelta(hours=span.bucket_hours)
    buckets = [{o: 0 for o in Outcome.values} for _ in range(span.hours // span.bucket_hours)]
    for row in decisions.outcome_series(tenant, since=since, until=until):
        index = int((row["hour"] - since) / step)
        if 0 <= index < len(buckets) and row["outcome"] in buckets[index]:
            buckets[index][row["outcome"]] += int(row["count"])
    return [DecisionBucket(since + i * step, since + (i + 1) * step, counts)
            for i, counts in enumerate(buckets)]


def top_denied_agents(tenant: Tenant, *, now: datetime, limit: int = 10) -> list[tuple[str, int]]:
    """The agents denied most often in the last 24 hours."""
    return decisions.top_denied_agents(tenant, since=now - timedelta(hours=24), limit=limit)


@dataclass(frozen=True)
class Waiting:
    """One access request or escalation waiting for a decision."""

    kind: str  # "access_request" or "escalation"
    obj: Decidable
    deadline: datetime
    seconds_left: int
    label: str

    @property
    def breached(self) -> bool:
        return self.seconds_left <= 0

    @property
    def on_alternates(self) -> bool:
        return self.obj.on_alternates


@dataclass(frozen=True)
class ApprovalsWaiting:
    items: list[Waiting]
    total: int
    breached: int
    by_kind: dict[str, int] = field(default_factory=dict)


def approvals_waiting(tenant: Tenant, *, now: datetime, limit: int = 20) -> ApprovalsWaiting:
    """Pending access requests and escalations, soonest deadline first (at most ``limit`` shown;
    the totals count them all). Overdue ones (past their deadline, the sweep not yet run) are
    breaches."""
    items: list[Waiting] = []
    by_kind: dict[str, int] = {}
    breached = 0
    sources = (
        ("access_request",
         AccessRequest.objects.for_tenant(tenant).select_related("agent", "scope"),
         lambda r: f"Access · {r.agent.name} → {r.scope.name}"),
        ("escalation", Escalation.objects.for_tenant(tenant).select_related("agent"),
         lambda e: f"Call · {e.agent.name} → {e.server}/{e.tool}"),
    )
    for kind, rows, label in sources:
        pending = rows.filter(status=Decidable.Status.PENDING)
        counts = pending.aggregate(n=Count("pk"), late=Count("pk", filter=Q(deadline__lte=now)))
        by_kind[kind] = counts["n"]
        breached += counts["late"]
        for obj in pending.order_by("deadline", "pk")[:limit]:
            items.append(Waiting(kind, obj, obj.deadline,
                                 int((obj.deadline - now).total_seconds()), label(obj)))
    items.sort(key=lambda w: (w.deadline, w.kind))
    return ApprovalsWaiting(items=items[:limit], total=sum(by_kind.values()), breached=breached,
                            by_kind=by_kind)


@dataclass(frozen=True)
class Fleet:
    counts: dict[str, int]
    gateways: list[GatewayFreshness]
    newest: int | None
    disabled: int

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def fleet_freshness(tenant: Tenant, *, now: datetime) -> Fleet:
    """The tenant's active gateways by freshness (disabled ones are counted apart)."""
    state = PublishState.objects.filter(tenant=tenant, current__isnull=False).values_list(
        "current__revision_number", flat=True).first()
    newest = {tenant.pk: state} if state is not None else {}
    gateways = Gateway.objects.for_tenant(tenant)
    rows = _freshness(gateways, newest, now)
    counts = {s: 0 for s in FLEET_STATES}
    for row in rows:
        counts[row.state] += 1
    disabled = gateways.filter(status=Gateway.Status.DISABLED).count()
    return Fleet(counts=counts, gateways=rows, newest=state, disabled=disabled)


def drifted_tools(tenant: Tenant) -> QuerySet[Tool]:
    """Quarantined tools, and tools whose live definition differs from the pinned one while
    they wait for review: most recently seen first."""
    return (Tool.objects.for_tenant(tenant)
            .filter(Q(status=Tool.Status.QUARANTINED) | ~Q(drifted_sha256=""))
            .select_related("server").order_by("-last_seen_at", "server__name", "name"))


# --- /metrics: every tenant, aggregate queries ---------------------------------------------------

# Bucket bounds of tollgate_bundle_build_duration_seconds (Bundle.build_ms is milliseconds).
BUILD_BUCKETS_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
APPROVAL_KINDS = {"access_request": AccessRequest, "escalation": Escalation}


def tenant_slugs() -> list[str]:
    return list(Tenant.objects.order_by("slug").values_list("slug", flat=True))


def bundle_builds_by_tenant() -> dict[str, int]:
    """Bundles built (revisions published) per tenant."""
    rows = Bundle.objects.values("tenant__slug").annotate(n=Count("pk")).order_by()
    return {r["tenant__slug"]: r["n"] for r in rows}


def bundle_build_histogram() -> tuple[list[tuple[float, int]], int, float]:
    """(cumulative count per bucket bound in seconds, count, sum of seconds) over every stored
    bundle's build time, in one query."""
    bounds = {f"le_{i}": Count("pk", filter=Q(build_ms__lte=round(b * 1000)))
              for i, b in enumerate(BUILD_BUCKETS_SECONDS)}
    row = Bundle.objects.aggregate(n=Count("pk"), total_ms=Sum("build_ms"), **bounds)
    cumulative = [(b, row[f"le_{i}"]) for i, b in enumerate(BUILD_BUCKETS_SECONDS)]
    return cumulative, row["n"], (row["total_ms"] or 0) / 1000


def current_bundles() -> dict[str, dict[str, int]]:
    """Per tenant with a published bundle: its revision number and size in bytes."""
    rows = PublishState.objects.filter(current__isnull=False).values(
        "tenant__slug", "current__revision_number", "current__size")
    return {r["tenant__slug"]: {"revision": r["current__revision_number"],
                                "size": r["current__size"]} for r in rows}


def approval_counts(*, now: datetime) -> dict[tuple[str, str], dict[str, int]]:
    """Per (tenant slug, kind): pending, overdue (pending past the deadline) and expired (the
    deadline passed without a decision) — one query per kind."""
    result: dict[tuple[str, str], dict[str, int]] = {}
    for kind, model in APPROVAL_KINDS.items():
        rows = (model.objects.filter(status__in=[Decidable.Status.PENDING,
                                                 Decidable.Status.EXPIRED])
                .values("tenant__slug").order_by()
                .annotate(pending=Count("pk", filter=Q(status=Decidable.Status.PENDING)),
                          overdue=Count("pk", filter=Q(status=Decidable.Status.PENDING,
                                                       deadline__lte=now)),
                          expired=Count("pk", filter=Q(status=Decidable.Status.EXPIRED))))
        for r in rows:
            result[(r["tenant__slug"], kind)] = {
                "pending": r["pending"], "overdue": r["overdue"], "expired": r["expired"]}
    return result


def fleet_all(*, now: datetime) -> list[GatewayFreshness]:
    """Every active gateway of every tenant with its freshness (two queries, one hot-store
    read)."""
    newest = dict(PublishState.objects.filter(current__isnull=False)
                  .values_list("tenant_id", "current__revision_number"))
    return _freshness(Gateway.objects.all(), newest, now)


def decision_totals() -> dict[tuple[str, str], int]:
    """All decisions per (tenant slug, outcome) still in the roll-up."""
    return decisions.outcome_totals()


def alerts_open() -> dict[str, int]:
    """Unresolved (open or acknowledged) alerts per tenant, as the alerts app counts them
    (``open_alerts_count``), for every tenant in one query."""
    from alerts.models import Alert

    rows = (Alert.objects.filter(status__in=Alert.LIVE).values("tenant__slug")
            .annotate(n=Count("pk")).order_by())
    return {r["tenant__slug"]: r["n"] for r in rows}


def broker_queue_names() -> list[str]:
    """The Celery queues the settings name: the default queue, CELERY_TASK_QUEUES and the
    queues of CELERY_TASK_ROUTES."""
    names = [getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", "celery") or "celery"]
    for queue in getattr(settings, "CELERY_TASK_QUEUES", None) or []:
        names.append(getattr(queue, "name", queue))
    routes = getattr(settings, "CELERY_TASK_ROUTES", None) or {}
    for route in (routes.values() if isinstance(routes, dict) else []):
        if isinstance(route, dict) and route.get("queue"):
            names.append(route["queue"])
    return sorted({str(n) for n in names})


def broker_is_redis() -> bool:
    return str(settings.CELERY_BROKER_URL).split("://", 1)[0] in ("redis", "rediss", "unix")


def celery_queue_lengths() -> dict[str, int]:
    """Messages waiting per broker queue (LLEN of each of kombu's priority lists), Redis
    brokers only; raises redis.RedisError when the broker cannot be read."""
    import redis
    from kombu.transport.redis import PRIORITY_STEPS, Channel

    options: dict[str, Any] = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", None) or {}
    prefix = options.get("global_keyprefix", "")
    steps = options.get("priority_steps", PRIORITY_STEPS)
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=2,
                                  socket_connect_timeout=2)
    try:
        queues = broker_queue_names()
        pipe = client.pipeline(transaction=False)
        for queue in queues:
            # kombu's key of priority p: the queue itself for 0, else queue + sep + p.
            for priority in sorted(set(steps)):
                key = f"{queue}{Channel.sep}{priority}" if priority else queue
                pipe.llen(f"{prefix}{key}")
        sizes = pipe.execute()
    finally:
        client.close()
    per_queue: dict[str, int] = defaultdict(int)
    width = len(set(steps))
    for index, queue in enumerate(queues):
        per_queue[queue] = sum(int(s or 0) for s in sizes[index * width:(index + 1) * width])
    return dict(per_queue)
