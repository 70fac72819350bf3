"""``/metrics``: the Prometheus exposition, computed from the database on every scrape.

Several web processes answer scrapes, so nothing is counted in process memory: a custom
collector registered in a fresh registry per scrape turns the selectors' aggregate queries into
metric families (counters are totals of durable rows, so every process reports the same value).

Access (DESIGN.md §7 "restricted by a token or network setting"): a request carrying
``Authorization: Bearer <METRICS_TOKEN>`` is served from anywhere; a request without an
``Authorization`` header is served when the client address is in ``METRICS_ALLOWED_NETWORKS``;
a wrong or unexpected token is 401, anything else 403. A request that came through a proxy
the app is not told to trust (``X-Forwarded-For`` or ``Forwarded`` present while
``TRUSTED_PROXY_COUNT`` is 0) never gets network-based access: behind a local reverse proxy
every client would otherwise look like 127.0.0.1.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Iterator
from datetime import datetime

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from decision_logs.models import Outcome
from exports.selectors import all_exporter_lags
from governance.tenancy.middleware import client_ip
from observability import selectors

log = logging.getLogger(__name__)


# --- Access -------------------------------------------------------------------------------------


def _text(status: int, message: str, **headers: str) -> HttpResponse:
    response = HttpResponse(message + "\n", status=status, content_type="text/plain")
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def _network_allows(request: HttpRequest) -> bool:
    proxied = "HTTP_X_FORWARDED_FOR" in request.META or "HTTP_FORWARDED" in request.META
    if proxied and not settings.TRUSTED_PROXY_COUNT:
        return False
    address = client_ip(request)
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in settings.METRICS_ALLOWED_NETWORKS)


def refusal(request: HttpRequest) -> HttpResponse | None:
    """None when the caller may scrape, else the 401/403 response to give it."""
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, presented = header.partition(" ")
        expected = settings.METRICS_TOKEN
        if (scheme.lower() == "bearer" and expected
                and hmac.compare_digest(presented.strip().encode(), expected.encode())):
            return None
        return _text(401, "401 Unauthorized: the bearer token is not this server's "
                          "METRICS_TOKEN.", WWW_Authenticate='Bearer realm="metrics"')
    if _network_allows(request):
        return None
    return _text(403, "403 Forbidden: /metrics is served to METRICS_ALLOWED_NETWORKS and to "
                      "holders of METRICS_TOKEN (send Authorization: Bearer <token>).")


# --- Collector ----------------------------------------------------------------------------------


class TollgateCollector(Collector):
    """Every Tollgate metric family, read from the database (and the broker) when collected."""

    def __init__(self, *, now: datetime | None = None) -> None:
        self.now = now

    def collect(self) -> Iterator[Metric]:
        now = self.now or timezone.now()
        slugs = selectors.tenant_slugs()
        yield from self._bundles(slugs)
        yield from self._approvals(slugs, now)
        yield from self._gateways(slugs, now)
        yield from self._decisions(slugs)
        yield from self._exports(now)
        yield from self._alerts(slugs)
        yield from self._celery()

    def _bundles(self, slugs: list[str]) -> Iterator[Metric]:
        builds = selectors.bundle_builds_by_tenant()
        family = CounterMetricFamily("tollgate_bundle_builds",
                                     "Bundle revisions built and published.", labels=["tenant"])
        for slug in slugs:
            family.add_metric([slug], builds.get(slug, 0))
        yield family

        cumulative, count, total = selectors.bundle_build_histogram()
        histogram = HistogramMetricFamily(
            "tollgate_bundle_build_duration_seconds",
            "Time to compile, sign and store a bundle revision (all stored revisions).")
        histogram.add_metric([], [(floatToGoString(b), n) for b, n in cumulative]
                             + [("+Inf", count)], sum_value=total)
        yield histogram

        current = selectors.current_bundles()
        size = GaugeMetricFamily("tollgate_bundle_size_bytes",
                                 "Size of the tenant's current bundle tarball.",
                                 labels=["tenant"])
        revision = GaugeMetricFamily("tollgate_bundle_revision",
                                     "Revision number of the tenant's current bundle.",
                                     labels=["tenant"])
        for slug in slugs:
            if slug in current:
                size.add_metric([slug], current[slug]["size"])
                revision.add_metric([slug], current[slug]["revision"])
        yield size
        yield revision

    def _approvals(self, slugs: list[str], now: datetime) -> Iterator[Metric]:
        counts = selectors.approval_counts(now=now)
        pending = GaugeMetricFamily(
            "tollgate_approvals_pending",
            "Access requests and escalations waiting for a decision.",
            labels=["tenant", "kind"])
        overdue = GaugeMetricFamily(
            "tollgate_approvals_overdue",
            "Pending access requests and escalations already past their deadline.",
            labels=["tenant", "kind"])
        breaches = CounterMetricFamily(
            "tollgate_approval_deadline_breaches",
            "Access requests and escalations that expired undecided at their deadline.",
            labels=["tenant", "kind"])
        for slug in slugs:
            for kind in selectors.APPROVAL_KINDS:
                row = counts.get((slug, kind), {})
                pending.add_metric([slug, kind], row.get("pending", 0))
                overdue.add_metric([slug, kind], row.get("overdue", 0))
                breaches.add_metric([slug, kind], row.get("expired", 0))
        yield pending
        yield overdue
        yield breaches

    def _gateways(self, slugs: list[str], now: datetime) -> Iterator[Metric]:
        fleet = selectors.fleet_all(now=now)
        contact = GaugeMetricFamily(
            "tollgate_gateway_last_contact_seconds",
            "Seconds since the gateway last polled or reported (active gateways seen at least "
            "once).", labels=["tenant", "gateway"])
        behind = GaugeMetricFamily(
            "tollgate_gateway_revisions_behind",
            "Revisions between the tenant's current bundle and the one the gateway runs.",
            labels=["tenant", "gateway"])
        states = GaugeMetricFamily(
            "tollgate_gateways",
            "Active gateways by freshness: current, behind, conflict (runs a revision this "
            "control plane did not issue under that number), stale (silent longer than "
            "GATEWAY_STALE_SECONDS) or never (never seen).", labels=["tenant", "state"])
        by_state = {(slug, s): 0 for slug in slugs for s in selectors.FLEET_STATES}
        for row in fleet:
            by_state[(row.tenant_slug, row.state)] = by_state.get(
                (row.tenant_slug, row.state), 0) + 1
            if row.last_contact_at is not None:
                age = max(0.0, (now - row.last_contact_at).total_seconds())
                contact.add_metric([row.tenant_slug, row.name], age)
            if row.behind is not None:
                behind.add_metric([row.tenant_slug, row.name], row.behind)
        for (slug, state), n in sorted(by_state.items()):
            states.add_metric([slug, state], n)
        yield contact
        yield behind
        yield states

    def _decisions(self, slugs: list[str]) -> Iterator[Metric]:
        totals = selectors.decision_totals()
        family = CounterMetricFamily(
            "tollgate_decisions", "Gateway decisions logged, by outcome (from the hourly "
            "roll-up of retained decision logs).", labels=["tenant", "outcome"])
        for slug in slugs:
            for outcome in Outcome.values:
                family.add_metric([slug, outcome], totals.get((slug, outcome), 0))
        yield family

    def _exports(self, now: datetime) -> Iterator[Metric]:
        rows = GaugeMetricFamily(
            "tollgate_export_lag_rows", "Rows written but not yet accepted by the exporter's "
            "receiver.", labels=["tenant", "exporter", "kind", "stream"])
        seconds = GaugeMetricFamily(
            "tollgate_export_lag_seconds", "Age of the oldest row the exporter has not "
            "delivered yet (0 when caught up).", labels=["tenant", "exporter", "kind", "stream"])
        for slug, name, kind, stream, rows_behind, seconds_behind in all_exporter_lags(now):
            labels = [slug, name, kind, stream]
            rows.add_metric(labels, rows_behind)
            seconds.add_metric(labels, seconds_behind or 0)
        yield rows
        yield seconds

    def _alerts(self, slugs: list[str]) -> Iterator[Metric]:
        counts = selectors.alerts_open()
        family = GaugeMetricFamily("tollgate_alerts_open",
                                   "Alerts not resolved yet (open or acknowledged).",
                                   labels=["tenant"])
        for slug in slugs:
            family.add_metric([slug], counts.get(slug, 0))
        yield family

    def _celery(self) -> Iterator[Metric]:
        if not selectors.broker_is_redis():
            return
        import redis

        up = GaugeMetricFamily("tollgate_celery_broker_up",
                               "1 when the Redis broker could be read for queue lengths.")
        try:
            lengths = selectors.celery_queue_lengths()
        except redis.RedisError:
            log.warning("metrics: cannot read the Celery broker's queue lengths", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        family = GaugeMetricFamily("tollgate_celery_queue_length",
                                   "Messages waiting in the Celery broker queue.",
                                   labels=["queue"])
        for queue, n in sorted(lengths.items()):
            family.add_metric([queue], n)
        yield up
        yield family


def registry(*, now: datetime | None = None) -> CollectorRegistry:
    """A fresh registry holding only this scrape's collector."""
    fresh = CollectorRegistry(auto_describe=False)
    fresh.register(TollgateCollector(now=now))
    return fresh
