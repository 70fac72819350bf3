"""The factories (tests/factories.py) build through the services: each object comes with the
audit events the product records for it, in the services' order, and its status is reached by
the transitions a person would make."""

from __future__ import annotations

import pytest

from bundles.models import GatewayToken
from governance.tenancy.models import hash_token
from registry.models import Tool
from tests.factories import (
    AgentFactory,
    GatewayFactory,
    GrantFactory,
    ServerFactory,
    ToolFactory,
    actions,
)

pytestmark = pytest.mark.django_db


def test_a_tool_at_a_time_lists_the_others_unchanged(tenant_a):
    server = ServerFactory(tenant=tenant_a, name="payroll")
    pay = ToolFactory(server=server, name="pay")
    wipe = ToolFactory(server=server, name="wipe", status="blocked")
    draft = ToolFactory(server=server, name="draft", status="pending_review")
    assert actions(tenant_a, 7) == [
        ("server.created", "system"), ("server.active", "system"),
        ("tool.discovered", "system"), ("tool.approved", "system"),
        ("tool.discovered", "system"), ("tool.blocked", "system"),
        ("tool.discovered", "system")]
    assert [(t.name, t.status, t.present) for t in Tool.objects.filter(server=server)] == [
        ("draft", "pending_review", True), ("pay", "approved", True), ("wipe", "blocked", True)]
    assert {pay.pk, wipe.pk, draft.pk} == set(Tool.objects.values_list("pk", flat=True))


def test_a_grant_alone_makes_its_agent_and_scope_in_its_tenant(tenant_a):
    grant = GrantFactory(tenant=tenant_a, calls_per_minute=3)
    assert (grant.agent.tenant, grant.scope.tenant, grant.calls_per_minute) == (
        tenant_a, tenant_a, 3)
    assert actions(tenant_a, 3) == [("agent.created", "system"), ("scope.created", "system"),
                                    ("grant.created", "system")]


def test_statuses_are_reached_through_the_transitions(tenant_a):
    server = ServerFactory(tenant=tenant_a, status="suspended")
    agent = AgentFactory(tenant=tenant_a, principals=["bot", ("https://mesh", "bot")],
                         status="suspended")
    assert (server.status, agent.status, agent.principals.count()) == ("suspended",
                                                                       "suspended", 2)
    assert [a for a, _ in actions(tenant_a, 7)] == [
        "server.created", "server.active", "server.suspended", "agent.created",
        "agent.principal_added", "agent.principal_added", "agent.suspended"]


def test_a_gateway_comes_with_a_working_token_unless_asked_not_to(tenant_a):
    gateway = GatewayFactory(tenant=tenant_a)
    token = GatewayToken.objects.get(token_hash=hash_token(gateway.plaintext_token))
    assert token.gateway == gateway
    assert GatewayFactory(tenant=tenant_a, token=None).plaintext_token is None
    assert [a for a, _ in actions(tenant_a, 3)] == [
        "gateway.created", "gateway.token_issued", "gateway.created"]
