"""Stopping a web process: SIGTERM answers the held long polls at once (a bundle poll held with
``Prefer: wait=120`` gets its 304, an escalation wait the escalation's current state) and the
process exits, instead of waiting out every hold (governance/draining.py). With ``--workers N``
too: the supervisor hands SIGTERM to each worker process."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import pytest
import redis
import requests

from bundles import hot, publish
from gateway.receipts import arguments_sha256
from registry import services as registry
from tests.bundle_support import SYSTEM, make_gateway, payroll_world
from tests.web_process_support import WebProcess

pytestmark = pytest.mark.e2e

ARGS = {"employee": "e-17", "amount": 1200}


def _in_background(fn) -> tuple[threading.Thread, dict]:
    answer: dict = {}

    def run() -> None:
        try:
            answer["response"] = fn()
        except Exception as exc:  # noqa: BLE001 - the assertion shows it
            answer["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, answer


def _wait_until(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def world(postgres_only, transactional_db, tenant_a, redis_url):
    payroll = payroll_world(tenant_a)
    registry.grant_update(tenant=tenant_a, actor=SYSTEM, grant=payroll["grant"],
                          approval_mode="always")
    bundle = publish.bundle_publish(tenant=tenant_a, trigger="test")
    # One gateway per kind of request, so "it reached the view" is "its gateway was seen".
    gateways = {name: make_gateway(tenant_a, name=name)
                for name in ("asker", "bundle-poller", "escalation-poller")}
    return {"etag": f'"{bundle.blob_id}"', "gateways": gateways, "redis": redis_url}


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_answers_held_long_polls_at_once_and_the_process_exits(world, tmp_path,
                                                                        workers):
    flags = ("--workers", str(workers)) if workers > 1 else ()
    web = WebProcess(tmp_path, flags=flags, REDIS_URL=world["redis"])
    base = web.start()
    api = f"{base}/api/v1/gateway"
    try:
        gateways = world["gateways"]
        _, asker = gateways["asker"]
        created = requests.post(f"{api}/escalations", timeout=60, json={
            "call_id": "call-drain", "agent": "bot", "server": "payroll", "tool": "pay",
            "arguments": ARGS, "arguments_sha256": arguments_sha256(ARGS),
            "bundle_revision": 1, "reason": "grant requires approval (always)"},
            headers={"Authorization": f"Bearer {asker}"})
        assert created.status_code == 201 and created.json()["status"] == "pending"
        escalation_id = created.json()["id"]

        bundle_gateway, bundle_token = gateways["bundle-poller"]
        escalation_gateway, escalation_token = gateways["escalation-poller"]
        bundle_poll, bundle_answer = _in_background(lambda: requests.get(
            f"{api}/bundles/alpha", timeout=150, headers={
                "Authorization": f"Bearer {bundle_token}", "Prefer": "wait=120",
                "If-None-Match": world["etag"]}))
        escalation_poll, escalation_answer = _in_background(lambda: requests.get(
            f"{api}/escalations/{escalation_id}", timeout=150, headers={
                "Authorization": f"Bearer {escalation_token}", "Prefer": "wait=120"}))

        # Both requests reached their views (their gateways were counted on the hot path) …
        seen = redis.Redis.from_url(world["redis"])
        for gateway in (bundle_gateway, escalation_gateway):
            _wait_until(lambda g=gateway: seen.hexists(hot.SEEN_HASH, str(g.pk)),
                        f"{gateway.name}'s request to arrive")
        time.sleep(0.5)  # … and went on to their holds (nothing could answer them now)
        assert bundle_poll.is_alive() and escalation_poll.is_alive()

        web.proc.send_signal(signal.SIGTERM)
        # The process stops long before the 120 s holds would have ended …
        try:
            code = web.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError("the web process did not stop:\n" + web.output()) from None
        # … exiting as a SIGTERM'd uvicorn does (it re-raises the signal once it has shut down
        # cleanly; systemd counts SIGTERM as a clean stop), and not after cancelling anything.
        assert code in (0, -signal.SIGTERM), (code, web.output())
        assert "timeout graceful shutdown exceeded" not in web.output()

        bundle_poll.join(timeout=30)
        escalation_poll.join(timeout=30)
        assert "error" not in bundle_answer and "error" not in escalation_answer, (
            bundle_answer, escalation_answer, web.output())
        response = bundle_answer["response"]
        assert response.status_code == 304, web.output()
        assert response.headers["ETag"] == world["etag"]
        response = escalation_answer["response"]
        assert response.status_code == 200, response.text
        assert response.json()["id"] == escalation_id
        assert response.json()["status"] == "pending"
    finally:
        web.stop()
