"""Notifications a person can act on: every event the notifier sends links to an existing page
that opens."""

from __future__ import annotations

import json
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
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
