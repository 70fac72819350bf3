"""Notifications a person can act on: every channel (e-mail, Slack, webhook) carries who asks,
why, for which agent and scope or tool, the risk, the deadline and the link, built once by
``notify``; and every event the notifier sends links to an existing page that opens."""

from __future__ import annotations

import json
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.urls import resolve

from approvals import services as approvals
from approvals.models import Escalation
from gateway.receipts import arguments_sha256
from notifications import services
from notifications.models import EVENTS, Delivery
from registry import services as registry
from tests.bundle_support import SYSTEM, make_gateway, payroll_world
from tests.notifications.test_notifications import SECRET, deliver, receiver  # noqa: F401

ARGS = {"employee": "e-17", "amount": 1200}
JUSTIFICATION = "Month-end payroll run; ticket CHG-42 <urgent> & approved by finance"


@pytest.fixture
def world(tenant_a, dave):
    world = payroll_world(tenant_a, owner=dave)
    scope = world["scope"]
    scope.risk_level, scope.data_classes = "high", ["PII", "financial"]
    scope.save(update_fields=["risk_level", "data_classes"])
    return world


def _request(tenant, world, dave):
    return approvals.access_request_create(
        tenant=tenant, actor=SYSTEM, requester=dave, agent=world["bot"], scope=world["scope"],
        duration_minutes=120, justification=JUSTIFICATION)


def _escalate(token, call_id="call-1"):
    body = {"call_id": call_id, "agent": "bot", "server": "payroll", "tool": "pay",
            "arguments": ARGS, "arguments_sha256": arguments_sha256(ARGS),
            "bundle_revision": 3, "reason": "refund above 1000 needs a human"}
    return Client().post("/api/v1/gateway/escalations", data=json.dumps(body),
                         content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")


def test_every_channel_carries_what_an_approver_triages_by(
        tenant_a, world, dave, bob, receiver, mailoutbox,  # noqa: F811
        django_capture_on_commit_callbacks):
    services.channel_create(tenant=tenant_a, actor=SYSTEM, name="mail", kind="email",
                            to_recipients=True, events=["approval.requested"])
    services.channel_create(tenant=tenant_a, actor=SYSTEM, name="#approvals", kind="slack",
                            url=receiver.url("/slack"), events=["approval.requested"])
    services.channel_create(tenant=tenant_a, actor=SYSTEM, name="hook", kind="webhook",
                            url=receiver.url("/hook"), secret=SECRET,
                            events=["approval.requested"])
    with django_capture_on_commit_callbacks(execute=False):
        request = _request(tenant_a, world, dave)
    deliveries = Delivery.objects.filter(event="approval.requested").order_by("pk")
    assert [deliver(d).status for d in deliveries] == ["sent"] * 3

    link = f"{django_settings.TOLLGATE_BASE_URL}/t/alpha/approvals/requests/{request.pk}/"
    deadline = f"{request.deadline:%Y-%m-%d %H:%M} UTC"
    expected = ["dave", JUSTIFICATION, "bot", "payroll:write", "payroll/pay", "High risk",
                "PII, financial", "2 h", deadline, link]

    [mail] = mailoutbox
    assert mail.to == ["bob@example.com"]
    for text in expected:
        assert text in mail.body, text
    assert f"Requester: dave (dave@example.com)\nJustification: {JUSTIFICATION}" in mail.body
    assert f"Deadline: {deadline}" in mail.body and mail.body.endswith(link)

    slack = json.loads(next(r for r in receiver.requests if r["path"] == "/slack")["body"])
    escaped = [t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
               for t in expected]
    fields = "\n".join(f["text"] for block in slack["blocks"] if "fields" in block
                       for f in block["fields"])
    for text in escaped[:-1]:
        assert text in fields, text
        assert text in slack["text"], text  # the fallback (phone notifications) too
    assert any(block.get("type") == "actions" and block["elements"][0]["url"] == link
               for block in slack["blocks"])

    hook = json.loads(next(r for r in receiver.requests if r["path"] == "/hook")["body"])
    facts = {f["label"]: f["value"] for f in hook["facts"]}
    assert facts["Requester"] == "dave (dave@example.com)"
    assert facts["Justification"] == JUSTIFICATION
    assert facts["Agent"] == "bot (owner dave)" or facts["Agent"].startswith("bot (")
    assert (facts["Scope"], facts["Deadline"]) == ("payroll:write", deadline)
    assert facts["Risk"] == "High risk; data classes: PII, financial"
    assert hook["link"] == link
    assert hook["text"] == (f"dave asks for scope payroll:write (high risk) for agent bot for "
                            f"2 h; decide by {deadline}.")
    data = hook["data"]
    assert (data["requester"], data["justification"], data["agent"], data["scope"],
            data["risk_level"], data["data_classes"]) == (
        "dave", JUSTIFICATION, "bot", "payroll:write", "high", ["PII", "financial"])


def test_an_escalation_names_the_tool_the_gateway_and_its_reason(tenant_a, world, bob):
    registry.grant_update(tenant=tenant_a, actor=SYSTEM, grant=world["grant"],
                          approval_mode="always")
    services.channel_create(tenant=tenant_a, actor=SYSTEM, name="mail", kind="email",
                            addresses=["oncall@example.com"])
    _, token = make_gateway(tenant_a)
    assert _escalate(token).status_code == 201
    delivery = Delivery.objects.get(event="escalation.created")
    facts = dict(delivery.payload["facts"])
    assert facts["Requester"] == "gateway edge-1, for agent bot"
    assert facts["Justification"] == "refund above 1000 needs a human"
    assert facts["Tool"] == "payroll/pay" and facts["Scope"] == "payroll:write"
    assert facts["Risk"] == "High risk; data classes: PII, financial"
    escalation = Escalation.objects.get()
    assert facts["Deadline"] == f"{escalation.deadline:%Y-%m-%d %H:%M} UTC"
    assert delivery.payload["link"] == (
        f"{django_settings.TOLLGATE_BASE_URL}/t/alpha/approvals/escalations/{escalation.pk}/")


def test_every_event_the_notifier_sends_links_to_a_page_that_opens(
        tenant_a, world, alice, bob, dave, settings, login):
    """Each event produced by the real services that send it; its link is absolute (the base
    URL setting), resolves to a URL pattern, and the page opens for an admin."""
    settings.TOLLGATE_BASE_URL = "https://tollgate.example.com"
    settings.ESCALATION_RATE_LIMIT_PER_MINUTE = 1
    channel = services.channel_create(tenant=tenant_a, actor=SYSTEM, name="everything",
                                      kind="email", addresses=["ops@example.com"])
    registry.grant_update(tenant=tenant_a, actor=SYSTEM, grant=world["grant"],
                          approval_mode="always")
    _, token = make_gateway(tenant_a)

    request = _request(tenant_a, world, dave)  # approval.requested
    assert _escalate(token).status_code == 201  # escalation.created
    assert _escalate(token, "call-2").status_code == 429  # escalation.flood
    assert approvals.reminders_due(now=request.deadline - timedelta(seconds=1)) == 1
    approvals.access_request_decide(tenant=tenant_a, actor=SYSTEM, request=request,
                                    approver=bob, outcome="approve")  # approval.decided
    approvals.escalation_decide(tenant=tenant_a, actor=SYSTEM, escalation=Escalation.objects
                                .get(), approver=bob, outcome="deny", reason="not now")
    approvals.break_glass_grant(tenant=tenant_a, actor=SYSTEM, admin=alice, agent=world["bot"],
                                scope=world["scope"], justification="incident 7",
                                minutes=15)  # break_glass.used and alert.raised
    services.channel_test(tenant=tenant_a, actor=SYSTEM, channel=channel)

    sent = {d.event: d for d in Delivery.objects.filter(tenant=tenant_a)}
    assert set(sent) == set(EVENTS)
    client = login(alice)
    for event, delivery in sorted(sent.items()):
        link = delivery.payload["link"]
        assert link.startswith("https://tollgate.example.com/t/alpha/"), (event, link)
        path = urlsplit(link).path
        resolve(path)  # an existing URL pattern (Resolver404 otherwise)
        assert client.get(path).status_code == 200, (event, path)
        assert link in services.senders.email_body(delivery)


def test_notify_refuses_an_event_without_a_link(tenant_a):
    with pytest.raises(ValueError, match="needs the link"):
        services.notify(tenant=tenant_a, event="break_glass.used", subject="s", text="t",
                        link="")


def test_break_glass_names_the_admin_the_reason_and_the_grant(tenant_a, world, alice):
    services.channel_create(tenant=tenant_a, actor=SYSTEM, name="mail", kind="email",
                            to_recipients=True, events=["break_glass.used"])
    grant = approvals.break_glass_grant(tenant=tenant_a, actor=SYSTEM, admin=alice,
                                        agent=world["bot"], scope=world["scope"],
                                        justification="incident 7: payroll stuck", minutes=30)
    delivery = Delivery.objects.get(event="break_glass.used")
    facts = dict(delivery.payload["facts"])
    assert facts["Requester"] == "alice (alice@example.com)"
    assert facts["Justification"] == "incident 7: payroll stuck"
    assert facts["Risk"] == "High risk; data classes: PII, financial"
    assert facts["Access for"] == "30 min"
    assert facts["Expires"] == f"{grant.expires_at:%Y-%m-%d %H:%M} UTC"
    assert delivery.payload["link"] == (
        f"{django_settings.TOLLGATE_BASE_URL}/t/alpha/grants/{grant.pk}/")
