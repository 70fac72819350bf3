"""Registry REST API (/api/v1/t/<tenant>/…): servers, syncs, tools, scopes, agents, principals,
grants — per role, with exact errors, audit events and constant query counts.

The tenancy contract (anonymous 401, outsider 404, other tenant's object 404, missing
capability 403) is proven for every URL here by tests/contract/test_contract_urls.py.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
import yaml
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from governance.audit.models import AuditEvent
from governance.audit.services import Actor
from registry import services
from registry.models import Agent, AgentPrincipal, Grant, McpServer, ServerSync, Tool, ToolScope
from registry.tool_definition import ToolDefinition, definition_sha256
from tests.factories import MembershipFactory, UserFactory, actions

SYSTEM = Actor.system("test")
API = "/api/v1/t/alpha"


def discover(tenant, server, *names: str, description: str = "does a thing") -> list[Tool]:
    """Record a tools/list result through the service, as a sync would."""
    defs = [ToolDefinition(name=n, description=description) for n in names]
    services.tools_record_discovery(tenant=tenant, actor=SYSTEM, server=server,
                                    definitions=[(d, definition_sha256(d)) for d in defs])
    return list(Tool.objects.for_tenant(tenant).filter(server=server, name__in=names)
                .order_by("name"))


@pytest.fixture
def server(tenant_a):
    return services.server_create(tenant=tenant_a, actor=SYSTEM, name="payroll",
                                  transport="streamable-http", url="https://payroll.example/mcp")


@pytest.fixture
def tools(tenant_a, server):
    return discover(tenant_a, server, "pay", "refund")


@pytest.fixture
def scope(tenant_a, tools):
    return services.scope_create(tenant=tenant_a, actor=SYSTEM, name="payroll:write",
                                 tools=tools)


@pytest.fixture
def daves_agent(tenant_a, dave):
    return services.agent_create(tenant=tenant_a, actor=SYSTEM, name="payroll-bot", owner=dave)


@pytest.fixture
def b_agent(tenant_b):
    return services.agent_create(tenant=tenant_b, actor=SYSTEM, name="bravo-bot", owner=None)


def no_write_for(client, method: str, url: str, body: dict | None = None) -> None:
    response = getattr(client, method)(url, body or {}, format="json")
    assert response.status_code == 403, (method, url, response.status_code)
    assert response.json() == {"code": "permission_denied",
                               "message": response.json()["message"]}
    assert response.json()["message"].startswith("Your role (")


# --- Servers -----------------------------------------------------------------------------------


def test_an_admin_registers_changes_and_retires_a_server(admin, tenant_a, alice):
    created = admin.post(f"{API}/servers/", {
        "name": "crm", "transport": "streamable-http", "url": "https://crm.example/mcp",
        "data_classes": ["pii"], "risk_tier": "high",
    }, format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["status"] == "pending" and body["owner"] == "alice"
    assert body["tool_count"] == 0 and body["latest_sync"] is None
    pk = body["id"]

    changed = admin.patch(f"{API}/servers/{pk}/", {"description": "Customer records"},
                          format="json")
    assert changed.status_code == 200
    assert changed.json()["description"] == "Customer records"

    moved = admin.post(f"{API}/servers/{pk}/transition/", {"status": "active"}, format="json")
    assert moved.status_code == 200 and moved.json()["status"] == "active"

    assert admin.delete(f"{API}/servers/{pk}/").status_code == 204
    assert McpServer.objects.get(pk=pk).status == "retired"  # kept for the record
    assert actions(tenant_a, 4) == [("server.created", "token"), ("server.updated", "token"),
                                    ("server.active", "token"), ("server.retired", "token")]


def test_what_gateways_forward_besides_tools_is_set_checked_and_audited(admin, tenant_a):
    created = admin.post(f"{API}/servers/", {
        "name": "docs", "transport": "streamable-http", "url": "https://docs.example/mcp",
        "forward": ["resources", "completion"]}, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["forward"] == ["completion", "resources"]
    pk = created.json()["id"]
    event = AuditEvent.objects.filter(tenant=tenant_a, action="server.created").latest("seq")
    assert event.after["forward"] == ["completion", "resources"]

    bad = admin.patch(f"{API}/servers/{pk}/", {"forward": ["resources", "sampling"]},
                      format="json")
    assert bad.status_code == 400
    assert bad.json()["errors"] == {"forward": ['"sampling" is not a valid choice.']}
    assert admin.patch(f"{API}/servers/{pk}/", {"forward": "resources"},
                       format="json").status_code == 400
    assert McpServer.objects.get(pk=pk).forward == ["completion", "resources"]

    changed = admin.patch(f"{API}/servers/{pk}/", {"forward": []}, format="json")
    assert changed.status_code == 200 and changed.json()["forward"] == []
    event = AuditEvent.objects.filter(tenant=tenant_a, action="server.updated").latest("seq")
    assert (event.before["forward"], event.after["forward"]) == (["completion", "resources"],
                                                                 [])
    # Off by default.
    plain = admin.post(f"{API}/servers/", {"name": "plain", "transport": "sse",
                                           "url": "https://plain.example/sse"}, format="json")
    assert plain.json()["forward"] == []


def test_retiring_twice_is_a_400_from_the_lifecycle(admin, server):
    assert admin.delete(f"{API}/servers/{server.pk}/").status_code == 204
    again = admin.delete(f"{API}/servers/{server.pk}/")
    assert again.status_code == 400
    assert again.json() == {
        "code": "invalid",
        "message": "A retired server cannot become retired; allowed: nothing (retired is final).",
        "errors": {"status": ["A retired server cannot become retired; allowed: nothing "
                              "(retired is final)."]},
    }


def test_an_illegal_server_transition_is_a_400_with_the_reason(admin, server):
    response = admin.post(f"{API}/servers/{server.pk}/transition/", {"status": "suspended"},
                          format="json")
    assert response.status_code == 400
    assert response.json()["message"] == (
        "A pending server cannot become suspended; allowed: active, retired."
    )
    assert admin.post(f"{API}/servers/{server.pk}/transition/", {"status": "gone"},
                      format="json").json()["errors"] == {
        "status": ['"gone" is not a valid choice.']}


def test_server_validation_errors_name_the_field(admin, server):
    response = admin.post(f"{API}/servers/", {"name": "local", "transport": "stdio"},
                          format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == {
        "command": ["A stdio server needs a command: a list of program and arguments."]}
    response = admin.post(f"{API}/servers/", {"name": "payroll", "transport": "sse",
                                              "url": "https://x.example/sse"}, format="json")
    assert response.json()["errors"] == {"name": ["A server named 'payroll' already exists."]}
    response = admin.post(f"{API}/servers/", {"name": "x", "transport": "sse",
                                              "url": "https://x.example/sse",
                                              "owner": "oscar"}, format="json")
    assert response.json()["errors"] == {"owner": ["'oscar' is not a member of this tenant."]}


def test_a_field_the_endpoint_does_not_take_is_refused_not_ignored(admin, server):
    response = admin.patch(f"{API}/servers/{server.pk}/", {"status": "active"}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == {"status": [
        "Unknown field; this takes name, transport, url, command, description, version, owner, "
        "data_classes, risk_tier, forward."]}
    server.refresh_from_db()
    assert server.status == "pending"  # a status changes only through …/transition/


def test_servers_are_listed_with_filters_and_search(as_user, victor, tenant_a, server):
    services.server_create(tenant=tenant_a, actor=SYSTEM, name="files", transport="stdio",
                           command=["npx", "files"], description="File share")
    services.server_transition(tenant=tenant_a, actor=SYSTEM, server=server, status="active")
    discover(tenant_a, server, "pay", "refund")
    client = as_user(victor)
    body = client.get(f"{API}/servers/").json()
    assert body["count"] == 2
    assert [(s["name"], s["tool_count"], s["review_count"]) for s in body["results"]] == [
        ("files", 0, 0), ("payroll", 2, 2)]
    assert [s["name"] for s in client.get(f"{API}/servers/?status=active").json()["results"]] \
        == ["payroll"]
    assert [s["name"] for s in client.get(f"{API}/servers/?transport=stdio").json()["results"]] \
        == ["files"]
    assert [s["name"] for s in client.get(f"{API}/servers/?search=share").json()["results"]] \
        == ["files"]
    bad = client.get(f"{API}/servers/?status=asleep")
    assert bad.status_code == 400 and bad.json()["errors"] == {
        "status": ['"asleep" is not a valid choice.']}


def test_a_server_shows_its_latest_sync(as_user, victor, tenant_a, server):
    run = ServerSync.objects.create(tenant=tenant_a, server=server, status="failed",
                                    progress="Failed", error_code="unreachable",
                                    error_message="Connection refused")
    McpServer.objects.filter(pk=server.pk).update(latest_sync=run)
    body = as_user(victor).get(f"{API}/servers/{server.pk}/").json()
    assert body["latest_sync"]["id"] == run.pk
    assert body["latest_sync"]["status"] == "failed"
    assert body["latest_sync"]["error_code"] == "unreachable"
    assert body["latest_sync"]["error_message"] == "Connection refused"


@pytest.mark.parametrize("name", ["victor", "audrey", "bob", "dave"])
def test_only_admins_write_servers(name, cast, as_user, server):
    client = as_user(cast[name])
    assert client.get(f"{API}/servers/{server.pk}/").status_code == 200
    no_write_for(client, "post", f"{API}/servers/", {"name": "x", "transport": "stdio",
                                                     "command": ["x"]})
    no_write_for(client, "patch", f"{API}/servers/{server.pk}/", {"description": "x"})
    no_write_for(client, "delete", f"{API}/servers/{server.pk}/")
    no_write_for(client, "post", f"{API}/servers/{server.pk}/transition/", {"status": "active"})
    no_write_for(client, "post", f"{API}/servers/{server.pk}/sync/")
    no_write_for(client, "post", f"{API}/servers/import/", {"name": "x"})
    assert McpServer.objects.count() == 1


# --- Server sync -------------------------------------------------------------------------------


def test_sync_queues_one_run_and_a_second_request_joins_it(
    admin, tenant_a, server, django_capture_on_commit_callbacks
):
    """No broker and no patching: the run is enqueued with transaction.on_commit, and the
    callbacks are captured without running them (running one would send a Celery message)."""
    with django_capture_on_commit_callbacks(execute=False) as enqueued:
        first = admin.post(f"{API}/servers/{server.pk}/sync/")
    assert first.status_code == 202
    body = first.json()
    run = ServerSync.objects.get(server=server)
    assert body["id"] == run.pk and body["created"] is True
    assert body["status"] == "queued" and body["is_open"] is True
    assert body["trigger"] == "api" and body["requested_by"] == "alice"
    assert body["progress"] == "Waiting for a worker"
    assert body["url"] == f"{API}/syncs/{run.pk}/"
    assert first["Location"] == body["url"]
    assert len(enqueued) == 1

    with django_capture_on_commit_callbacks(execute=False) as enqueued_again:
        second = admin.post(f"{API}/servers/{server.pk}/sync/")
    assert second.status_code == 202
    assert second.json()["id"] == run.pk and second.json()["created"] is False
    assert enqueued_again == []
    assert ServerSync.objects.filter(server=server).count() == 1
    assert actions(tenant_a, 1) == [("server.sync_requested", "token")]

    polled = admin.get(body["url"]).json()
    assert polled["status"] == "queued" and polled["server_name"] == "payroll"
    assert admin.get(f"{API}/servers/{server.pk}/").json()["latest_sync"]["id"] == run.pk


def test_a_retired_server_is_not_synced(admin, tenant_a, server):
    services.server_transition(tenant=tenant_a, actor=SYSTEM, server=server, status="retired")
    response = admin.post(f"{API}/servers/{server.pk}/sync/")
    assert response.status_code == 400
    assert response.json()["message"] == "A retired server is not synced."
    assert not ServerSync.objects.exists()


def test_sync_runs_are_listed_and_filtered_by_server(as_user, victor, tenant_a, server):
    other = services.server_create(tenant=tenant_a, actor=SYSTEM, name="other",
                                   transport="stdio", command=["x"])
    done = ServerSync.objects.create(
        tenant=tenant_a, server=server, status="succeeded", tools_listed=2,
        summary={"new": 2}, started_at=timezone.now(), finished_at=timezone.now())
    ServerSync.objects.create(tenant=tenant_a, server=other, status="queued")
    client = as_user(victor)
    assert client.get(f"{API}/syncs/").json()["count"] == 2
    rows = client.get(f"{API}/syncs/?server={server.pk}").json()["results"]
    assert [r["id"] for r in rows] == [done.pk]
    detail = client.get(f"{API}/syncs/{done.pk}/").json()
    assert detail["tools_listed"] == 2 and detail["summary"] == {"new": 2}
    assert detail["is_open"] is False and detail["finished_at"] is not None
    assert client.post(f"{API}/syncs/").status_code == 405


# --- Server import -----------------------------------------------------------------------------


REMOTE_DOC = {
    "name": "io.github.acme/payroll",
    "description": "Payroll over MCP",
    "version": "1.4.0",
    "remotes": [{"type": "streamable-http", "url": "https://payroll.acme.example/mcp"}],
}

NPM_DOC = {
    "name": "io.github.modelcontextprotocol/everything",
    "description": "Exercises every MCP feature",
    "version": "2025.9.25",
    "packages": [{"registryType": "npm", "identifier": "@modelcontextprotocol/server-everything",
                  "version": "2025.9.25", "transport": {"type": "stdio"}}],
}


def test_import_a_remote_server_from_a_json_body(admin, tenant_a):
    response = admin.post(f"{API}/servers/import/", REMOTE_DOC, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["name"] == "io.github.acme/payroll"
    assert body["registry_name"] == "io.github.acme/payroll"
    assert (body["transport"], body["url"]) == ("streamable-http",
                                                "https://payroll.acme.example/mcp")
    assert body["version"] == "1.4.0" and body["owner"] == "alice"
    assert actions(tenant_a, 2) == [("server.created", "token"), ("server.imported", "token")]


def test_import_an_npm_package_as_an_uploaded_file(admin):
    upload = SimpleUploadedFile("server.json", json.dumps(NPM_DOC).encode(),
                                content_type="application/json")
    response = admin.post(f"{API}/servers/import/", {"file": upload}, format="multipart")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["transport"] == "stdio" and body["url"] == ""
    assert body["command"] == ["npx", "-y", "@modelcontextprotocol/server-everything@2025.9.25"]


def _broken(**changes):
    doc = json.loads(json.dumps(NPM_DOC))
    for key, value in changes.items():
        if value is None:
            doc.pop(key)
        else:
            doc[key] = value
    return doc


@pytest.mark.parametrize(("doc", "errors"), [
    (_broken(name=None), {"name": ["This field is required."]}),
    (_broken(name="payroll"), {"name": [
        "Use reverse-DNS form with exactly one slash, e.g. io.github.acme/payroll."]}),
    (_broken(description="x" * 101), {"description": [
        "Must be at most 100 characters (it has 101)."]}),
    (_broken(version="^1.2.3"), {"version": [
        "Must be one exact version, not a range or 'latest'."]}),
    (_broken(packages=[{**NPM_DOC["packages"][0], "transport": {"type": "carrier-pigeon"}}]), {
        "packages[0].transport.type": [
            "Must be one of stdio, streamable-http, sse (got 'carrier-pigeon')."]}),
])
def test_import_errors_name_the_path_in_the_document(admin, doc, errors):
    response = admin.post(f"{API}/servers/import/", doc, format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == errors
    assert response.json()["message"] == next(iter(errors.values()))[0]
    assert not McpServer.objects.exists()


def test_import_of_something_that_is_not_json(admin):
    for client_kwargs in (
        {"data": "name: not json", "content_type": "application/json"},
        {"data": {"file": SimpleUploadedFile("server.json", b"name: not json")},
         "format": "multipart"},
    ):
        response = admin.post(f"{API}/servers/import/", **client_kwargs)
        assert response.status_code == 400
        assert response.json()["errors"] == {
            "document": ["Not valid JSON: Expecting value at line 1, column 1."]}
    missing = admin.post(f"{API}/servers/import/", {"other": "x"}, format="multipart")
    assert missing.status_code == 400 and list(missing.json()["errors"]) == ["file"]
    extra = admin.post(f"{API}/servers/import/", {
        "file": SimpleUploadedFile("server.json", json.dumps(REMOTE_DOC).encode()),
        "owner": "victor",
    }, format="multipart")
    assert extra.status_code == 400
    assert extra.json() == {"code": "invalid", "message": "Unknown field; this takes file.",
                            "errors": {"owner": ["Unknown field; this takes file."]}}
    wrong = admin.post(f"{API}/servers/import/", "x", content_type="text/plain")
    assert wrong.status_code == 415 and wrong.json()["code"] == "unsupported_media_type"
    assert not McpServer.objects.exists()


def test_importing_the_same_registry_name_twice_is_refused(admin):
    assert admin.post(f"{API}/servers/import/", REMOTE_DOC, format="json").status_code == 201
    again = admin.post(f"{API}/servers/import/", REMOTE_DOC, format="json")
    assert again.status_code == 400
    assert again.json()["errors"] == {
        "name": ["io.github.acme/payroll is already registered in this tenant."]}


# --- Tools -------------------------------------------------------------------------------------


def test_tools_are_listed_with_filters(as_user, victor, tenant_a, server, tools):
    other = services.server_create(tenant=tenant_a, actor=SYSTEM, name="crm", transport="stdio",
                                   command=["crm"])
    discover(tenant_a, other, "lookup")
    Tool.objects.filter(name="refund").update(present=False)
    services.tool_approve(tenant=tenant_a, actor=SYSTEM, tool=tools[0])
    client = as_user(victor)

    def names(query: str = "") -> list[str]:
        response = client.get(f"{API}/tools/{query}")
        assert response.status_code == 200, response.json()
        return [t["name"] for t in response.json()["results"]]

    assert names() == ["lookup", "pay", "refund"]  # ordered by server name, then tool name
    assert names(f"?server={server.pk}") == ["pay", "refund"]
    assert names("?status=approved") == ["pay"]
    assert names("?present=false") == ["refund"]
    assert names("?present=true") == ["lookup", "pay"]
    assert names("?search=look") == ["lookup"]
    assert client.get(f"{API}/tools/?present=maybe").json()["errors"] == {
        "present": ["Must be a valid boolean."]}


def test_a_quarantined_tool_shows_both_definitions_and_approval_pins_the_new_one(
    admin, tenant_a, server, tools
):
    pay = tools[0]
    services.tool_approve(tenant=tenant_a, actor=SYSTEM, tool=pay)
    discover(tenant_a, server, "pay", "refund", description="now moves money twice")
    body = admin.get(f"{API}/tools/{pay.pk}/").json()
    assert body["status"] == "quarantined"
    assert body["description"] == "does a thing"  # still the pinned definition
    assert body["drifted_definition"]["description"] == "now moves money twice"
    assert body["drifted_sha256"] and body["drifted_sha256"] != body["definition_sha256"]
    assert body["input_schema"] == {"type": "object"}

    approved = admin.post(f"{API}/tools/{pay.pk}/approve/")
    assert approved.status_code == 200
    assert approved.json()["status"] == "approved"
    assert approved.json()["description"] == "now moves money twice"
    assert approved.json()["definition_sha256"] == body["drifted_sha256"]
    assert approved.json()["drifted_definition"] is None
    again = admin.post(f"{API}/tools/{pay.pk}/approve/")
    assert again.status_code == 400
    assert again.json()["message"] == "This tool is already approved."

    blocked = admin.post(f"{API}/tools/{pay.pk}/block/")
    assert blocked.status_code == 200 and blocked.json()["status"] == "blocked"
    assert actions(tenant_a, 2) == [("tool.approved", "token"), ("tool.blocked", "token")]


@pytest.mark.parametrize("name", ["victor", "audrey", "bob", "dave"])
def test_only_admins_review_tools(name, cast, as_user, tools):
    client = as_user(cast[name])
    assert client.get(f"{API}/tools/{tools[0].pk}/").status_code == 200
    no_write_for(client, "post", f"{API}/tools/{tools[0].pk}/approve/")
    no_write_for(client, "post", f"{API}/tools/{tools[0].pk}/block/")
    assert client.patch(f"{API}/tools/{tools[0].pk}/", {}, format="json").status_code == 405


# --- Scopes ------------------------------------------------------------------------------------


def test_scope_crud_with_tools_across_servers(admin, tenant_a, server, tools):
    crm = services.server_create(tenant=tenant_a, actor=SYSTEM, name="crm", transport="stdio",
                                 command=["crm"])
    (lookup,) = discover(tenant_a, crm, "lookup")
    created = admin.post(f"{API}/scopes/", {
        "name": "finance:ops", "risk_level": "high", "data_classes": ["financial"],
        "tools": [tools[0].pk, lookup.pk],
    }, format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert [(t["server_name"], t["name"]) for t in body["tools"]] == [
        ("crm", "lookup"), ("payroll", "pay")]
    assert body["tool_count"] == 2 and body["active_grant_count"] == 0
    pk = body["id"]

    changed = admin.patch(f"{API}/scopes/{pk}/", {"description": "Money",
                                                  "tools": [tools[1].pk]}, format="json")
    assert changed.status_code == 200
    assert changed.json()["description"] == "Money"
    assert [t["name"] for t in changed.json()["tools"]] == ["refund"]
    only_tools = admin.patch(f"{API}/scopes/{pk}/", {"tools": []}, format="json")
    assert only_tools.json()["tools"] == [] and only_tools.json()["description"] == "Money"

    assert admin.delete(f"{API}/scopes/{pk}/").status_code == 204
    assert not ToolScope.objects.filter(pk=pk).exists()
    assert actions(tenant_a, 5) == [
        ("scope.created", "token"), ("scope.updated", "token"), ("scope.tools_changed", "token"),
        ("scope.tools_changed", "token"), ("scope.deleted", "token")]


def test_a_granted_scope_cannot_be_deleted(admin, tenant_a, scope, daves_agent):
    services.grant_create(tenant=tenant_a, actor=SYSTEM, agent=daves_agent, scope=scope)
    response = admin.delete(f"{API}/scopes/{scope.pk}/")
    assert response.status_code == 400
    assert response.json()["message"].startswith(
        "This scope has grants (active or revoked) and is kept for the record")
    assert ToolScope.objects.filter(pk=scope.pk).exists()


def test_another_tenants_tools_cannot_join_a_scope(admin, tenant_a, tenant_b, tools, scope):
    b_server = services.server_create(tenant=tenant_b, actor=SYSTEM, name="b",
                                      transport="stdio", command=["b"])
    (steal,) = discover(tenant_b, b_server, "steal")
    response = admin.post(f"{API}/scopes/", {"name": "sneaky", "tools": [tools[0].pk, steal.pk]},
                          format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == {"tools": [f"No tool with id {steal.pk} in this tenant."]}
    assert not ToolScope.objects.filter(name="sneaky").exists()
    response = admin.patch(f"{API}/scopes/{scope.pk}/", {"tools": [steal.pk]}, format="json")
    assert response.status_code == 400
    assert list(scope.tools.order_by("name").values_list("name", flat=True)) == ["pay", "refund"]


def test_scope_errors_name_the_field(admin, scope):
    dup = admin.post(f"{API}/scopes/", {"name": "payroll:write"}, format="json")
    assert dup.json()["errors"] == {"name": ["A scope named 'payroll:write' already exists."]}
    bad = admin.post(f"{API}/scopes/", {"name": "x", "data_classes": ["secret"]}, format="json")
    assert bad.status_code == 400
    assert bad.json()["errors"]["data_classes"][0].startswith("Unknown value(s) secret; use ")


@pytest.mark.parametrize("name", ["victor", "audrey", "bob", "dave"])
def test_only_admins_write_scopes(name, cast, as_user, scope):
    client = as_user(cast[name])
    assert client.get(f"{API}/scopes/").json()["count"] == 1
    no_write_for(client, "post", f"{API}/scopes/", {"name": "x"})
    no_write_for(client, "patch", f"{API}/scopes/{scope.pk}/", {"name": "x"})
    no_write_for(client, "delete", f"{API}/scopes/{scope.pk}/")


# --- Agents ------------------------------------------------------------------------------------


def test_a_developer_registers_an_agent_they_own(as_user, dave, tenant_a):
    client = as_user(dave)
    created = client.post(f"{API}/agents/", {"name": "helper", "purpose": "answers mail",
                                             "environment": "prod"}, format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["owner"] == "dave" and body["status"] == "active" and body["principals"] == []
    agent = Agent.objects.get(pk=body["id"])
    assert dave.has_perm("registry.manage_agent", agent)

    changed = client.patch(f"{API}/agents/{agent.pk}/", {"purpose": "answers all mail"},
                           format="json")
    assert changed.status_code == 200 and changed.json()["purpose"] == "answers all mail"
    suspended = client.post(f"{API}/agents/{agent.pk}/transition/", {"status": "suspended"},
                            format="json")
    assert suspended.status_code == 200 and suspended.json()["status"] == "suspended"
    assert actions(tenant_a, 3) == [("agent.created", "token"), ("agent.updated", "token"),
                                    ("agent.suspended", "token")]


def test_a_developer_cannot_register_an_agent_for_someone_else(as_user, dave, victor):
    response = as_user(dave).post(f"{API}/agents/", {"name": "x", "owner": "victor"},
                                  format="json")
    assert response.status_code == 403
    assert response.json() == {"code": "permission_denied",
                               "message": "Only an admin may register an agent for someone else."}
    assert not Agent.objects.exists()


def test_an_admin_registers_an_agent_for_a_member_or_for_nobody(admin, dave, oscar):
    for_dave = admin.post(f"{API}/agents/", {"name": "a", "owner": "dave"}, format="json")
    assert for_dave.status_code == 201 and for_dave.json()["owner"] == "dave"
    assert dave.has_perm("registry.manage_agent", Agent.objects.get(name="a"))
    for_nobody = admin.post(f"{API}/agents/", {"name": "b", "owner": None}, format="json")
    assert for_nobody.status_code == 201 and for_nobody.json()["owner"] is None
    default = admin.post(f"{API}/agents/", {"name": "c"}, format="json")
    assert default.json()["owner"] == "alice"
    outsider = admin.post(f"{API}/agents/", {"name": "d", "owner": "oscar"}, format="json")
    assert outsider.status_code == 400
    assert outsider.json()["errors"] == {"owner": ["'oscar' is not a member of this tenant."]}


def test_a_developer_manages_only_their_own_agents(as_user, tenant_a, alice, dave):
    admins = services.agent_create(tenant=tenant_a, actor=SYSTEM, name="alices", owner=alice)
    erin = UserFactory(username="erin")
    MembershipFactory(tenant=tenant_a, user=erin, role="developer")
    erins = services.agent_create(tenant=tenant_a, actor=SYSTEM, name="erins", owner=erin)
    client = as_user(dave)
    for agent in (admins, erins):
        assert client.get(f"{API}/agents/{agent.pk}/").status_code == 200
        for method, url, body in (
            ("patch", f"{API}/agents/{agent.pk}/", {"purpose": "mine now"}),
            ("post", f"{API}/agents/{agent.pk}/transition/", {"status": "suspended"}),
            ("post", f"{API}/principals/", {"agent": agent.pk, "issuer": "i", "subject": "s"}),
        ):
            response = getattr(client, method)(url, body, format="json")
            assert response.status_code == 403, (method, url)
            assert response.json()["message"] == (
                "Only the agent's owner or an admin may change this agent.")
    assert not AgentPrincipal.objects.exists()
    assert set(Agent.objects.values_list("status", flat=True)) == {"active"}


def test_only_an_admin_changes_an_agents_owner(as_user, admin, daves_agent, victor):
    refused = as_user(daves_agent.owner).patch(f"{API}/agents/{daves_agent.pk}/",
                                               {"owner": "victor"}, format="json")
    assert refused.status_code == 403
    assert refused.json()["message"] == "Only an admin may change an agent's owner."
    moved = admin.patch(f"{API}/agents/{daves_agent.pk}/", {"owner": "victor"}, format="json")
    assert moved.status_code == 200 and moved.json()["owner"] == "victor"
    assert victor.has_perm("registry.manage_agent", daves_agent)


def test_agent_transitions_and_errors(admin, daves_agent):
    url = f"{API}/agents/{daves_agent.pk}/transition/"
    assert admin.post(url, {"status": "suspended"}, format="json").status_code == 200
    again = admin.post(url, {"status": "suspended"}, format="json")
    assert again.status_code == 400
    assert again.json()["message"] == "This agent is suspended; it cannot become suspended."
    assert admin.post(url, {"status": "active"}, format="json").json()["status"] == "active"
    assert admin.post(url, {"status": "retired"}, format="json").json()["errors"] == {
        "status": ['"retired" is not a valid choice.']}


def test_agents_cannot_be_deleted(admin, daves_agent):
    response = admin.delete(f"{API}/agents/{daves_agent.pk}/")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
    assert Agent.objects.filter(pk=daves_agent.pk).exists()


@pytest.mark.parametrize("name", ["victor", "audrey", "bob"])
def test_viewers_auditors_and_approvers_do_not_write_agents(name, cast, as_user, daves_agent):
    client = as_user(cast[name])
    assert client.get(f"{API}/agents/{daves_agent.pk}/").status_code == 200
    no_write_for(client, "post", f"{API}/agents/", {"name": "x"})
    no_write_for(client, "patch", f"{API}/agents/{daves_agent.pk}/", {"purpose": "x"})
    no_write_for(client, "post", f"{API}/agents/{daves_agent.pk}/transition/",
                 {"status": "suspended"})


def test_agents_are_listed_with_filters(as_user, victor, tenant_a, alice, dave, daves_agent):
    services.agent_create(tenant=tenant_a, actor=SYSTEM, name="mailer", owner=alice,
                          purpose="sends newsletters")
    services.agent_principal_add(tenant=tenant_a, actor=SYSTEM, agent=daves_agent,
                                 issuer="https://idp.example", subject="payroll-client")
    client = as_user(victor)

    def names(query: str = "") -> list[str]:
        return [a["name"] for a in client.get(f"{API}/agents/{query}").json()["results"]]

    assert names() == ["mailer", "payroll-bot"]
    assert names("?owner=dave") == ["payroll-bot"]
    assert names("?owner=nobody") == []
    assert names("?search=newsletter") == ["mailer"]
    assert names("?search=payroll-client") == ["payroll-bot"]
    services.agent_transition(tenant=tenant_a, actor=SYSTEM, agent=daves_agent,
                              status="suspended")
    assert names("?status=suspended") == ["payroll-bot"]
    detail = client.get(f"{API}/agents/{daves_agent.pk}/").json()
    assert [(p["issuer"], p["subject"]) for p in detail["principals"]] == [
        ("https://idp.example", "payroll-client")]


# --- Principals --------------------------------------------------------------------------------


def test_an_owner_adds_and_removes_principals(as_user, dave, tenant_a, daves_agent):
    client = as_user(dave)
    created = client.post(f"{API}/principals/", {
        "agent": daves_agent.pk, "issuer": "https://idp.example", "subject": "payroll-client",
    }, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["agent_name"] == "payroll-bot"
    pk = created.json()["id"]
    assert [p["id"] for p in client.get(f"{API}/principals/?agent={daves_agent.pk}")
            .json()["results"]] == [pk]
    dup = client.post(f"{API}/principals/", {
        "agent": daves_agent.pk, "issuer": "https://idp.example", "subject": "payroll-client",
    }, format="json")
    assert dup.status_code == 400
    assert dup.json()["errors"] == {"subject": [
        "'payroll-client' from 'https://idp.example' already identifies agent 'payroll-bot'."]}
    assert client.delete(f"{API}/principals/{pk}/").status_code == 204
    assert not AgentPrincipal.objects.exists()
    assert actions(tenant_a, 2) == [("agent.principal_added", "token"),
                                    ("agent.principal_removed", "token")]


def test_a_principal_for_another_tenants_agent_is_refused(admin, b_agent):
    response = admin.post(f"{API}/principals/", {
        "agent": b_agent.pk, "issuer": "https://idp.example", "subject": "x"}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == {"agent": [f"No agent with id {b_agent.pk} in this "
                                                   "tenant."]}
    assert not AgentPrincipal.objects.exists()


def test_another_developer_cannot_remove_a_principal(as_user, tenant_a, alice, daves_agent,
                                                      victor):
    principal = services.agent_principal_add(tenant=tenant_a, actor=SYSTEM, agent=daves_agent,
                                             issuer="i", subject="s")
    other = services.agent_create(tenant=tenant_a, actor=SYSTEM, name="alices", owner=alice)
    alices = services.agent_principal_add(tenant=tenant_a, actor=SYSTEM, agent=other,
                                          issuer="i", subject="t")
    dave_client = as_user(daves_agent.owner)
    assert dave_client.delete(f"{API}/principals/{alices.pk}/").status_code == 403
    no_write_for(as_user(victor), "delete", f"{API}/principals/{principal.pk}/")
    assert AgentPrincipal.objects.count() == 2


# --- Grants ------------------------------------------------------------------------------------


def test_an_admin_grants_with_every_constraint_and_revokes(admin, tenant_a, scope, daves_agent):
    expires = timezone.now() + timedelta(days=7)
    created = admin.post(f"{API}/grants/", {
        "agent": daves_agent.pk, "scope": scope.pk,
        "calls_per_minute": 10, "calls_per_day": 500,
        "window_start": "08:00", "window_end": "18:00", "window_days": [4, 0, 1, 2, 3],
        "window_tz": "Europe/Paris",
        "argument_constraints": {"pay": {"amount": {"maximum": 5000},
                                         "currency": {"enum": ["EUR", "USD"]}}},
        "approval_mode": "when",
        "approval_condition": {"pay": {"amount": {"minimum": 1000}}},
        "expires_at": expires.isoformat(),
    }, format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["agent_name"] == "payroll-bot" and body["scope_name"] == "payroll:write"
    assert body["status"] == "active" and body["in_force"] is True
    assert body["window_days"] == [0, 1, 2, 3, 4] and body["window_start"] == "08:00:00"
    assert body["created_by"] == "alice"
    pk = body["id"]

    changed = admin.patch(f"{API}/grants/{pk}/", {"calls_per_minute": 20,
                                                  "approval_mode": "always",
                                                  "approval_condition": {}}, format="json")
    assert changed.status_code == 200, changed.json()
    assert changed.json()["calls_per_minute"] == 20 and changed.json()["calls_per_day"] == 500

    revoked = admin.post(f"{API}/grants/{pk}/revoke/", {"reason": "project over"},
                         format="json")
    assert revoked.status_code == 200
    assert revoked.json()["status"] == "revoked" and revoked.json()["in_force"] is False
    refused = admin.patch(f"{API}/grants/{pk}/", {"calls_per_minute": 5}, format="json")
    assert refused.status_code == 400
    assert refused.json()["message"] == "A revoked grant cannot be changed; create a new one."
    assert actions(tenant_a, 3) == [("grant.created", "token"), ("grant.updated", "token"),
                                    ("grant.revoked", "token")]
    assert AuditEvent.objects.get(tenant=tenant_a, action="grant.revoked").after == {
        "reason": "project over"}


def test_delete_revokes_a_grant(admin, tenant_a, scope, daves_agent):
    grant = services.grant_create(tenant=tenant_a, actor=SYSTEM, agent=daves_agent, scope=scope)
    assert admin.delete(f"{API}/grants/{grant.pk}/").status_code == 204
    grant.refresh_from_db()
    assert grant.status == "revoked" and grant.revoked_at is not None  # kept for the record


@pytest.mark.parametrize(("terms", "field", "message"), [
    ({"argument_constraints": {"refund": {"amount": {"maximum": "lots"}}}},
     "argument_constraints", "argument_constraints.refund.amount.maximum: must be a number"),
    ({"argument_constraints": {"nope": {"a": {"maximum": 1}}}},
     "argument_constraints", "argument_constraints.nope: no such tool in this scope"),
    ({"approval_mode": "when", "approval_condition": {"pay": {"memo": {"format": "x"}}}},
     "approval_condition", "approval_condition.pay.memo.format: unsupported keyword; use one "
     "of const, enum, maxLength, maximum, minimum, pattern, url, within"),
    ({"approval_mode": "when"}, "approval_condition", "Approval mode 'when' needs a condition."),
    ({"window_start": "08:00"}, "window_end", "Give both the start and the end of the window."),
    ({"window_days": [7]}, "window_days", "Days are 0 (Monday) to 6 (Sunday)."),
    ({"window_tz": "Mars/Olympus"}, "window_tz", "Unknown time zone 'Mars/Olympus'."),
    ({"calls_per_minute": 0}, "calls_per_minute",
     "Must be at least 1 (leave empty for no limit)."),
    ({"expires_at": (timezone.now() - timedelta(days=1)).isoformat()}, "expires_at",
     "Choose an expiry in the future."),
    ({"approval_mode": "sometimes"}, "approval_mode", '"sometimes" is not a valid choice.'),
    ({"window_days": ["monday"]}, "window_days", "A valid integer is required."),
])
def test_grant_errors_name_the_field_and_the_path(admin, scope, daves_agent, terms, field,
                                                  message):
    response = admin.post(f"{API}/grants/", {"agent": daves_agent.pk, "scope": scope.pk,
                                             **terms}, format="json")
    assert response.status_code == 400
    assert list(response.json()["errors"]) == [field]
    assert response.json()["message"] == message
    assert not Grant.objects.exists()


def test_a_grant_for_another_tenants_agent_is_refused(admin, scope, b_agent, tenant_b):
    response = admin.post(f"{API}/grants/", {"agent": b_agent.pk, "scope": scope.pk},
                          format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == {"agent": [f"No agent with id {b_agent.pk} in this "
                                                   "tenant."]}
    b_scope = services.scope_create(tenant=tenant_b, actor=SYSTEM, name="b-scope")
    response = admin.post(f"{API}/grants/", {"agent": b_agent.pk, "scope": b_scope.pk},
                          format="json")
    assert set(response.json()["errors"]) == {"agent", "scope"}
    assert not Grant.objects.exists()


def test_grants_are_listed_with_filters(as_user, victor, tenant_a, scope, daves_agent):
    live = services.grant_create(tenant=tenant_a, actor=SYSTEM, agent=daves_agent, scope=scope)
    other = services.agent_create(tenant=tenant_a, actor=SYSTEM, name="other", owner=None)
    gone = services.grant_create(tenant=tenant_a, actor=SYSTEM, agent=other, scope=scope)
    services.grant_revoke(tenant=tenant_a, actor=SYSTEM, grant=gone)
    client = as_user(victor)

    def ids(query: str = "") -> list[int]:
        response = client.get(f"{API}/grants/{query}")
        assert response.status_code == 200, response.json()
        return [g["id"] for g in response.json()["results"]]

    assert ids() == [gone.pk, live.pk]  # newest first
    assert ids(f"?agent={daves_agent.pk}") == [live.pk]
    assert ids(f"?scope={scope.pk}") == [gone.pk, live.pk]
    assert ids("?status=revoked") == [gone.pk]
    assert ids("?in_force=true") == [live.pk]
    assert ids("?in_force=false") == [gone.pk]
    assert client.get(f"{API}/grants/{live.pk}/").json()["in_force"] is True


@pytest.mark.parametrize("name", ["victor", "audrey", "bob", "dave"])
def test_only_admins_write_grants(name, cast, as_user, tenant_a, scope, daves_agent):
    grant = services.grant_create(tenant=tenant_a, actor=SYSTEM, agent=daves_agent, scope=scope)
    client = as_user(cast[name])
    assert client.get(f"{API}/grants/{grant.pk}/").status_code == 200
    no_write_for(client, "post", f"{API}/grants/", {"agent": daves_agent.pk, "scope": scope.pk})
    no_write_for(client, "patch", f"{API}/grants/{grant.pk}/", {"calls_per_minute": 1})
    no_write_for(client, "delete", f"{API}/grants/{grant.pk}/")
    no_write_for(client, "post", f"{API}/grants/{grant.pk}/revoke/")
    grant.refresh_from_db()
    assert grant.status == "active"


# --- Outsiders (the contract test covers every URL; these show the bodies) ----------------------


def test_an_outsider_gets_json_404s(api, token_for, oscar, tenant_b, server, daves_agent):
    client = api(token_for(oscar, tenant_b))
    response = client.get(f"{API}/servers/")
    assert response.status_code == 404
    assert response.json() == {"code": "not_found", "message": "No such tenant"}
    # Tenant A's objects under tenant B's own slug do not exist either.
    assert client.get(f"/api/v1/t/bravo/servers/{server.pk}/").status_code == 404
    assert client.post(f"/api/v1/t/bravo/agents/{daves_agent.pk}/transition/",
                       {"status": "suspended"}, format="json").status_code == 404
    daves_agent.refresh_from_db()
    assert daves_agent.status == "active"


# --- Query counts: lists do not grow with their rows --------------------------------------------


def _fill(tenant, n: int, start: int) -> None:
    """``n`` more rows of every registry model, each with the relations its list row shows."""
    owner = Agent._meta.get_field("owner").related_model.objects.get(username="dave")
    for i in range(start, start + n):
        server = services.server_create(tenant=tenant, actor=SYSTEM, name=f"s{i}",
                                        transport="stdio", command=["run", str(i)])
        tools = discover(tenant, server, f"t{i}a", f"t{i}b")
        run = ServerSync.objects.create(tenant=tenant, server=server, status="succeeded",
                                        requested_by=owner)
        McpServer.objects.filter(pk=server.pk).update(latest_sync=run)
        scope = services.scope_create(tenant=tenant, actor=SYSTEM, name=f"scope{i}", tools=tools)
        agent = services.agent_create(tenant=tenant, actor=SYSTEM, name=f"agent{i}", owner=owner)
        for k in range(2):
            services.agent_principal_add(tenant=tenant, actor=SYSTEM, agent=agent,
                                         issuer="https://idp.example", subject=f"a{i}-{k}")
        services.grant_create(tenant=tenant, actor=SYSTEM, agent=agent, scope=scope,
                              created_by=owner)


LIST_ENDPOINTS = ["servers", "syncs", "tools", "scopes", "agents", "principals", "grants"]


@pytest.mark.parametrize("resource", LIST_ENDPOINTS)
def test_list_queries_do_not_grow_with_rows(resource, login, alice, dave, tenant_a):
    client = login(alice)
    url = f"{API}/{resource}/"
    n = 2
    _fill(tenant_a, n, 0)
    client.get(url)  # warm caches (content types, session) outside the measurement

    def count() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url)
        assert response.status_code == 200
        return len(queries), len(response.json()["results"])

    few, rows_few = count()
    _fill(tenant_a, 2 * n, n)
    many, rows_many = count()
    assert rows_many == 3 * rows_few > 0
    assert many == few, f"{resource}: {few} queries for {rows_few} rows, {many} for {rows_many}"


# --- OpenAPI schema and Swagger UI --------------------------------------------------------------


def test_the_schema_describes_the_registry_with_its_errors(login, alice):
    response = login(alice).get("/api/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    for path in ("servers/", "servers/{id}/", "servers/{id}/transition/", "servers/{id}/sync/",
                 "servers/import/", "syncs/", "syncs/{id}/", "tools/", "tools/{id}/approve/",
                 "tools/{id}/block/", "scopes/", "scopes/{id}/", "agents/", "agents/{id}/",
                 "agents/{id}/transition/", "principals/", "principals/{id}/", "grants/",
                 "grants/{id}/", "grants/{id}/revoke/"):
        assert f"/api/v1/t/{{tenant_slug}}/{path}" in paths, path
    create = paths["/api/v1/t/{tenant_slug}/grants/"]["post"]["responses"]
    assert set(create) == {"201", "400", "401", "403", "404", "413"}
    assert create["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorOut"}
    assert "delete" not in paths["/api/v1/t/{tenant_slug}/agents/{id}/"]
    assert login(alice).get("/api/v1/schema/").status_code == 200  # the old address stays


def test_the_schema_and_docs_need_a_signed_in_caller(client, db):
    response = client.get("/api/schema/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json() == {"code": "not_authenticated",
                               "message": "Authentication credentials were not provided."}
    assert client.get("/api/v1/schema/").status_code == 401
    docs = client.get("/api/docs/")
    assert docs.status_code == 302 and docs["Location"] == "/login/?next=/api/docs/"


def test_swagger_ui_uses_only_same_origin_assets_and_no_inline_code(login, alice):
    client = login(alice)
    page = client.get("/api/docs/")
    assert page.status_code == 200 and page["Content-Type"].startswith("text/html")
    html = page.content.decode()
    csp = page["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and all(src.startswith("/") and not src.startswith("//")
                           for src in sources), sources
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in sources
    assert "<script>" not in html and "<style" not in html  # nothing inline for the CSP to block
    script = client.get("/api/docs/?script=")
    assert script.status_code == 200
    assert script["Content-Type"].startswith("application/javascript")
    assert '"/api/schema/"' in script.content.decode()
