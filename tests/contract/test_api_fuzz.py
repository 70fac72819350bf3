"""Schemathesis fuzzes every operation of the admin API's OpenAPI document (the one
/api/v1/schema/ serves) in-process over WSGI, as each role of tenant alpha, and every operation
of the gateway API's hand-written document (bundles/gateway_openapi.yaml) with a
gateway token of alpha: no 5xx, and every response's status code, content type and body are the
documented ones (errors included).

``make test`` runs FUZZ_EXAMPLES (default 5) generated cases per operation and role;
``FUZZ_EXAMPLES=200 .venv/bin/pytest tests/contract/test_api_fuzz.py`` (``make fuzz``) runs more.
Cases are both valid (positive) and invalid (negative) inputs; the tenant in the path is always
the caller's own, ids are generated (mostly → the documented 404).

A generated id rarely names an object, so every operation on one object (``{id}`` in its path)
is fuzzed again over a tenant holding one of each kind (``fuzz_world``): its ids are drawn from
the objects that exist, as an admin (every write reaches the service) and as a viewer.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.test import Client
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as fuzz_settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from alerts import services as alerts
from approvals import services as approvals
from bundles.publish import bundle_publish
from decision_logs import replay
from evidence import services as evidence
from exports import services as exports
from gateway.receipts import arguments_sha256
from governance.audit.services import Actor
from governance.tenancy import invitations
from governance.tenancy import services as tenancy
from notifications import services as notifications
from registry import gateway_discovery, sync
from registry import services as registry
from scim import services as scim
from tests.bundle_support import SYSTEM, make_gateway, payroll_world
from tests.factories import make_token
from tests.observability_support import event, ingest

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "5"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def _document() -> dict:
    """The document /api/v1/schema/ serves, as JSON (generated without a request or a DB)."""
    generated = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(OpenApiJsonRenderer().render(generated, renderer_context={}))


SCHEMA = schemathesis.openapi.from_dict(_document())
SCHEMA.app = get_wsgi_application()
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
ROLES = ["alice", "bob", "audrey", "dave", "victor"]

GATEWAY_DOCUMENT = (Path(__file__).resolve().parents[2]
                    / "bundles/gateway_openapi.yaml")
GATEWAY_SCHEMA = schemathesis.openapi.from_path(GATEWAY_DOCUMENT)
GATEWAY_SCHEMA.app = SCHEMA.app
GATEWAY_OPERATIONS = [result.ok() for result in GATEWAY_SCHEMA.get_all_operations()]


def test_the_fuzzed_document_is_the_whole_admin_api():
    # A broken or empty document would make every fuzz test below trivially pass.
    assert len(OPERATIONS) > 100
    labels = {op.label for op in OPERATIONS}
    assert "GET /api/v1/t/{tenant_slug}/servers/" in labels
    assert "POST /api/v1/t/{tenant_slug}/grants/" in labels
    # Every route of the gateway API (governance/gateway_urls.py and the apps' parts) is described.
    from governance.gateway_urls import urlpatterns

    routes = [route for part in urlpatterns for route in part.url_patterns]
    assert len(GATEWAY_OPERATIONS) == len(routes) == 9


@contextmanager
def _connection_kept():
    """The real WSGI handler closes the DB connection after each request, which would end the
    test's transaction (on PostgreSQL): keep it open, as Django's test client does (which
    reconnects the handlers after each of its requests: use no test client inside this)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.mark.django_db
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.label)
def test_fuzz_admin_api(operation, role, cast, tenant_a, settings):
    settings.ALLOWED_HOSTS = ["localhost", "testserver"]
    user = cast[role]
    token = make_token(tenant_a, user=user, role=user.memberships.get(tenant=tenant_a).role)[1]
    headers = {"Authorization": f"Bearer {token}"}
    me = Client().get("/api/v1/me/", HTTP_AUTHORIZATION=headers["Authorization"]).json()
    assert me["principal"] == user.username and me["tenants"][0]["slug"] == tenant_a.slug
    with _connection_kept():
        _fuzz(operation, headers, {"tenant_slug": tenant_a.slug})


@pytest.mark.django_db
@pytest.mark.parametrize("operation", GATEWAY_OPERATIONS, ids=lambda op: op.label)
def test_fuzz_gateway_api(operation, tenant_a, settings):
    settings.ALLOWED_HOSTS = ["localhost", "testserver"]
    bundle_publish(tenant=tenant_a, trigger="fuzz")  # so that bundles/alpha has one to serve
    _, token = make_gateway(tenant_a)
    # The token works (else every case would be a documented 401).
    assert Client().get(f"/api/v1/gateway/bundles/{tenant_a.slug}",
                        HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200
    with _connection_kept():
        _fuzz(operation, {"Authorization": f"Bearer {token}"}, {"slug": tenant_a.slug})


ONE_OBJECT = [op for op in OPERATIONS if "{id}" in op.path]


def fuzz_world(tenant, cast) -> None:
    """One object of every kind the admin API addresses by id, made by the real services."""
    alice, dave = cast["alice"], cast["dave"]
    world = payroll_world(tenant, owner=dave)
    scope, bot = world["scope"], world["bot"]
    registry.agent_principal_add(tenant=tenant, actor=SYSTEM, agent=bot,
                                 issuer="https://idp.example", subject="bot")
    approvals.approval_policy_save(tenant=tenant, actor=Actor.user(alice), scope=scope,
                                   decision_hours=8,
                                   stages=[{"approvals_required": 1, "roles": ["approver"]}])
    bundle_publish(tenant=tenant, trigger="fuzz")
    approvals.access_request_create(tenant=tenant, actor=Actor.user(dave), requester=dave,
                                    agent=bot, scope=scope, duration_minutes=60,
                                    justification="month-end run")
    gateway, _ = make_gateway(tenant)
    gateway_discovery.gateway_server_bind(tenant=tenant, actor=SYSTEM, gateway=gateway,
                                          server=world["server"])
    args = {"amount": 1200}
    registry.grant_update(tenant=tenant, actor=SYSTEM, grant=world["grant"],
                          approval_mode="always")
    approvals.escalation_create(tenant=tenant, gateway=gateway, body={
        "call_id": "call-1", "agent": "bot", "server": "payroll", "tool": "pay",
        "arguments": args, "arguments_sha256": arguments_sha256(args), "bundle_revision": 1,
        "reason": "grant requires approval"})
    ingest(tenant, [event("fuzz-1", outcome="allow", agent="bot",
                          at=timezone.now() - timedelta(minutes=1))], gateway)
    tenancy.group_mapping_create(tenant=tenant, actor=SYSTEM, group="payroll-admins",
                                 role="admin")
    invitations.invitation_create(tenant=tenant, actor=SYSTEM, invited_by=alice,
                                  email="new@example.com", role="viewer")
    notifications.channel_create(tenant=tenant, actor=SYSTEM, name="hook", kind="webhook",
                                 url="http://127.0.0.1:9/in", secret="s" * 32)
    notifications.notify(tenant=tenant, event="approval.requested", subject="s", text="t",
                         link=f"/t/{tenant.slug}/approvals/")
    exports.exporter_create(tenant=tenant, actor=SYSTEM, name="file", kind="jsonl",
                            stream="audit", path="audit.jsonl")
    alerts.alert_raise(tenant=tenant, kind="tool_drift", key="tool:1", subject="drift",
                       detail={}, actor=SYSTEM)
    today = timezone.now().date()
    evidence.evidence_pack_request(tenant=tenant, actor=SYSTEM, period_start=today,
                                   period_end=today)
    sync.server_sync_request(tenant=tenant, actor=SYSTEM, server=world["server"])
    replay.replay_request(tenant=tenant, actor=SYSTEM, days=7)
    scim.scim_token_create(tenant=tenant, actor=SYSTEM, created_by=alice, name="okta")
    make_token(tenant, user=alice, role="admin")


def _existing_ids(client: Client, headers: dict[str, str], operation) -> list[str]:
    """The ids the collection above ``operation`` lists (``…/servers/`` for
    ``…/servers/{id}/sync/``)."""
    collection = operation.path.split("{id}")[0].replace("{tenant_slug}", "alpha")
    response = client.get(collection, HTTP_AUTHORIZATION=headers["Authorization"])
    assert response.status_code == 200, collection
    body = response.json()
    rows = body["results"] if isinstance(body, dict) else body
    return [str(row["id"]) for row in rows]


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["alice", "victor"])
@pytest.mark.parametrize("operation", ONE_OBJECT, ids=lambda op: op.label)
def test_fuzz_admin_api_on_existing_objects(operation, role, cast, tenant_a, settings,
                                             tmp_path):
    settings.ALLOWED_HOSTS = ["localhost", "testserver"]
    settings.EXPORT_FILE_DIR = tmp_path
    fuzz_world(tenant_a, cast)
    admin_token = make_token(tenant_a, user=cast["alice"], role="admin")[1]
    ids = _existing_ids(Client(), {"Authorization": f"Bearer {admin_token}"}, operation)
    assert ids, f"fuzz_world makes no object for {operation.label}"
    user = cast[role]
    token = make_token(tenant_a, user=user, role=user.memberships.get(tenant=tenant_a).role)[1]
    with _connection_kept():
        _fuzz(operation, {"Authorization": f"Bearer {token}"}, {"tenant_slug": tenant_a.slug},
              ids={"id": ids})


def _fuzz(operation, headers: dict[str, str], path: dict[str, str],
          ids: dict[str, list[str]] | None = None) -> None:
    """FUZZ_EXAMPLES positive and negative cases of ``operation``, the path's tenant fixed;
    ``ids`` replaces the generated path parameter with one drawn from the listed values."""
    strategy = operation.as_strategy(generation_mode=GenerationMode.POSITIVE) | (
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    pinned = st.fixed_dictionaries({name: st.sampled_from(values)
                                    for name, values in (ids or {}).items()})

    @fuzz_settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=EXAMPLES <= 20,
                   phases=[Phase.explicit, Phase.generate, Phase.shrink],
                   suppress_health_check=list(HealthCheck))
    @given(case=strategy, existing=pinned)
    def fuzz(case, existing):
        for name, value in {**path, **existing}.items():
            if case.path_parameters is not None and name in case.path_parameters:
                case.path_parameters[name] = value
        response = case.call(headers=headers)
        case.validate_response(response, checks=CHECKS, headers=headers)

    fuzz()


# What the fuzzing found, pinned (these once answered 500, or 400 for a malformed id).
@pytest.mark.parametrize("url", [
    "/api/v1/t/alpha/grants/?scope=99343472152019828736",
    "/api/v1/t/alpha/tools/?server=-259121705145617017494044672",
    "/api/v1/t/alpha/access-requests/?agent=0",
])
def test_ids_beyond_the_database_range_are_a_400(admin, url):
    response = admin.get(url)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"


def test_an_id_beyond_the_database_range_in_a_body_is_a_400(admin):
    response = admin.post("/api/v1/t/alpha/scopes/", {"name": "s", "tools": [2**70]},
                          format="json")
    assert response.status_code == 400
    assert "tools" in response.json()["errors"]


def test_a_malformed_escalation_id_is_a_404(admin):
    response = admin.get("/api/v1/t/alpha/escalations/000000000000000000000000000000000000/")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_a_status_report_with_a_nul_character_is_a_400(tenant_a, client):
    # PostgreSQL's jsonb refuses NUL: this was a 500 there.
    _, token = make_gateway(tenant_a)
    response = client.post("/api/v1/gateway/status", data='{"labels": {"id": "a\\u0000b"}}',
                           content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"


def test_json_nested_too_deeply_is_a_400(tenant_a, client, admin):
    # Python's json parser raises RecursionError (not ValueError): this was a 500 on both APIs.
    body = "[" * 100_000
    _, token = make_gateway(tenant_a)
    response = client.post("/api/v1/gateway/status", data=body, content_type="application/json",
                           HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 400
    response = admin.generic("POST", "/api/v1/t/alpha/scopes/", body,
                             content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"
