"""A Celery worker killed mid-task loses no decision (issue 5): tasks are acknowledged late, so
Redis hands the message of a dead worker to the next one after the visibility timeout, and the
tasks are idempotent, so running one again changes nothing that was already done.

Real processes: two ``celery worker`` subprocesses against the PostgreSQL test database and the
suite's Redis (the broker this test publishes to), and a local HTTP receiver for the webhook.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time

import pytest

from approvals import services as approvals
from approvals.models import AccessRequest, ApprovalDecision
from bundles import selectors
from governance.audit.models import AuditEvent
from notifications import services as notifications
from notifications.models import Delivery
from registry.models import Grant
from tests.bundle_support import SYSTEM, payroll_world

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

SECRET = "worker-kill-signing-secret-0123456789"
# Short, so that the test sees Redis redeliver; production keeps the default (3600 s).
VISIBILITY_TIMEOUT = 5


@pytest.fixture
def shared_broker():
    """The workers must consume from the broker this process publishes to: Redis."""
    if not os.environ.get("REDIS_URL"):
        pytest.skip("needs REDIS_URL (the workers and this test share the Redis broker)")
    return os.environ["REDIS_URL"]


@pytest.fixture
def receiver(blocking_receiver):
    return blocking_receiver


def _audited(tenant, action: str, obj) -> int:
    return AuditEvent.objects.filter(tenant=tenant, action=action,
                                     object_id=str(obj.pk)).count()


def _signed(request: dict) -> bool:
    headers = request["headers"]
    mac = hmac.new(SECRET.encode(), headers["X-Tollgate-Timestamp"].encode() + b"."
                   + request["body"], hashlib.sha256)
    return hmac.compare_digest(headers["X-Tollgate-Signature"], f"sha256={mac.hexdigest()}")


def _grant_ids_in_current_bundle(tenant) -> set[str]:
    state = selectors.publish_state(tenant)
    if state is None or state.current is None:
        return set()
    return {g["id"] for g in selectors.bundle_data(state.current)["grants"]}


def test_a_worker_killed_mid_delivery_loses_no_decision(shared_broker, celery_worker_process,
                                                       receiver, tenant_a, dave, bob):
    world = payroll_world(tenant_a, owner=dave)
    channel = notifications.channel_create(
        tenant=tenant_a, actor=SYSTEM, name="siem", kind="webhook", url=receiver.url,
        secret=SECRET, events=["approval.decided"])
    grants_before = Grant.objects.filter(tenant=tenant_a).count()
    w1 = celery_worker_process(CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT))

    # The decision is made (and committed) here; the worker only sends its notification and
    # builds the bundle, after the commit.
    request = approvals.access_request_create(
        tenant=tenant_a, actor=SYSTEM, requester=dave, agent=world["bot"], scope=world["scope"],
        duration_minutes=60, justification="month-end payroll run")
    approvals.access_request_decide(tenant=tenant_a, actor=SYSTEM, request=request,
                                    approver=bob, outcome="approve")
    request.refresh_from_db()
    assert request.status == "approved"
    grant = request.grant

    # W1 is in the middle of the delivery (the receiver holds its POST): kill it, no warm
    # shutdown, nothing acknowledged.
    if not receiver.first_in_flight.wait(timeout=30):
        pytest.fail(f"the webhook was never called; worker log:\n{w1.log()}")
    w1.process.kill()
    w1.process.wait(timeout=60)
    killed_at = time.monotonic()
    w1_log = w1.log()
    receiver.release.set()

    # The decision is intact: it never depended on the worker.
    request.refresh_from_db()
    assert request.status == "approved" and request.grant_id == grant.pk
    assert Grant.objects.filter(tenant=tenant_a).count() == grants_before + 1
    assert Grant.objects.get(pk=grant.pk).status == Grant.Status.ACTIVE
    [decision] = ApprovalDecision.objects.filter(request=request)
    assert (decision.approver, decision.outcome) == (bob, "approve")
    assert _audited(tenant_a, "access_request.approved", request) == 1
    assert _audited(tenant_a, "access_request.granted", request) == 1
    # The half-done attempt died with W1's transaction: not sent, not even counted.
    [delivery] = Delivery.objects.filter(tenant=tenant_a, channel=channel)
    assert delivery.event == "approval.decided"
    assert (delivery.status, delivery.attempts, delivery.sent_at) == ("pending", 0, None)
    assert len(receiver.requests) == 1

    # Redis makes W1's unacknowledged message visible again once the visibility timeout has
    # passed; W2 (started after it) takes it over and runs the task again.
    time.sleep(max(0.0, VISIBILITY_TIMEOUT + 1 - (time.monotonic() - killed_at)))
    w2 = celery_worker_process(CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT))
    try:
        w2.wait_until(lambda: Delivery.objects.get(pk=delivery.pk).status != "pending",
                      timeout=60)
    except pytest.fail.Exception as exc:
        raise AssertionError(f"{exc}\n\nW1's log:\n{w1_log}") from None
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("sent", 1), delivery.last_error
    assert delivery.sent_at is not None

    # At least once: the receiver saw the same delivery twice, with the same id to dedupe on.
    assert len(receiver.requests) == 2
    assert {r["headers"]["X-Tollgate-Delivery"] for r in receiver.requests} == {str(delivery.pk)}
    assert all(_signed(r) for r in receiver.requests)
    bodies = [json.loads(r["body"]) for r in receiver.requests]
    assert {b["delivery_id"] for b in bodies} == {delivery.pk}
    assert {(b["data"]["id"], b["data"]["status"]) for b in bodies} == {(str(request.pk),
                                                                          "approved")}

    # Running the tasks again created nothing twice.
    assert Delivery.objects.filter(tenant=tenant_a).count() == 1
    assert Grant.objects.filter(tenant=tenant_a).count() == grants_before + 1
    assert ApprovalDecision.objects.filter(request=request).count() == 1
    assert AccessRequest.objects.get(pk=request.pk).status == "approved"

    # The bundle build (scheduled on commit of the grant) reaches gateways whichever worker ran
    # it: the current bundle carries the grant.
    w2.wait_until(lambda: str(grant.pk) in _grant_ids_in_current_bundle(tenant_a), timeout=30)
    time.sleep(1)  # nothing left in flight sends the delivery a third time
    assert len(receiver.requests) == 2
    assert Delivery.objects.get(pk=delivery.pk).attempts == 1
