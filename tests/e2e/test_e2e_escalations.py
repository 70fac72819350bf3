"""End to end: the human in the loop for one tool call. A gateway-side client (plain HTTP, in a
thread, as a gateway would) holds a call, creates an escalation and long-polls it; an approver
approves it in Chromium from the inbox; the client receives the signed receipt, verifies it
against the tenant's JWKS, and consumes it exactly once."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from approvals.models import Escalation
from gateway.receipts import arguments_sha256, verify_receipt
from governance.audit.models import AuditEvent
from registry import services as registry
from tests.bundle_support import SYSTEM, make_gateway, payroll_world
from tests.ui_support import expect_heading, sign_in

pytestmark = pytest.mark.e2e

ARGS = {"employee": "e-17", "amount": 1200}


def _http(method: str, url: str, token: str, body: dict | None = None,
          headers: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    # http://127.0.0.1 only (the live server), hence the S310 exemptions.
    request = urllib.request.Request(url, data=data, method=method, headers={  # noqa: S310
        "Authorization": f"Bearer {token}", "Content-Type": "application/json",
        **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=90) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_a_held_call_is_approved_in_the_browser_and_its_receipt_spent_once(
        ui, base_url, tenant_a, cast):
    world = payroll_world(tenant_a, owner=cast["dave"])
    registry.grant_update(tenant=tenant_a, actor=SYSTEM, grant=world["grant"],
                          approval_mode="always")
    _, token = make_gateway(tenant_a)
    api = f"{base_url}/api/v1/gateway"

    # The gateway holds the agent's call and asks.
    status, created = _http("POST", f"{api}/escalations", token, {
        "call_id": "call-e2e", "agent": "bot", "server": "payroll", "tool": "pay",
        "arguments": ARGS, "arguments_sha256": arguments_sha256(ARGS), "bundle_revision": 1,
        "reason": "grant requires approval (always)"})
    assert status == 201 and created["status"] == "pending"
    answer: dict = {}

    def long_poll() -> None:
        answer["status"], answer["body"] = _http(
            "GET", f"{api}/escalations/{created['id']}", token, headers={"Prefer": "wait=60"})

    poller = threading.Thread(target=long_poll)
    poller.start()

    # Meanwhile an approver decides in the browser, from the inbox.
    sign_in(ui, "bob")
    page = ui.page
    page.goto(ui.url(f"/t/{tenant_a.slug}/approvals/"))
    expect_heading(page, "Approvals")
    row = page.locator(f"#escalation-{created['id']}")
    assert "payroll/pay" in row.inner_text() and "e-17" in row.inner_text()
    row.get_by_role("button", name="Approve").click()
    page.locator(f"#escalation-{created['id']}").get_by_text(
        "the gateway may now run pay once").wait_for()

    poller.join(timeout=90)
    assert not poller.is_alive()
    assert answer["status"] == 200 and answer["body"]["status"] == "approved", answer
    status, jwks = _http("GET", f"{api}/keys/{tenant_a.slug}", token)
    assert status == 200
    claims = verify_receipt(answer["body"]["receipt"], jwks, tenant=tenant_a.slug,
                            escalation_id=created["id"], agent="bot", tool="pay",
                            server="payroll", arguments_hash=arguments_sha256(ARGS))
    assert claims["sub"] == created["id"]

    # The gateway forwards the call once: the first consume wins, a replay is refused.
    first, _ = _http("POST", f"{api}/escalations/{created['id']}/consume", token)
    second, refused = _http("POST", f"{api}/escalations/{created['id']}/consume", token)
    assert (first, second) == (200, 409), refused
    escalation = Escalation.objects.get(pk=created["id"])
    assert escalation.status == "approved" and escalation.consumed_at is not None
    assert AuditEvent.objects.filter(action="escalation.consumed").count() == 1
    ui.assert_no_browser_problems()
