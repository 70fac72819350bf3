"""``/metrics``: every family read back with Prometheus' own text parser and checked against
the seeded data; who may scrape (token, networks, proxies); bounded SQL per scrape; the Celery
queue depth read from a real Redis broker."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from alerts import services as alerts
from bundles.models import Bundle
from decision_logs.models import DecisionLog
from exports import services as exports
from governance.audit.models import AuditEvent
from observability import metrics, selectors
from tests.bundle_support import SYSTEM, make_gateway
from tests.factories import TenantFactory
from tests.observability_support import OLDER, RECENT, event, ingest

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "metrics-token-0123456789-abcdefghijklmnop"  # noqa: S105 - a test value

FAMILIES = {
    "tollgate_bundle_builds": "counter",
    "tollgate_bundle_build_duration_seconds": "histogram",
    "tollgate_bundle_size_bytes": "gauge",
    "tollgate_bundle_revision": "gauge",
    "tollgate_approvals_pending": "gauge",
    "tollgate_approvals_overdue": "gauge",
    "tollgate_approval_deadline_breaches": "counter",
    "tollgate_gateway_last_contact_seconds": "gauge",
    "tollgate_gateway_revisions_behind": "gauge",
    "tollgate_gateways": "gauge",
    "tollgate_decisions": "counter",
    "tollgate_export_lag_rows": "gauge",
    "tollgate_export_lag_seconds": "gauge",
    "tollgate_alerts_open": "gauge",
}


def parse(text: str) -> tuple[dict[str, str], dict[tuple, float]]:
    """({family: type}, {(sample name, ((label, value), …)): value})."""
    types, samples = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return types, samples


def of(samples: dict, name: str) -> dict[tuple, float]:
    """The samples of one name, keyed by their label values in alphabetical label-name order
    (``{outcome, tenant}`` → ``("allow", "alpha")``)."""
    return {tuple(v for _, v in labels): value for (n, labels), value in samples.items()
            if n == name}


@pytest.fixture
def world(tenant_a, tenant_b, world):
    """The observability world (tests/observability/conftest.py), tenant B, and alerts and
    exporters in every state the metrics count."""
    data = world
    # Alerts: one open, one acknowledged (both unresolved), one resolved.
    raised = [alerts.alert_raise(tenant=tenant_a, kind="tool_drift", key=f"tool:{n}",
                                 subject=f"tool {n} drifted", detail={}, actor=SYSTEM)
              for n in range(3)]
    alerts.alert_acknowledge(tenant=tenant_a, actor=SYSTEM, alert=raised[1], note="on it")
    alerts.alert_resolve(tenant=tenant_a, actor=SYSTEM, alert=raised[2], note="fixed")
    # Exporters: the audit one starts at the beginning (behind), the decisions one is caught up.
    data["audit_exporter"] = exports.exporter_create(
        tenant=tenant_a, actor=SYSTEM, name="audit-file", kind="jsonl", stream="audit",
        path="audit.jsonl", start="beginning")
    data["decision_exporter"] = exports.exporter_create(
        tenant=tenant_a, actor=SYSTEM, name="siem", kind="syslog_udp", stream="decisions",
        host="127.0.0.1", port=5514, start="now")
    return data


def test_every_family_is_exposed_with_the_seeded_values(world, tenant_a, settings):
    settings.CELERY_BROKER_URL = "filesystem://"  # the embedded broker: no queue depth to read
    at = world["now"] + timedelta(seconds=60)
    types, samples = parse(generate_latest(metrics.registry(now=at)).decode())
    for name, kind in FAMILIES.items():
        assert types.get(name) == kind, name
    assert "tollgate_celery_queue_length" not in types
    assert "tollgate_celery_broker_up" not in types

    # Bundles: two revisions of alpha, none of bravo.
    first, second = world["bundles"]
    assert of(samples, "tollgate_bundle_builds_total") == {("alpha",): 2, ("bravo",): 0}
    assert of(samples, "tollgate_bundle_size_bytes") == {("alpha",): second.size}
    assert of(samples, "tollgate_bundle_revision") == {("alpha",): 2}
    build_ms = list(Bundle.objects.values_list("build_ms", flat=True))
    buckets = of(samples, "tollgate_bundle_build_duration_seconds_bucket")
    assert buckets[("+Inf",)] == len(build_ms) == 2
    for le, count in buckets.items():
        if le != ("+Inf",):
            assert count == sum(ms <= float(le[0]) * 1000 for ms in build_ms), le
    assert list(buckets)[:3] == [("0.01",), ("0.025",), ("0.05",)]
    assert of(samples, "tollgate_bundle_build_duration_seconds_count") == {(): 2}
    assert of(samples, "tollgate_bundle_build_duration_seconds_sum")[()] == pytest.approx(
        sum(build_ms) / 1000)

    # Approvals: a pending request, a pending and an overdue escalation, an expired request.
    assert of(samples, "tollgate_approvals_pending") == {
        ("escalation", "alpha"): 2, ("access_request", "alpha"): 1,
        ("escalation", "bravo"): 0, ("access_request", "bravo"): 0}
    assert of(samples, "tollgate_approvals_overdue") == {
        ("escalation", "alpha"): 1, ("access_request", "alpha"): 0,
        ("escalation", "bravo"): 0, ("access_request", "bravo"): 0}
    assert of(samples, "tollgate_approval_deadline_breaches_total") == {
        ("escalation", "alpha"): 0, ("access_request", "alpha"): 1,
        ("escalation", "bravo"): 0, ("access_request", "bravo"): 0}

    # Gateways: ages at `at`, revisions behind r2, one per state; the disabled one is left out.
    assert of(samples, "tollgate_gateway_last_contact_seconds") == {
        ("gw-current", "alpha"): pytest.approx(90), ("gw-behind", "alpha"): pytest.approx(105),
        ("gw-stale", "alpha"): pytest.approx(7260)}
    assert of(samples, "tollgate_gateway_revisions_behind") == {
        ("gw-current", "alpha"): 0, ("gw-behind", "alpha"): 1, ("gw-stale", "alpha"): 0}
    states = of(samples, "tollgate_gateways")
    assert {s: states[(s, "alpha")] for s in selectors.FLEET_STATES} == {
        "current": 1, "behind": 1, "conflict": 0, "stale": 1, "never": 1}
    assert {s: states[(s, "bravo")] for s in selectors.FLEET_STATES} == {
        "current": 0, "behind": 0, "conflict": 0, "stale": 0, "never": 0}

    # Decisions, from the roll-up.
    assert of(samples, "tollgate_decisions_total") == {
        ("allow", "alpha"): RECENT["allow"] + OLDER["allow"],
        ("escalate", "alpha"): RECENT["escalate"],
        ("deny", "alpha"): RECENT["deny"] + OLDER["deny"],
        ("allow", "bravo"): 0, ("escalate", "bravo"): 0, ("deny", "bravo"): 0}
    assert sum(of(samples, "tollgate_decisions_total").values()) == DecisionLog.objects.count()

    # Export lag: the audit exporter has every audit event of alpha to send, from the oldest.
    audit = AuditEvent.objects.filter(tenant=tenant_a)
    oldest = audit.order_by("id").first().created_at
    assert of(samples, "tollgate_export_lag_rows") == {
        ("audit-file", "jsonl", "audit", "alpha"): audit.count(),
        ("siem", "syslog_udp", "decisions", "alpha"): 0}
    assert of(samples, "tollgate_export_lag_seconds") == {
        ("audit-file", "jsonl", "audit", "alpha"): pytest.approx(
            (at - oldest).total_seconds()),
        ("siem", "syslog_udp", "decisions", "alpha"): 0}

    # Alerts: open and acknowledged count, resolved does not.
    assert of(samples, "tollgate_alerts_open") == {("alpha",): 2, ("bravo",): 0}


def test_the_counters_follow_new_rows_and_every_process_reads_the_same(world, tenant_a):
    before = of(parse(generate_latest(metrics.registry()).decode())[1],
                "tollgate_decisions_total")
    now = timezone.now()
    ingest(tenant_a, [event("late-1", outcome="deny", agent="bot", at=now),
                      event("late-2", outcome="deny", agent="bot", at=now),
                      event("late-1", outcome="deny", agent="bot", at=now)])  # a duplicate
    after = of(parse(generate_latest(metrics.registry()).decode())[1],
               "tollgate_decisions_total")
    assert after[("deny", "alpha")] == before[("deny", "alpha")] + 2
    # A second, independent registry (another process) reports the same numbers.
    assert of(parse(generate_latest(metrics.registry()).decode())[1],
              "tollgate_decisions_total") == after


def test_a_scrape_is_a_bounded_number_of_queries(world, tenant_a, django_assert_max_num_queries):
    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            generate_latest(metrics.registry())
        return len(queries)

    with django_assert_max_num_queries(20):
        generate_latest(metrics.registry())
    small = count()
    # Ten times the data of every kind but exporters: the count of queries stays the same.
    for n in range(3):
        other = TenantFactory(slug=f"more-{n}", name=f"More {n}")
        for g in range(5):
            make_gateway(other, name=f"gw-{g}")
    ingest(tenant_a, [event(f"bulk-{n}", outcome="allow", agent=f"agent-{n % 7}",
                            at=timezone.now() - timedelta(hours=n % 48))
                      for n in range(300)])
    for n in range(3):
        make_gateway(tenant_a, name=f"extra-{n}")
    assert count() == small


def test_export_lags_agree_with_the_exports_app_in_one_query(world, tenant_a):
    from exports.models import Exporter
    from exports.selectors import all_exporter_lags, exporter_lag

    now = timezone.now()
    ingest(tenant_a, [event("lag-1", outcome="allow", agent="bot", at=now)])
    with CaptureQueriesContext(connection) as queries:
        mine = all_exporter_lags(now)
    assert len(queries) == 1
    one_by_one = [(e.tenant.slug, e.name, e.kind, e.stream, *exporter_lag(e, now).values())
                  for e in Exporter.objects.select_related("tenant")
                  .order_by("tenant__slug", "name")]
    assert mine == one_by_one
    assert [row[4] for row in mine] == [AuditEvent.objects.filter(tenant=tenant_a).count(), 1]

# --- Access -------------------------------------------------------------------------------------


def test_loopback_may_scrape_without_a_token_by_default(world, client):
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "no-store" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]
    types, _ = parse(response.content.decode())
    assert set(FAMILIES) <= set(types)
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200


def test_openmetrics_when_the_scraper_asks_for_it(world, client):
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1",
                          HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert response["Content-Type"].startswith("application/openmetrics-text")
    names = {f.name for f in openmetrics_families(response.content.decode())}
    assert "tollgate_decisions" in names


def test_another_network_without_a_token_is_refused(db, client):
    response = client.get("/metrics", REMOTE_ADDR="10.1.2.3")
    assert response.status_code == 403
    assert "METRICS_ALLOWED_NETWORKS" in response.content.decode()


def test_the_token_admits_from_any_network(db, client, settings):
    settings.METRICS_TOKEN = TOKEN
    response = client.get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200 and b"tollgate_bundle_builds_total" in response.content


@pytest.mark.parametrize("header", [
    f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer ", f"Basic {TOKEN}", TOKEN])
def test_a_wrong_token_is_401_even_from_an_allowed_network(db, client, settings, header):
    settings.METRICS_TOKEN = TOKEN
    for address in ("10.1.2.3", "127.0.0.1"):
        response = client.get("/metrics", REMOTE_ADDR=address, HTTP_AUTHORIZATION=header)
        assert response.status_code == 401, (header, address)
        assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'


def test_a_token_is_401_when_none_is_configured(db, client, settings):
    settings.METRICS_TOKEN = ""
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_AUTHORIZATION="Bearer x")
    assert response.status_code == 401


def test_an_allowed_network_needs_no_token_even_when_one_is_configured(db, client, settings):
    import ipaddress

    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_NETWORKS = [ipaddress.ip_network("10.0.0.0/8")]
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="192.168.1.1").status_code == 403


def test_no_networks_means_token_only(db, client, settings):
    settings.METRICS_ALLOWED_NETWORKS = []
    settings.METRICS_TOKEN = TOKEN
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1",
                      HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


def test_a_request_through_an_untrusted_proxy_gets_no_network_access(db, client, settings):
    # A local reverse proxy makes every client look like 127.0.0.1.
    settings.TRUSTED_PROXY_COUNT = 0
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1",
                      HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1",
                      HTTP_FORWARDED="for=203.0.113.9").status_code == 403
    # With TRUSTED_PROXY_COUNT the client's own address decides.
    settings.TRUSTED_PROXY_COUNT = 1
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1",
                      HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1",
                      HTTP_X_FORWARDED_FOR="127.0.0.1").status_code == 200


def test_only_get_and_head(db, client):
    assert client.post("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 405
    assert client.head("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200


def test_a_signed_in_member_gets_nothing_extra(db, login, cast):
    # A session is not a credential here: only the token or the network.
    assert login(cast["alice"]).get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 403


def test_metrics_are_not_redirected_to_https(db, client, settings):
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/login/", REMOTE_ADDR="127.0.0.1").status_code == 301
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200


@pytest.mark.parametrize(("value", "ok"), [
    ("10.0.0.0/8, ::1/128", True), ("", True), ("10.0.0.300/8", False), ("localhost", False)])
def test_a_bad_network_stops_start_up_naming_the_variable(tmp_path, value, ok):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL"))}
    env.update(DEBUG="true", TOLLGATE_VAR_DIR=str(tmp_path), METRICS_ALLOWED_NETWORKS=value,
               DJANGO_SETTINGS_MODULE="governance.settings")
    code = ("import django; django.setup(); from django.conf import settings as s; "
            "print([str(n) for n in s.METRICS_ALLOWED_NETWORKS])")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    if ok:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0
        assert f"METRICS_ALLOWED_NETWORKS: {value!r} is not an IP network" in result.stderr


# --- Celery queue depth (real Redis broker) -----------------------------------------------------


def test_the_celery_queue_length_is_read_from_a_redis_broker(db, redis_url, settings):
    from kombu import Connection

    queue = f"tollgate-metrics-test-{uuid.uuid4().hex[:8]}"
    settings.CELERY_BROKER_URL = redis_url
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {}
    settings.CELERY_TASK_DEFAULT_QUEUE = queue
    settings.CELERY_TASK_ROUTES = {"observability.tasks.x": {"queue": f"{queue}-b"}}
    with Connection(redis_url) as conn:
        simple = conn.SimpleQueue(queue)
        for n in range(3):
            simple.put({"n": n})
        simple.put({"n": "urgent"}, priority=9)  # kombu keeps priorities in separate lists
        simple.close()
    try:
        _, samples = parse(generate_latest(metrics.registry()).decode())
        assert of(samples, "tollgate_celery_queue_length") == {(queue,): 4, (f"{queue}-b",): 0}
        assert of(samples, "tollgate_celery_broker_up") == {(): 1}
    finally:
        import redis

        client = redis.Redis.from_url(redis_url)
        client.delete(queue, *(f"{queue}\x06\x16{p}" for p in (3, 6, 9)))
        client.delete(*client.keys(f"_kombu.binding.{queue}*") or ["-"])


def test_an_unreachable_redis_broker_is_reported_not_fatal(db, settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    _, samples = parse(generate_latest(metrics.registry()).decode())
    assert of(samples, "tollgate_celery_broker_up") == {(): 0}
    assert not of(samples, "tollgate_celery_queue_length")
    assert of(samples, "tollgate_bundle_builds_total") == {}  # no tenants: empty, but served

