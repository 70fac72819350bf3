"""A web process that is stopping (governance/draining.py) holds no long poll: a held bundle
poll or escalation wait is answered at once with what is current (304 / the escalation's
state), and one arriving while draining is not held at all. tests/e2e/test_draining.py proves
it with a real uvicorn and SIGTERM."""

from __future__ import annotations

import json
import threading

import pytest
from django.db import connection
from django.test import Client

from approvals.services.decisions import escalation_topic
from bundles import hot, publish
from gateway.receipts import arguments_sha256
from governance import draining
from registry import services as registry
from tests.bundle_support import SYSTEM, make_gateway, payroll_world

BUNDLE = "/api/v1/gateway/bundles/alpha"
ESCALATIONS = "/api/v1/gateway/escalations"
ARGS = {"employee": "e-17", "amount": 1200}
# Generous: a poll that was not cut short would hold 120 s, longer than any of these.
ANSWERED_WITHIN = 60


@pytest.fixture(autouse=True)
def _not_draining():
    draining.reset()
    yield
    draining.reset()


@pytest.fixture(params=["redis", "no-redis"])
def hot_store(request, settings):
    """With Redis (waits woken by pub/sub) and without (waits re-checking once a second)."""
    if request.param == "redis":
        settings.REDIS_URL = request.getfixturevalue("redis_url")
    else:
        settings.REDIS_URL = ""


@pytest.fixture
def world(transactional_db, tenant_a, hot_store):
    payroll = payroll_world(tenant_a)
    registry.grant_update(tenant=tenant_a, actor=SYSTEM, grant=payroll["grant"],
                          approval_mode="always")
    bundle = publish.bundle_publish(tenant=tenant_a, trigger="test")
    _, token = make_gateway(tenant_a)
    escalation = Client().post(ESCALATIONS, content_type="application/json", data=json.dumps({
        "call_id": "call-1", "agent": "bot", "server": "payroll", "tool": "pay",
        "arguments": ARGS, "arguments_sha256": arguments_sha256(ARGS), "bundle_revision": 1,
        "reason": "grant requires approval (always)"}), HTTP_AUTHORIZATION=f"Bearer {token}")
    assert escalation.status_code == 201
    return {"etag": f'"{bundle.blob_id}"', "token": token, "escalation": escalation.json()["id"]}


def _bundle_poll(world):
    return Client().get(BUNDLE, HTTP_AUTHORIZATION=f"Bearer {world['token']}",
                        HTTP_PREFER="wait=120", HTTP_IF_NONE_MATCH=world["etag"])


def _escalation_wait(world):
    return Client().get(f"{ESCALATIONS}/{world['escalation']}", HTTP_PREFER="wait=120",
                        HTTP_AUTHORIZATION=f"Bearer {world['token']}")


def _in_thread(fn, world) -> tuple[threading.Thread, dict]:
    answer: dict = {}

    def run() -> None:
        try:
            answer["response"] = fn(world)
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, answer


def _held(slug: str) -> bool:
    """Some event loop's announcements have a waiter for ``slug``."""
    return any(slug in found._events for found in list(hot._announcements.values()))


def _wait_until(condition, what: str) -> None:
    event = threading.Event()
    for _ in range(ANSWERED_WITHIN * 20):
        if condition():
            return
        event.wait(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("poll", [_bundle_poll, _escalation_wait])
def test_a_poll_arriving_while_draining_is_answered_without_holding(world, poll):
    draining.start_draining()
    thread, answer = _in_thread(poll, world)
    thread.join(ANSWERED_WITHIN)
    assert not thread.is_alive(), "held although the process is draining"
    response = answer["response"]
    if poll is _bundle_poll:
        assert response.status_code == 304 and response["ETag"] == world["etag"]
        assert response["Content-Type"] == "application/vnd.openpolicyagent.bundles"
    else:
        assert response.status_code == 200
        assert response.json()["status"] == "pending"


@pytest.mark.parametrize(("poll", "slug"), [(_bundle_poll, "alpha"), (_escalation_wait, None)])
def test_held_polls_are_answered_when_draining_starts(world, poll, slug):
    topic = slug or escalation_topic(world["escalation"])
    thread, answer = _in_thread(poll, world)
    _wait_until(lambda: _held(topic), "the poll to be held")
    draining.start_draining()  # from another thread than the poll's event loop, as a signal
    thread.join(ANSWERED_WITHIN)
    assert not thread.is_alive(), "still held after draining started"
    response = answer["response"]
    if poll is _bundle_poll:
        assert response.status_code == 304 and response["ETag"] == world["etag"]
    else:
        assert response.status_code == 200 and response.json()["status"] == "pending"
