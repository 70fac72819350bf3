"""End to end, the human in the loop on real MCP traffic: the control plane (live server and a
real Celery worker, hence PostgreSQL) with the demo tenant, ``python -m gateway run`` as its own
process in front of the demo's stdio MCP server, an agent using the official MCP SDK client, and
an approver in Chromium.

The agent's ``adjust_salary`` call needs approval. The gateway holds it and asks; the approver
approves it from the inbox; the call goes through once, and the decision log shows both
decisions. The next identical call is a new request: the approver denies it with a reason, and
the agent gets a tool error saying why."""

from __future__ import annotations

import io
import json
import threading
from typing import Any

import pytest
from django.core.management import call_command

from approvals.models import Escalation
from decision_logs.models import DecisionLog
from governance.audit.services import Actor
from governance.tenancy.models import Tenant
from registry import services as registry
from registry.models import Agent, McpServer, Tool
from tests.gateway_support import AGENT_TOKEN, await_bundle, grant_of, start_gateway
from tests.mcp_support import as_agent
from tests.ui_support import expect_heading, sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
SYSTEM = Actor.system("test")
RAISE = {"employee_id": "E101", "delta_usd": 2500, "reason": "promotion"}


def _grant_adjust_salary_with_approval(acme: Tenant) -> None:
    """adjust_salary reviewed and approved, in scope hr:write, granted to hr-assistant with
    approval always (the worker publishes the bundle)."""
    server = McpServer.objects.get(tenant=acme, name="acme-hr")
    tool = Tool.objects.get(server=server, name="adjust_salary")
    if tool.status != "approved":
        registry.tool_approve(tenant=acme, actor=SYSTEM, tool=tool)
    scope = registry.scope_create(tenant=acme, actor=SYSTEM, name="hr:write", tools=[tool])
    registry.grant_create(tenant=acme, actor=SYSTEM, agent=Agent.objects.get(
        tenant=acme, name="hr-assistant"), scope=scope, approval_mode="always")


def _call_in_background(url: str) -> tuple[threading.Thread, dict[str, Any]]:
    answer: dict[str, Any] = {}

    def run() -> None:
        async def work(session):
            return await session.call_tool("adjust_salary", RAISE)
        try:
            answer["result"] = as_agent(url, AGENT_TOKEN, work)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            answer["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, answer


def _text(result) -> str:
    return " ".join(getattr(part, "text", "") for part in result.content)


def test_an_approver_in_the_browser_lets_a_held_call_through_once_then_denies_the_next(
        live_server, settings, tmp_path, ui, celery_worker_process):
    settings.DEBUG = True
    settings.VAR_DIR = tmp_path
    call_command("seed_demo", stdout=io.StringIO())
    celery_worker_process()  # publishes the bundles and sends the approvers' notifications
    acme = Tenant.objects.get(slug="acme")
    gw = start_gateway(live_server.url, tmp_path, token_file=tmp_path / "demo-gateway-token",
                       extra=["--max-hold", "120"])
    try:
        _grant_adjust_salary_with_approval(acme)
        await_bundle(gw, acme, lambda data: grant_of(data, "hr-assistant", "hr:write"),
                     "the bundle granting hr:write with approval")

        # 1. The agent's call is held; the approver approves it in the browser.
        thread, answer = _call_in_background(gw.url)
        escalation = gw.wait_for(lambda: Escalation.objects.filter(tenant=acme).first(),
                                 "the gateway's escalation")
        assert (escalation.tool, escalation.arguments, escalation.agent.name) == (
            "adjust_salary", RAISE, "hr-assistant")
        sign_in(ui, "approver", "tollgate-demo", landing=ui.url("/t/acme/"))
        page = ui.page
        page.goto(ui.url("/t/acme/approvals/"))
        expect_heading(page, "Approvals")
        row = page.locator(f"#escalation-{escalation.pk}")
        assert "acme-hr/adjust_salary" in row.inner_text() and "E101" in row.inner_text()
        row.get_by_role("button", name="Approve").click()
        row.get_by_text("the gateway may now run adjust_salary once").wait_for()
        thread.join(timeout=60)
        assert not thread.is_alive() and "error" not in answer, answer
        result = answer["result"]
        assert not result.is_error, _text(result)
        assert "E101" in json.dumps(result.model_dump(mode="json"))
        escalation.refresh_from_db()
        assert escalation.status == "approved" and escalation.consumed_at is not None

        # 2. The same call again is a new request; this time the approver denies it.
        thread, answer = _call_in_background(gw.url)
        second = gw.wait_for(lambda: Escalation.objects.filter(tenant=acme).exclude(
            pk=escalation.pk).first(), "the second escalation")
        page.goto(ui.url("/t/acme/approvals/"))
        row = page.locator(f"#escalation-{second.pk}")
        row.get_by_label("Reason").fill("raises wait for the review cycle")
        row.get_by_role("button", name="Deny").click()
        thread.join(timeout=60)
        assert not thread.is_alive() and "error" not in answer, answer
        denied = answer["result"]
        assert denied.is_error
        assert "approval denied: raises wait for the review cycle" in _text(denied)
        second.refresh_from_db()
        assert second.status == "denied" and second.consumed_at is None

        # Every decision reaches the control plane's log, tied to its escalation.
        def logged() -> list[tuple[str, str]]:
            rows = DecisionLog.objects.filter(tool="adjust_salary").exclude(
                decision_id__startswith="demo-")
            found = sorted((r.outcome, str(r.escalation_id)) for r in rows)
            return found if len(found) == 4 else []

        assert gw.wait_for(logged, "the decision-log upload") == sorted([
            ("escalate", str(escalation.pk)), ("allow", str(escalation.pk)),
            ("escalate", str(second.pk)), ("deny", str(second.pk))])
        ui.assert_no_browser_problems()
    finally:
        gw.stop()
