"""Operator commands: create_tenant, seed_demo."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from governance.audit.models import AuditEvent
from governance.tenancy.models import IdpGroupMapping, Membership, Tenant
from tests.factories import UserFactory


def test_create_tenant_with_an_admin_group_and_user(db):
    UserFactory(username="root")
    out = io.StringIO()
    call_command("create_tenant", "initech", "Initech", "--admin-group", "it-admins",
                 "--admin-user", "root", stdout=out)
    tenant = Tenant.objects.get(slug="initech")
    assert IdpGroupMapping.objects.get(tenant=tenant).role == "admin"
    assert Membership.objects.get(tenant=tenant).user.username == "root"
    assert list(AuditEvent.objects.filter(tenant=tenant).order_by("seq")
                .values_list("action", flat=True)) == [
        "tenant.created", "group_mapping.created", "membership.created"]
    assert "Created tenant 'initech'" in out.getvalue()


def test_create_tenant_refuses_what_would_leave_it_unmanaged_or_clash(db):
    with pytest.raises(CommandError, match="at least one --admin-group or --admin-user"):
        call_command("create_tenant", "x", "X")
    with pytest.raises(CommandError, match="No active user 'ghost'"):
        call_command("create_tenant", "x", "X", "--admin-user", "ghost")
    assert not Tenant.objects.filter(slug="x").exists()  # nothing half-created
    with pytest.raises(CommandError, match="Use 1–50 lowercase"):
        call_command("create_tenant", "Not A Slug", "X", "--admin-group", "g")
    call_command("create_tenant", "x", "X", "--admin-group", "g", stdout=io.StringIO())
    with pytest.raises(CommandError, match="already exists"):
        call_command("create_tenant", "x", "X", "--admin-group", "g")


def test_seed_demo_is_idempotent_and_refuses_production(db, settings, tmp_path):
    settings.DEBUG = True
    settings.VAR_DIR = tmp_path
    call_command("seed_demo", stdout=io.StringIO())
    call_command("seed_demo", stdout=io.StringIO())
    acme = Tenant.objects.get(slug="acme")
    assert Membership.objects.for_tenant(acme).count() == 5
    assert Membership.objects.get(tenant__slug="globex").user.username == "admin"
    # The demo registry: demo/hr_server.py over stdio, fronted by the demo gateway, whose
    # report of its tools is recorded (make run's gateway reports them again as it starts).
    from registry.models import Grant, McpServer, Tool

    server = McpServer.objects.get(tenant=acme, name="acme-hr")
    assert server.latest_sync.status == "succeeded"
    assert (server.latest_sync.trigger, server.latest_sync.gateway.name) == (
        "gateway", "demo-gateway")
    assert [g.name for g in server.gateways.all()] == ["demo-gateway"]
    assert dict(Tool.objects.filter(server=server).values_list("name", "status")) == {
        "lookup_employee": "approved", "get_salary": "approved", "adjust_salary": "pending_review"
    }
    grant = Grant.objects.get(tenant=acme)
    assert (grant.agent.name, grant.scope.name, grant.agent.owner.username) == (
        "hr-assistant", "hr:read", "developer")
    # …and a gateway whose token (kept private in var/) pulls the published, signed bundle.
    from django.test import Client

    from bundles.models import Gateway
    from bundles.selectors import jwks
    from gateway.verify import verify_bundle

    token_file = tmp_path / "demo-gateway-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    response = Client().get("/api/v1/gateway/bundles/acme",
                            HTTP_AUTHORIZATION=f"Bearer {token_file.read_text().strip()}")
    assert response.status_code == 200
    verified = verify_bundle(response.content, jwks=jwks(acme.pk), tenant="acme")
    assert verified.revision_number == 1  # the second seed found nothing new to publish
    assert sorted(verified.data["agents"]) == ["hr-assistant"]
    # A day of decisions, made by the real decision function over that bundle, seeded once.
    from decision_logs.models import DecisionLog, DecisionRollup

    log = DecisionLog.objects.for_tenant(acme)
    assert log.count() == 600
    outcomes = {(row.tool, row.agent, row.outcome) for row in log}
    assert ("lookup_employee", "hr-assistant", "allow") in outcomes
    assert ("adjust_salary", "hr-assistant", "deny") in outcomes  # not reviewed: not approved
    assert ("get_salary", "", "deny") in outcomes  # an unknown principal
    assert log.filter(outcome="allow").exclude(grant_id=grant.pk).count() == 0
    assert sum(DecisionRollup.objects.filter(tenant=acme).values_list("count", flat=True)) == 600
    # var/ cleaned: the next seed gives the demo gateway a fresh token (the old one still works
    # until revoked), so `make run` can start its gateway again.
    token_file.unlink()
    call_command("seed_demo", stdout=io.StringIO())
    fresh = token_file.read_text().strip()
    assert Client().get("/api/v1/gateway/bundles/acme",
                        HTTP_AUTHORIZATION=f"Bearer {fresh}").status_code == 200
    assert Gateway.objects.get(tenant=acme, name="demo-gateway").tokens.count() == 2
    settings.DEBUG = False
    with pytest.raises(CommandError, match="Refusing to create demo users"):
        call_command("seed_demo")


def test_models_and_migrations_agree(db):
    call_command("makemigrations", "--check", "--dry-run", stdout=io.StringIO())
