"""Faults with real processes: the control plane (a separate uvicorn process, DEBUG off, the demo
tenant seeded) on a Redis server and a PostgreSQL cluster of its own, which the tests stop and
start again while gateways poll and approvers decide (tests/outage_support.py). The machine's
shared PostgreSQL and Redis are never touched.

* Redis stopped: every poll is answered from the database and the bundle store within its
  deadline, as a plain poll (no hold: nothing would wake it); a bundle published meanwhile is
  served; an escalation decided meanwhile reaches its gateway. Redis back: long polls hold and
  wake on a publish again, and the decision is still there to spend.
* PostgreSQL stopped: web pages, the admin API and the gateway API answer 503 with Retry-After
  (JSON or a plain page, never a traceback), bundle polls the hot store can answer keep being
  answered; PostgreSQL back: the same server process answers 200 again.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from gateway.receipts import arguments_sha256
from tests.outage_support import (
    ControlPlane,
    PostgresCluster,
    RedisServer,
    make_workdir,
    missing_binaries,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(missing_binaries() is not None,
                       reason=f"outage tests need their own servers: {missing_binaries()}"),
]

BUNDLE = "/api/v1/gateway/bundles/acme"
STATUS = "/api/v1/gateway/status"
ESCALATIONS = "/api/v1/gateway/escalations"
LONG_POLL_TYPE = "application/vnd.openpolicyagent.bundles"
PLAIN_TYPE = "application/gzip"
GATEWAYS = 20  # concurrent gateway clients
WAIT = 20  # their Prefer: wait=N
MARGIN = 5.0  # what a deadline may exceed N by (scheduling, a busy machine)

SETUP = """
import json
from datetime import timedelta
from django.contrib.auth import get_user_model
from django.utils import timezone
from governance.audit.services import Actor
from bundles.publish import bundle_publish
from governance.tenancy import services
from governance.tenancy.models import Tenant
from registry import services as registry
from registry.models import Grant
acme = Tenant.objects.get(slug="acme")
actor = Actor.system("outage test")
grant = Grant.objects.for_tenant(acme).get(agent__name="hr-assistant")
registry.grant_update(tenant=acme, actor=actor, grant=grant, approval_mode="always")
bundle_publish(tenant=acme, trigger="outage test")
user = get_user_model().objects.get(username="approver")
_, token = services.api_token_create(
    tenant=acme, actor=actor, created_by=user, kind="personal", name="outage", role="approver",
    expires_at=timezone.now() + timedelta(days=1), owner=user)
print(json.dumps({"approver_token": token}))
"""

PUBLISH = """
import json
from bundles.publish import bundle_publish
from governance.tenancy.models import Tenant
bundle = bundle_publish(tenant=Tenant.objects.get(slug="acme"), trigger="outage test",
                        force=True)
print(json.dumps({"revision": bundle.revision_number, "sha256": bundle.blob_id}))
"""


@dataclass
class Stack:
    workdir: Path
    redis: RedisServer
    postgres: PostgresCluster
    server: ControlPlane
    gateway_token: str
    approver_token: str

    @property
    def url(self) -> str:
        return self.server.url

    def publish(self) -> dict:
        """A new bundle revision, published by a process of its own (as the worker would)."""
        return self.server.script(PUBLISH)

    def poll(self, etag: str | None = None, wait: int | None = None) -> Poll:
        headers = {"Authorization": f"Bearer {self.gateway_token}"}
        if etag:
            headers["If-None-Match"] = etag
        if wait is not None:
            headers["Prefer"] = f"wait={wait}"
        started = time.monotonic()
        response = requests.get(f"{self.url}{BUNDLE}", headers=headers,
                                timeout=(wait or 0) + 30)
        return Poll(response, time.monotonic() - started)

    def gateway(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.gateway_token}"} | kwargs.pop("headers", {})
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=30,
                                **kwargs)

    def admin_api(self, method: str, path: str, **kwargs) -> requests.Response:
        return requests.request(method, f"{self.url}/api/v1/t/acme/{path}", timeout=30,
                                headers={"Authorization": f"Bearer {self.approver_token}"},
                                **kwargs)

    def server_errors(self) -> list[str]:
        """Lines of the server's log about a 500 (an unhandled exception)."""
        return [line for line in self.server.output().splitlines()
                if "Internal Server Error" in line or '"status": 500' in line]


@dataclass
class Poll:
    response: requests.Response
    seconds: float

    @property
    def status(self) -> int:
        return self.response.status_code

    @property
    def etag(self) -> str:
        return self.response.headers.get("ETag", "")

    @property
    def content_type(self) -> str:
        return self.response.headers.get("Content-Type", "")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    workdir = make_workdir()
    redis, postgres = RedisServer(workdir), PostgresCluster(workdir)
    server = ControlPlane(workdir, postgres.url, redis.url)
    try:
        redis.start()
        postgres.init()
        server.manage("migrate", "--noinput", "-v0")
        server.manage("seed_demo", "--force")
        approver_token = server.script(SETUP)["approver_token"]
        server.start()
        gateway_token = (server.var / "demo-gateway-token").read_text().strip()
        yield Stack(workdir, redis, postgres, server, gateway_token, approver_token)
    finally:
        server.stop()
        redis.stop()
        if postgres.running():
            postgres.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def running(stack: Stack) -> Iterator[Stack]:
    """The stack with both servers up, before and after the test (whatever it stopped)."""
    assert stack.server.alive(), stack.server.output()
    yield stack
    if stack.redis.proc is None:
        stack.redis.start()
    if not stack.postgres.running():
        stack.postgres.start()


def _etag_of(body: bytes) -> str:
    return f'"{hashlib.sha256(body).hexdigest()}"'


def _all_gateways(stack: Stack, etag: str | None, wait: int | None, rounds: int = 1
                  ) -> list[Poll]:
    """GATEWAYS clients polling at the same time, ``rounds`` polls each, one after another."""
    def one_gateway(_: int) -> list[Poll]:
        return [stack.poll(etag, wait) for _ in range(rounds)]

    with ThreadPoolExecutor(GATEWAYS) as pool:
        return [poll for polls in pool.map(one_gateway, range(GATEWAYS)) for poll in polls]


def _escalation_body(call_id: str) -> dict:
    arguments = {"employee_id": "E100"}
    return {"call_id": call_id, "agent": "hr-assistant", "server": "acme-hr",
            "tool": "lookup_employee", "arguments": arguments,
            "arguments_sha256": arguments_sha256(arguments), "bundle_revision": 1,
            "reason": "grant requires approval (always)"}


def test_redis_outage_polls_are_answered_from_the_store_and_nothing_is_lost(running):
    stack = running
    before = stack.poll()
    assert before.status == 200, before.response.text
    current = before.etag
    assert current == _etag_of(before.response.content)
    # Redis up: a long poll that has nothing new is held, then answered 304 as a long poll.
    held = stack.poll(current, wait=1)
    assert (held.status, held.content_type) == (304, LONG_POLL_TYPE)

    stack.redis.stop()

    # Every gateway keeps being answered: the current bundle (from the database and the store)
    # to one that has none, 304 to one that has it, each within its deadline and as a plain
    # poll, i.e. not held (nothing could wake it) but answered at once.
    fresh = _all_gateways(stack, None, WAIT)
    assert {p.status for p in fresh} == {200}, [p.response.text for p in fresh if p.status != 200]
    assert {p.etag for p in fresh} == {current}
    assert {_etag_of(p.response.content) for p in fresh} == {current}
    unchanged = _all_gateways(stack, current, WAIT, rounds=3)
    assert {(p.status, p.content_type) for p in unchanged} == {(304, PLAIN_TYPE)}
    assert max(p.seconds for p in fresh + unchanged) < WAIT + MARGIN
    # Readiness names Redis, while the process goes on answering what it can (above).
    ready = requests.get(f"{stack.url}/readyz", timeout=30)
    assert (ready.status_code, ready.json()["checks"]["redis"]) == (503, "unreachable")

    # A bundle published during the outage (its announcement is lost) is what polls now get.
    published = stack.publish()
    new = f'"{published["sha256"]}"'
    assert new != current
    after = _all_gateways(stack, current, WAIT)
    assert {p.status for p in after} == {200}
    assert {p.etag for p in after} == {new}
    assert {_etag_of(p.response.content) for p in after} == {new}
    assert {p.response.headers["X-Bundle-Revision"] for p in after} == {
        str(published["revision"])}
    assert max(p.seconds for p in after) < WAIT + MARGIN

    # An approver decides a held call during the outage; the gateway learns the decision.
    created = stack.gateway("POST", ESCALATIONS, json=_escalation_body(f"c-{uuid.uuid4()}"))
    assert created.status_code == 201, created.text
    escalation_id = created.json()["id"]
    decided = stack.admin_api("POST", f"escalations/{escalation_id}/decide/",
                              json={"outcome": "approve"})
    assert decided.status_code == 200, decided.text
    assert decided.json()["changed"] is True
    seen = stack.gateway("GET", f"{ESCALATIONS}/{escalation_id}", headers={"Prefer": "wait=5"})
    assert seen.status_code == 200, seen.text
    assert seen.json()["status"] == "approved" and seen.json()["receipt"]

    stack.redis.start()  # empty: nothing survived in it

    # Long polls are held again once the server has reconnected: a request that still finds
    # a pooled connection from before the restart is answered as a plain poll, so wait for a
    # round in which every gateway is answered as a long poll.
    give_up = time.monotonic() + 30
    resumed = _all_gateways(stack, new, wait=1)
    while {p.content_type for p in resumed} != {LONG_POLL_TYPE} and time.monotonic() < give_up:
        time.sleep(0.5)
        resumed = _all_gateways(stack, new, wait=1)
    assert {(p.status, p.content_type) for p in resumed} == {(304, LONG_POLL_TYPE)}

    # A long poll holds until a publish wakes it with the new bundle.
    answers: list[Poll] = []
    waiter = threading.Thread(target=lambda: answers.append(stack.poll(new, wait=WAIT)))
    waiter.start()
    time.sleep(1.0)
    assert answers == [], "the long poll was answered before anything changed"
    republished = stack.publish()
    waiter.join(WAIT + MARGIN + 30)
    assert len(answers) == 1
    woken = answers[0]
    assert (woken.status, woken.content_type) == (200, LONG_POLL_TYPE)
    assert woken.etag == f'"{republished["sha256"]}"' == _etag_of(woken.response.content)
    assert woken.seconds < WAIT + MARGIN

    # The decision made during the outage is still there, and its receipt is spent once.
    seen = stack.gateway("GET", f"{ESCALATIONS}/{escalation_id}")
    assert seen.json()["status"] == "approved" and seen.json()["consumed"] is False
    spent = stack.gateway("POST", f"{ESCALATIONS}/{escalation_id}/consume")
    assert spent.status_code == 200, spent.text
    again = stack.gateway("POST", f"{ESCALATIONS}/{escalation_id}/consume")
    assert again.status_code == 409
    assert stack.server.alive()
    assert stack.server_errors() == []


def _login(stack: Stack) -> requests.Session:
    session = requests.Session()
    page = session.get(f"{stack.url}/login/", timeout=30)
    assert page.status_code == 200, (page.status_code, page.text[:300])
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    signed_in = session.post(f"{stack.url}/login/", timeout=30, data={
        "csrfmiddlewaretoken": csrf, "username": "approver", "password": "tollgate-demo"})
    assert signed_in.status_code == 200, signed_in.text
    return session


def _assert_unavailable(response: requests.Response, *, api: bool) -> None:
    assert response.status_code == 503, (response.status_code, response.text[:500])
    assert int(response.headers["Retry-After"]) > 0
    assert "Traceback" not in response.text and "OperationalError" not in response.text
    if api:
        assert response.json()["code"] == "unavailable"
    else:
        assert response.headers["Content-Type"].startswith("text/html")
        assert "Temporarily unavailable" in response.text


def test_postgres_outage_answers_503_with_retry_after_and_recovers_without_a_restart(running):
    stack = running
    pid = stack.server.proc.pid
    browser = _login(stack)
    inbox = f"{stack.url}/t/acme/approvals/"
    status_report = {"labels": {"id": "outage-test"}, "bundles": {}}

    def check_all_ok() -> None:
        assert browser.get(inbox, timeout=30).status_code == 200
        assert stack.admin_api("GET", "escalations/").status_code == 200
        assert stack.gateway("POST", STATUS, json=status_report).status_code == 204
        assert stack.poll().status == 200

    check_all_ok()
    current = stack.poll().etag

    stack.postgres.stop()

    # A signed-in person's page, the admin API, and gateway calls that need the database.
    _assert_unavailable(browser.get(inbox, timeout=30), api=False)
    csrf = browser.cookies["tollgate_csrf"]
    _assert_unavailable(browser.post(f"{stack.url}/t/acme/approvals/approve-low-risk/",
                                     data={"csrfmiddlewaretoken": csrf}, timeout=30), api=False)
    _assert_unavailable(stack.admin_api("GET", "escalations/"), api=True)
    _assert_unavailable(stack.admin_api("POST", f"escalations/{uuid.uuid4()}/decide/",
                                        json={"outcome": "approve"}), api=True)
    _assert_unavailable(stack.gateway("POST", STATUS, json=status_report), api=True)
    _assert_unavailable(stack.gateway("POST", ESCALATIONS, json=_escalation_body("c-pg")),
                        api=True)
    # A token the hot store does not know must be looked up in the database: 503, not 401.
    unknown = requests.get(f"{stack.url}{BUNDLE}", timeout=30,
                           headers={"Authorization": "Bearer not-a-known-token"})
    _assert_unavailable(unknown, api=True)
    # What the hot store (Redis) and the bundle store can answer is still answered.
    polls = _all_gateways(stack, current, wait=2)
    assert {p.status for p in polls} == {304}
    assert max(p.seconds for p in polls) < 2 + MARGIN
    assert stack.poll().etag == current
    # Liveness does not depend on the database; readiness says it is the database.
    assert requests.get(f"{stack.url}/healthz", timeout=30).status_code == 200
    ready = requests.get(f"{stack.url}/readyz", timeout=30)
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"database": "unreachable", "redis": "ok",
                                      "bundle_store": "ok"}

    stack.postgres.start()

    # The same process (no restart) serves everything again, the same session included.
    check_all_ok()
    assert requests.get(f"{stack.url}/readyz", timeout=30).json()["status"] == "ready"
    assert stack.server.alive() and stack.server.proc.pid == pid
    assert stack.server_errors() == []
