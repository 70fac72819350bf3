"""Faults in the worker (issue 8): a Celery worker killed in the middle of a bundle build, a
notification delivery or an export run, and publishes that cannot complete (database error,
signing key unavailable, local bundle copy unwritable).

Real processes only: ``celery worker`` subprocesses against the PostgreSQL test database and the
suite's Redis (the broker this process publishes to), local HTTP receivers, and a second
PostgreSQL connection that holds a row lock so that a build is caught *inside* its transaction
(never a test-only code path in the product). Tasks are acknowledged late; Redis hands the
message of a killed worker to the next one after the visibility timeout (5 s here).
"""

from __future__ import annotations

import json
import os
import time

import psycopg
import pytest
from cryptography.fernet import Fernet
from django.db import connection
from django.test import Client

from bundles import publish
from bundles.models import Bundle, PublishState
from exports import services as exports
from exports.models import Exporter
from governance.audit.models import AuditEvent
from governance.audit.services import audit_verify
from notifications import services as notifications
from notifications.models import Delivery
from registry import services as registry
from tests.bundle_support import SYSTEM, data_of, make_gateway, small_registry

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

# Short, so that the test sees Redis redeliver; production keeps the default (3600 s).
VISIBILITY_TIMEOUT = 5
VIS = {"CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT)}
BUNDLE = "/api/v1/gateway/bundles/alpha"
SECRET = "faults-webhook-signing-secret-0123456789"
HEC_TOKEN = "faults-hec-token-0123456789"


@pytest.fixture
def shared_broker():
    """The workers must consume from the broker this process publishes to: Redis."""
    if not os.environ.get("REDIS_URL"):
        pytest.skip("needs REDIS_URL (the workers and this test share the Redis broker)")
    return os.environ["REDIS_URL"]


# --- Helpers ------------------------------------------------------------------------------------


def _dsn() -> str:
    s = connection.settings_dict
    return (f"host={s['HOST'] or '127.0.0.1'} port={s['PORT'] or 5432} dbname={s['NAME']} "
            f"user={s['USER']}" + (f" password={s['PASSWORD']}" if s["PASSWORD"] else ""))


class ChainLock:
    """Another database session holding the tenant's audit chain row (``FOR UPDATE``), as a
    long audited write would: a build gets as far as recording ``bundle.published`` (compiled,
    signed, Bundle row inserted, revision allocated, all uncommitted) and waits there."""

    def __init__(self, tenant) -> None:
        self.conn = psycopg.connect(_dsn())
        self.conn.execute("SELECT id FROM audit_auditchain WHERE tenant_id = %s FOR UPDATE",
                          [tenant.pk])

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()


def _waiting_on_chain() -> list[int]:
    """Backends of this test database blocked on a lock while reading the audit chain."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock' "
            "AND query LIKE %s", ["%audit_auditchain%FOR UPDATE%"])
        return [row[0] for row in cursor.fetchall()]


def _revisions(tenant) -> list[int]:
    return list(Bundle.objects.filter(tenant=tenant).order_by("revision_number")
                .values_list("revision_number", flat=True))


def _published(tenant) -> list[int]:
    """Revision numbers named by the tenant's ``bundle.published`` audit events, in order."""
    return [e.after["revision_number"] for e in AuditEvent.objects.filter(
        tenant=tenant, action="bundle.published").order_by("seq")]


def _current(tenant) -> int | None:
    state = PublishState.objects.filter(tenant=tenant).select_related("current").first()
    return state.current.revision_number if state and state.current else None


def _served(token: str) -> tuple[int, dict]:
    """What a gateway polling the API gets now: (revision, data.json)."""
    response = Client(HTTP_AUTHORIZATION=f"Bearer {token}").get(BUNDLE)
    assert response.status_code == 200, response.content
    return int(response["X-Bundle-Revision"]), data_of(response.content)


def _agents(data: dict) -> set[str]:
    return set(data["agents"])


def _chains_ok(tenant) -> None:
    [report] = audit_verify(tenant=tenant, platform=False)
    assert report.ok, report.line()


def _first_bundle(tenant_a):
    """A registry, its first bundle (r1, published here) and a gateway token."""
    small_registry(tenant_a)
    first = publish.bundle_publish(tenant=tenant_a, trigger="test")
    assert first is not None and first.revision_number == 1
    _, token = make_gateway(tenant_a)
    revision, data = _served(token)
    assert revision == 1 and _agents(data) == {"bot"}
    return token


def _change(tenant_a) -> None:
    """A bundle-affecting change (scheduled for a build on commit)."""
    registry.agent_create(tenant=tenant_a, actor=SYSTEM, name="bot-2", owner=None)


def _wait(predicate, timeout: float, what: str, worker=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"gave up waiting for {what}" + (f"; worker log:\n{worker.log()}" if worker
                                                  else ""))


def _after_visibility(killed_at: float) -> None:
    time.sleep(max(0.0, VISIBILITY_TIMEOUT + 1 - (time.monotonic() - killed_at)))


# --- 1. A worker killed in the middle of a bundle build ----------------------------------------


def test_a_build_killed_mid_publish_is_redone_once_without_skipping_a_revision(
        shared_broker, celery_worker_process, tenant_a):
    token = _first_bundle(tenant_a)
    _change(tenant_a)  # queues the build (nobody consumes it yet)
    lock = ChainLock(tenant_a)
    try:
        w1 = celery_worker_process(**VIS)
        w1.wait_until(lambda: bool(_waiting_on_chain()), timeout=30)
        # W1 is inside the build's transaction: r2 is compiled, signed and inserted, but not
        # committed. Kill it there (no warm shutdown, nothing acknowledged).
        w1.process.kill()
        w1.process.wait(timeout=60)
        killed_at = time.monotonic()
        assert "build_bundle" in w1.log()
    finally:
        lock.release()
    # Its transaction died with it: r2 does not exist, r1 is still served.
    _wait(lambda: not _waiting_on_chain(), 10, "the dead build's session to end")
    assert _revisions(tenant_a) == [1] and _published(tenant_a) == [1]
    assert PublishState.objects.get(tenant=tenant_a).last_revision == 1
    assert _served(token)[0] == 1

    _after_visibility(killed_at)
    w2 = celery_worker_process(**VIS)
    w2.wait_until(lambda: _current(tenant_a) == 2, timeout=60)
    time.sleep(1)  # nothing else in flight builds it a second time
    # Exactly once, no revision skipped or repeated, one audit event per revision.
    assert _revisions(tenant_a) == [1, 2]
    assert _published(tenant_a) == [1, 2]
    assert PublishState.objects.get(tenant=tenant_a).last_revision == 2
    revision, data = _served(token)
    assert revision == 2 and _agents(data) == {"bot", "bot-2"}
    _chains_ok(tenant_a)


# --- 2. A worker killed in the middle of a notification delivery -------------------------------


@pytest.fixture
def receiver(blocking_receiver):
    return blocking_receiver


def _kill_mid_request(worker, receiver) -> float:
    if not receiver.first_in_flight.wait(timeout=30):
        pytest.fail(f"the receiver was never called; worker log:\n{worker.log()}")
    worker.process.kill()
    worker.process.wait(timeout=60)
    killed_at = time.monotonic()
    receiver.release.set()
    return killed_at


def test_a_delivery_killed_mid_send_is_sent_again_with_the_same_id_and_signature(
        shared_broker, celery_worker_process, receiver, tenant_a):
    from notifications.senders import signature

    channel = notifications.channel_create(
        tenant=tenant_a, actor=SYSTEM, name="soc", kind="webhook", url=receiver.base + "/hook",
        secret=SECRET, events=["approval.requested"])
    w1 = celery_worker_process(**VIS)
    [delivery] = notifications.notify(tenant=tenant_a, event="approval.requested",
                                      subject="payroll:read for bot", text="dave asks",
                                      link="/t/alpha/approvals/")
    audit_before = AuditEvent.objects.filter(tenant=tenant_a).count()
    killed_at = _kill_mid_request(w1, receiver)
    # The attempt died with W1's transaction: not sent, not even counted.
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.sent_at) == ("pending", 0, None)

    _after_visibility(killed_at)
    w2 = celery_worker_process(**VIS)
    w2.wait_until(lambda: Delivery.objects.get(pk=delivery.pk).status != "pending", timeout=60)
    time.sleep(1)  # no third send is in flight
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("sent", 1), delivery.last_error
    assert Delivery.objects.filter(channel=channel).count() == 1
    # At least once: the receiver got it twice, both with the delivery id to drop the duplicate
    # on, both correctly signed over the bytes received.
    assert len(receiver.requests) == 2
    for request in receiver.requests:
        headers = request["headers"]
        assert headers["X-Tollgate-Delivery"] == str(delivery.pk)
        assert headers["X-Tollgate-Signature"] == signature(
            SECRET, headers["X-Tollgate-Timestamp"], request["body"])
        assert json.loads(request["body"])["delivery_id"] == delivery.pk
    # No audit event lost or added by the kill, and the chain is intact.
    assert AuditEvent.objects.filter(tenant=tenant_a).count() == audit_before
    _chains_ok(tenant_a)


# --- 3. A worker killed in the middle of an export run -----------------------------------------


def _hec_ids(request: dict) -> list[int]:
    decoder, text, i, ids = json.JSONDecoder(), request["body"].decode(), 0, []
    while i < len(text):
        obj, i = decoder.raw_decode(text, i)
        ids.append(obj["event"]["id"])
        while i < len(text) and text[i].isspace():
            i += 1
    return ids


def test_an_export_killed_mid_batch_resumes_from_its_cursor_and_loses_nothing(
        shared_broker, celery_worker_process, receiver, tenant_a):
    small_registry(tenant_a)  # a dozen audit events to export
    env = VIS | {"EXPORT_SETTLE_SECONDS": "0", "EXPORT_BATCH_SIZE": "5"}
    w1 = celery_worker_process(**env)
    exporter = exports.exporter_create(
        tenant=tenant_a, actor=SYSTEM, name="splunk", kind="splunk_hec", stream="audit",
        url=receiver.base + "/services/collector/event", token=HEC_TOKEN)
    killed_at = _kill_mid_request(w1, receiver)
    expected = list(AuditEvent.objects.filter(tenant=tenant_a).order_by("id")
                    .values_list("id", flat=True))
    assert len(expected) > 10
    exporter.refresh_from_db()
    assert (exporter.cursor, exporter.exported_total) == (0, 0)  # the batch was not accepted
    assert _hec_ids(receiver.requests[0]) == expected[:5]

    _after_visibility(killed_at)
    w2 = celery_worker_process(**env)
    w2.wait_until(lambda: Exporter.objects.get(pk=exporter.pk).cursor == expected[-1],
                  timeout=60)
    exporter.refresh_from_db()
    # Resumed from the cursor: the unacknowledged batch again, then the rest, in order, each
    # event once after the kill; at least once overall.
    resent = [i for r in receiver.requests[1:] for i in _hec_ids(r)]
    assert resent == expected
    assert exporter.exported_total == len(expected)
    assert (exporter.status, exporter.consecutive_failures, exporter.last_error) == ("ok", 0, "")
    _chains_ok(tenant_a)


# --- 4. Publishes that cannot complete ---------------------------------------------------------


def _shows_failure(login, alice, text: str) -> str:
    page = login(alice).get("/t/alpha/bundles/").content.decode()
    assert "The last build failed" in page and text in page, page
    assert "Gateways keep the previous revision (r1)" in page
    return page


def test_a_database_error_mid_publish_fails_visibly_is_retried_and_r1_stays_served(
        shared_broker, celery_worker_process, tenant_a, login, alice):
    token = _first_bundle(tenant_a)
    _change(tenant_a)
    lock = ChainLock(tenant_a)
    try:
        w1 = celery_worker_process(**VIS)
        w1.wait_until(lambda: bool(_waiting_on_chain()), timeout=30)
        [first] = _waiting_on_chain()
        # The database ends the build's session mid-transaction (a failover, an admin, an
        # idle-in-transaction or statement timeout all look like this to the worker).
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [first])
        w1.wait_until(lambda: PublishState.objects.get(tenant=tenant_a).last_error != "",
                      timeout=30)
        state = PublishState.objects.get(tenant=tenant_a)
        assert "terminating connection" in state.last_error, state.last_error
        assert state.last_revision == 1 and _revisions(tenant_a) == [1]
        assert _served(token)[0] == 1
        _shows_failure(login, alice, "terminating connection")
        # Retried: a new attempt reaches the same point again.
        w1.wait_until(lambda: bool(set(_waiting_on_chain()) - {first}), timeout=30)
    finally:
        lock.release()  # the cause goes away
    w1.wait_until(lambda: _current(tenant_a) == 2, timeout=30)
    state = PublishState.objects.get(tenant=tenant_a)
    assert (state.last_error, state.last_error_at) == ("", None)
    assert _revisions(tenant_a) == [1, 2] and _published(tenant_a) == [1, 2]
    revision, data = _served(token)
    assert revision == 2 and _agents(data) == {"bot", "bot-2"}
    assert "The last build failed" not in login(alice).get("/t/alpha/bundles/").content.decode()
    _chains_ok(tenant_a)


def test_an_unavailable_signing_key_fails_visibly_is_retried_and_r1_stays_served(
        shared_broker, celery_worker_process, tenant_a, login, alice):
    token = _first_bundle(tenant_a)
    # A worker deployed with the wrong SECRET_ENCRYPTION_KEYS: it cannot decrypt the key.
    wrong = Fernet.generate_key().decode()
    w1 = celery_worker_process(SECRET_ENCRYPTION_KEYS=wrong, **VIS)
    _change(tenant_a)
    w1.wait_until(lambda: w1.log_file.read_text().count("retry: Retry in") >= 2, timeout=30)
    state = PublishState.objects.get(tenant=tenant_a)
    assert "KeyUnavailable" in state.last_error and state.last_error_at is not None
    assert state.last_revision == 1 and _revisions(tenant_a) == [1]
    assert _published(tenant_a) == [1]
    assert _served(token)[0] == 1
    _shows_failure(login, alice, "cannot be decrypted with SECRET_ENCRYPTION_KEYS")

    # Redeployed with the right key: the pending retry (handed back by the stopped worker)
    # publishes r2.
    w1.process.terminate()
    w1.process.wait(timeout=60)
    w2 = celery_worker_process(**VIS)
    w2.wait_until(lambda: _current(tenant_a) == 2, timeout=60)
    assert PublishState.objects.get(tenant=tenant_a).last_error == ""
    assert _revisions(tenant_a) == [1, 2] and _published(tenant_a) == [1, 2]
    revision, data = _served(token)
    assert revision == 2 and _agents(data) == {"bot", "bot-2"}
    _chains_ok(tenant_a)


@pytest.mark.parametrize("accel", ["", "/_bundles/"])
def test_an_unwritable_local_bundle_copy_costs_no_publish_and_no_poll(
        shared_broker, celery_worker_process, tenant_a, settings, tmp_path, accel, caplog):
    """The local copy is a per-process cache of the database: publishing never writes it, and a
    web process that cannot write it serves the bundle from the database (and says so in its
    log). As root, permissions do not stop writes; a path under a regular file does (mkdir fails
    with ENOTDIR for everyone)."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the bundle directory should be")
    unwritable = blocker / "bundles"
    settings.BUNDLE_LOCAL_DIR = unwritable
    settings.BUNDLE_ACCEL_REDIRECT = accel
    from bundles import store

    store._memory.clear()
    small_registry(tenant_a)
    assert publish.bundle_publish(tenant=tenant_a, trigger="test").revision_number == 1
    _, token = make_gateway(tenant_a)
    w1 = celery_worker_process(BUNDLE_LOCAL_DIR=str(unwritable), **VIS)
    _change(tenant_a)
    w1.wait_until(lambda: _current(tenant_a) == 2, timeout=30)
    assert PublishState.objects.get(tenant=tenant_a).last_error == ""
    assert _revisions(tenant_a) == [1, 2] and _published(tenant_a) == [1, 2]
    store._memory.clear()
    revision, data = _served(token)  # the body itself, even where nginx would send the file
    assert revision == 2 and _agents(data) == {"bot", "bot-2"}
    assert not unwritable.exists()
    assert "bundle store: cannot write the local copy" in caplog.text
