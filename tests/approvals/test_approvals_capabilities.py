"""Approvals decide who may do what by capabilities (governance/tenancy/roles.py), as every other
app does, never by comparing role names; and "who may act for this agent" is one rule
(registry/access.py) for the registry, the request form and the request service.

The capability tests change what a role carries (``ROLE_CAPABILITIES``) and check that the
approvals pages and services follow: a role comparison would not."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from guardian.shortcuts import assign_perm

from approvals import services
from approvals.forms import RequestForm
from approvals.models import AccessRequest
from governance.tenancy.access import resolve_for_user
from governance.tenancy.roles import ROLE_CAPABILITIES, Cap, Role, roles_with
from notifications import services as notifications
from notifications.models import Delivery
from registry import services as registry
from registry.access import can_manage_agent, manageable_agents
from registry.models import Agent, Grant
from registry.services import AGENT_PERMISSION
from tests.bundle_support import SYSTEM

BREAK_GLASS_URL = "/t/alpha/approvals/break-glass/"


def _give(monkeypatch, role: str, *caps: Cap) -> None:
    monkeypatch.setitem(ROLE_CAPABILITIES, role, ROLE_CAPABILITIES[role] | set(caps))


def _take(monkeypatch, role: str, *caps: Cap) -> None:
    monkeypatch.setitem(ROLE_CAPABILITIES, role, ROLE_CAPABILITIES[role] - set(caps))


def _request(tenant, world, requester):
    return services.access_request_create(
        tenant=tenant, actor=SYSTEM, requester=requester, agent=world["bot"],
        scope=world["scope"], duration_minutes=60, justification="month-end payroll run")


def test_only_admins_break_the_glass():
    assert roles_with(Cap.BREAK_GLASS) == [Role.ADMIN]
    assert roles_with(Cap.DECIDE_APPROVALS) == [Role.ADMIN, Role.APPROVER]


def test_break_glass_follows_its_capability(tenant_a, world, cast, login, as_user,
                                            monkeypatch):
    notifications.channel_create(tenant=tenant_a, actor=SYSTEM, name="admins", kind="email",
                                 to_recipients=True, events=["break_glass.used"])
    _give(monkeypatch, Role.VIEWER, Cap.BREAK_GLASS)
    body = {"agent": world["bot"].pk, "scope": world["scope"].pk, "minutes": 5,
            "justification": "incident 7"}
    response = login(cast["victor"]).post(BREAK_GLASS_URL, body)
    assert response.status_code == 302 and response["Location"] == BREAK_GLASS_URL
    grant = Grant.objects.get(break_glass=True)
    assert grant.created_by == cast["victor"]
    # Everyone who may break the glass is alerted.
    delivery = Delivery.objects.get(event="break_glass.used")
    assert sorted(delivery.payload["recipients"]) == ["alice@example.com", "victor@example.com"]
    assert as_user(cast["victor"]).get("/api/v1/t/alpha/break-glass/").status_code == 200

    _take(monkeypatch, Role.ADMIN, Cap.BREAK_GLASS)
    assert login(cast["alice"]).post(BREAK_GLASS_URL, body).status_code == 403
    assert as_user(cast["alice"]).get("/api/v1/t/alpha/break-glass/").status_code == 403
    with pytest.raises(ValidationError, match="Only an admin can break the glass."):
        services.break_glass_grant(tenant=tenant_a, actor=SYSTEM, admin=cast["alice"],
                                   agent=world["bot"], scope=world["scope"],
                                   justification="incident 8", minutes=5)
    assert Grant.objects.filter(break_glass=True).count() == 1


def test_requesting_for_an_agent_follows_the_capabilities(tenant_a, world, cast, monkeypatch):
    victor = cast["victor"]
    assign_perm(AGENT_PERMISSION, victor, world["bot"])
    with pytest.raises(ValidationError, match="Only the agent's owner or an admin"):
        _request(tenant_a, world, victor)
    _give(monkeypatch, Role.VIEWER, Cap.OWN_AGENTS, Cap.REQUEST_ACCESS)
    form = RequestForm(ctx=resolve_for_user(victor, "alpha"))
    assert list(form.fields["agent"].queryset) == [world["bot"]]
    assert _request(tenant_a, world, victor).requester == victor


def test_cancelling_anothers_request_follows_the_capability(tenant_a, world, cast,
                                                            monkeypatch):
    request = _request(tenant_a, world, cast["dave"])
    with pytest.raises(ValidationError, match="Only the requester or an admin"):
        services.access_request_cancel(tenant=tenant_a, actor=SYSTEM, request=request,
                                       by=cast["bob"])
    _give(monkeypatch, Role.APPROVER, Cap.MANAGE_REGISTRY)
    outcome = services.access_request_cancel(tenant=tenant_a, actor=SYSTEM, request=request,
                                             by=cast["bob"])
    assert outcome.message == "Cancelled." and outcome.request.status == "cancelled"


def test_seeing_every_request_follows_the_capabilities(tenant_a, world, cast, login,
                                                       monkeypatch):
    request = _request(tenant_a, world, cast["dave"])
    url = f"/t/alpha/approvals/requests/{request.pk}/"
    assert login(cast["audrey"]).get(url).status_code == 200
    assert login(cast["victor"]).get(url).status_code == 403
    _take(monkeypatch, Role.AUDITOR, Cap.VIEW_AUDIT)
    _give(monkeypatch, Role.VIEWER, Cap.VIEW_AUDIT)
    assert login(cast["audrey"]).get(url).status_code == 403
    assert login(cast["victor"]).get(url).status_code == 200


def test_one_rule_says_who_acts_for_an_agent(tenant_a, world, cast):
    spare = registry.agent_create(tenant=tenant_a, actor=SYSTEM, name="spare", owner=None)
    agents = Agent.objects.for_tenant(tenant_a).order_by("name")
    expected = {"alice": ["bot", "spare"], "dave": ["bot"], "bob": [], "audrey": [],
                "victor": []}
    for name, names in expected.items():
        ctx = resolve_for_user(cast[name], "alpha")
        assert [a.name for a in manageable_agents(ctx, agents)] == names, name
        assert [a.name for a in agents if can_manage_agent(ctx, a)] == names, name
        offered = RequestForm(ctx=ctx).fields["agent"].queryset
        assert [a.name for a in offered] == names, name
        for agent in (world["bot"], spare):
            if agent.name in names:
                made = services.access_request_create(
                    tenant=tenant_a, actor=SYSTEM, requester=cast[name], agent=agent,
                    scope=world["scope"], duration_minutes=5, justification="test")
                services.access_request_cancel(tenant=tenant_a, actor=SYSTEM, request=made,
                                               by=cast[name])
            else:
                with pytest.raises(ValidationError, match="owner or an admin"):
                    services.access_request_create(
                        tenant=tenant_a, actor=SYSTEM, requester=cast[name], agent=agent,
                        scope=world["scope"], duration_minutes=5, justification="test")
    assert AccessRequest.objects.filter(status="cancelled").count() == 3
