"""Gateway ↔ server bindings (registry/gateway_bindings.py, registry/api/bindings.py) and the
Sync button / sync API / scheduled re-sync of a stdio server, which ask its gateways."""

from __future__ import annotations

import json

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from governance.audit.models import AuditEvent
from governance.audit.services import Actor
from registry import gateway_discovery, services, sync, tasks
from registry.models import GatewayBinding, McpServer, ServerSync
from tests.bundle_support import make_gateway

SYSTEM = Actor.system("test")
API = "/api/v1/t/alpha"


def _body(response) -> str:
    return response.content.decode()


@pytest.fixture
def hr(tenant_a):
    server = services.server_create(tenant=tenant_a, actor=SYSTEM, name="acme-hr",
                                    transport="stdio", command=["npx", "-y", "@acme/hr@1.0.0"])
    return services.server_transition(tenant=tenant_a, actor=SYSTEM, server=server,
                                      status="active")


@pytest.fixture
def edge(tenant_a):
    return make_gateway(tenant_a)[0]


def _bind(tenant, gateway, server):
    return gateway_discovery.gateway_server_bind(tenant=tenant, actor=SYSTEM, gateway=gateway,
                                                 server=server)


# --- Web ---------------------------------------------------------------------------------------


def test_an_admin_binds_a_server_on_the_gateway_page(login, alice, tenant_a, hr, edge):
    client = login(alice)
    page = _body(client.get(f"/t/alpha/gateways/{edge.pk}/"))
    assert "Servers it fronts" in page and "It fronts no server yet." in page
    assert f'<option value="{hr.pk}">acme-hr</option>' in page

    response = client.post(f"/t/alpha/gateways/{edge.pk}/servers/", {"server": hr.pk},
                           follow=True)

    binding = GatewayBinding.objects.get()
    assert (binding.gateway, binding.server, binding.created_by) == (edge, hr, alice)
    body = _body(response)
    assert "edge-1 now fronts acme-hr: it reports the server&#x27;s tools." in body
    assert f'id="binding-{binding.pk}"' in body
    event = AuditEvent.objects.get(tenant=tenant_a, action="gateway.server_bound")
    assert (event.actor_label, event.object_id, event.after) == (
        "alice", str(edge.pk), {"server": "acme-hr", "server_id": hr.pk})


def test_binding_refuses_retired_bound_and_foreign_servers(login, alice, tenant_a, tenant_b, hr,
                                                           edge):
    client = login(alice)
    _bind(tenant_a, edge, hr)
    retired = services.server_create(tenant=tenant_a, actor=SYSTEM, name="old",
                                     transport="stdio", command=["/x"])
    retired = services.server_transition(tenant=tenant_a, actor=SYSTEM, server=retired,
                                         status="retired")
    foreign = services.server_create(tenant=tenant_b, actor=SYSTEM, name="b-hr",
                                     transport="stdio", command=["/x"])
    for server in (hr, retired, foreign):
        response = client.post(f"/t/alpha/gateways/{edge.pk}/servers/", {"server": server.pk},
                                follow=True)
        assert ("Choose a server of this tenant that the gateway does not front yet (retired "
                "servers cannot be bound).") in _body(response)
    assert GatewayBinding.objects.count() == 1
    with pytest.raises(Exception) as refused:
        _bind(tenant_a, edge, retired)
    assert refused.value.message_dict == {"server": ["old is retired; it cannot be bound."]}
    with pytest.raises(Exception) as again:
        _bind(tenant_a, edge, hr)
    assert again.value.message_dict == {"server": ["edge-1 already fronts acme-hr."]}


def test_only_admins_bind_and_outsiders_get_404(login, cast, tenant_a, hr, edge):
    binding = _bind(tenant_a, edge, hr)
    for name in ("bob", "audrey", "dave", "victor"):
        client = login(cast[name])
        page = _body(client.get(f"/t/alpha/gateways/{edge.pk}/"))
        assert 'id="gateway-servers"' in page and "Bind server" not in page
        assert "Unbind" not in page
        assert client.post(f"/t/alpha/gateways/{edge.pk}/servers/",
                           {"server": hr.pk}).status_code == 403
        assert client.post(f"/t/alpha/gateway-bindings/{binding.pk}/remove/").status_code == 403
    oscar = login(cast["oscar"])
    assert oscar.post(f"/t/alpha/gateways/{edge.pk}/servers/",
                      {"server": hr.pk}).status_code == 404
    assert oscar.post(f"/t/bravo/gateway-bindings/{binding.pk}/remove/").status_code == 404
    assert GatewayBinding.objects.count() == 1


def test_an_admin_unbinds_after_confirming(login, alice, tenant_a, hr, edge):
    binding = _bind(tenant_a, edge, hr)
    client = login(alice)
    confirm = _body(client.get(f"/t/alpha/gateway-bindings/{binding.pk}/remove/"))
    assert "Stop edge-1 fronting acme-hr?" in confirm
    response = client.post(f"/t/alpha/gateway-bindings/{binding.pk}/remove/", follow=True)
    assert "edge-1 no longer fronts acme-hr." in _body(response)
    assert not GatewayBinding.objects.exists()
    event = AuditEvent.objects.get(tenant=tenant_a, action="gateway.server_unbound")
    assert event.before == {"server": "acme-hr", "server_id": hr.pk}


def test_the_server_page_shows_its_gateways_and_when_each_reported(login, victor, tenant_a, hr,
                                                                   edge):
    client = login(victor)
    page = _body(client.get(f"/t/alpha/servers/{hr.pk}/"))
    assert "No gateway fronts this server, so its tools cannot be synced" in page
    _bind(tenant_a, edge, hr)
    page = _body(client.get(f"/t/alpha/servers/{hr.pk}/"))
    assert f'<a href="/t/alpha/gateways/{edge.pk}/">edge-1</a>' in page
    assert "never" in page
    reported = timezone.now()
    GatewayBinding.objects.update(last_reported_at=reported)
    page = _body(client.get(f"/t/alpha/servers/{hr.pk}/"))
    assert f"{reported:%Y-%m-%d %H:%M:%S} UTC" in page


def test_sync_button_of_a_stdio_server_without_gateway_explains_and_queues_nothing(
        login, alice, hr, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = login(alice).post(f"/t/alpha/servers/{hr.pk}/sync/", follow=True)
    assert ("acme-hr is a stdio server: its tools are listed by the gateway that runs it, and "
            "no active gateway is bound to it.") in _body(response)
    assert callbacks == [] and not ServerSync.objects.exists()


def test_sync_button_of_a_stdio_server_asks_its_gateway(
        login, alice, tenant_a, hr, edge, django_capture_on_commit_callbacks):
    _bind(tenant_a, edge, hr)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = login(alice).post(f"/t/alpha/servers/{hr.pk}/sync/", follow=True)
    run = ServerSync.objects.get()
    assert callbacks == []  # no worker task
    assert (run.via, run.status) == ("gateway", "queued")
    body = _body(response)
    assert f"Sync #{run.pk} of acme-hr started." in body
    assert "Waiting for gateway edge-1 to report" in body
    assert "asked to report" in body
    assert gateway_discovery.status_headers(edge) == {
        "X-Tollgate-Discovery-Requested": "acme-hr"}


# --- API ---------------------------------------------------------------------------------------


def test_the_api_binds_lists_and_unbinds(admin, tenant_a, hr, edge):
    created = admin.post(f"{API}/gateway-bindings/", {"gateway": edge.pk, "server": hr.pk},
                         format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    binding = GatewayBinding.objects.get()
    assert body == {"id": binding.pk, "gateway": edge.pk, "gateway_name": "edge-1",
                    "server": hr.pk, "server_name": "acme-hr", "created_by": "alice",
                    "created_at": body["created_at"], "requested_at": None,
                    "last_reported_at": None}
    listed = admin.get(f"{API}/gateway-bindings/?gateway={edge.pk}").json()
    assert [b["id"] for b in listed["results"]] == [binding.pk]
    server = admin.get(f"{API}/servers/{hr.pk}/").json()
    assert server["gateways"] == [{"id": edge.pk, "name": "edge-1", "binding": binding.pk,
                                   "requested_at": None, "last_reported_at": None}]
    again = admin.post(f"{API}/gateway-bindings/", {"gateway": edge.pk, "server": hr.pk},
                       format="json")
    assert again.status_code == 400
    assert again.json()["errors"] == {"server": ["edge-1 already fronts acme-hr."]}
    assert admin.delete(f"{API}/gateway-bindings/{binding.pk}/").status_code == 204
    assert not GatewayBinding.objects.exists()
    assert [e.action for e in AuditEvent.objects.filter(
        tenant=tenant_a, action__startswith="gateway.server_").order_by("seq")] == [
        "gateway.server_bound", "gateway.server_unbound"]


def test_the_api_refuses_non_admins_403_and_outsiders_404(as_user, api, token_for, cast,
                                                         tenant_a, tenant_b, hr, edge):
    binding = _bind(tenant_a, edge, hr)
    for name in ("bob", "audrey", "dave", "victor"):
        client = as_user(cast[name])
        assert client.get(f"{API}/gateway-bindings/{binding.pk}/").status_code == 200
        refused = client.post(f"{API}/gateway-bindings/", {"gateway": edge.pk,
                                                           "server": hr.pk}, format="json")
        assert refused.status_code == 403
        assert client.delete(f"{API}/gateway-bindings/{binding.pk}/").status_code == 403
    oscar = api(token_for(cast["oscar"], tenant_b))
    assert oscar.get(f"/api/v1/t/bravo/gateway-bindings/{binding.pk}/").status_code == 404
    assert oscar.delete(f"/api/v1/t/bravo/gateway-bindings/{binding.pk}/").status_code == 404
    foreign = oscar.post("/api/v1/t/bravo/gateway-bindings/", {"gateway": edge.pk,
                                                               "server": hr.pk}, format="json")
    assert foreign.status_code == 400
    assert set(foreign.json()["errors"]) == {"gateway", "server"}
    assert GatewayBinding.objects.count() == 1


def test_the_sync_api_of_a_stdio_server_asks_its_gateways_or_says_none_is_bound(
        admin, tenant_a, hr, edge, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        refused = admin.post(f"{API}/servers/{hr.pk}/sync/")
    assert refused.status_code == 400
    assert refused.json()["errors"]["gateways"][0].startswith("acme-hr is a stdio server")
    assert callbacks == [] and not ServerSync.objects.exists()
    _bind(tenant_a, edge, hr)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = admin.post(f"{API}/servers/{hr.pk}/sync/")
    assert response.status_code == 202
    body = response.json()
    assert (body["via"], body["status"], body["progress"]) == (
        "gateway", "queued", "Waiting for gateway edge-1 to report")
    assert callbacks == []


# --- Scheduled re-sync and server.json import -------------------------------------------------


def test_the_scheduled_resync_never_queues_a_worker_run_for_a_stdio_server(
        tenant_a, hr, edge, django_capture_on_commit_callbacks):
    tenant_a.registry_resync_minutes = 60
    tenant_a.save()
    lonely = services.server_create(tenant=tenant_a, actor=SYSTEM, name="lonely",
                                    transport="stdio", command=["/bin/sh", "-c", "id"])
    services.server_transition(tenant=tenant_a, actor=SYSTEM, server=lonely, status="active")
    _bind(tenant_a, edge, hr)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert tasks.resync_servers() == 1

    run = ServerSync.objects.get()
    assert (run.server, run.trigger, run.via) == (hr, "scheduled", "gateway")
    assert callbacks == []  # nothing for a worker; lonely (no gateway) is skipped
    assert gateway_discovery.status_headers(edge) == {
        "X-Tollgate-Discovery-Requested": "acme-hr"}


def test_an_imported_package_is_a_stdio_server_its_gateway_discovers(
        admin, tenant_a, edge, django_capture_on_commit_callbacks):
    document = {
        "$schema": "https://static.modelcontextprotocol.io/schemas/2025-09-29/server.schema.json",
        "name": "io.github.acme/hr", "description": "HR records", "version": "1.2.0",
        "packages": [{"registryType": "npm", "identifier": "@acme/hr-mcp", "version": "1.2.0",
                      "transport": {"type": "stdio"}}],
    }
    imported = admin.post(f"{API}/servers/import/", json.dumps(document),
                          content_type="application/json")
    assert imported.status_code == 201, imported.content
    server = McpServer.objects.get(registry_name="io.github.acme/hr")
    assert (server.transport, server.command) == ("stdio", ["npx", "-y", "@acme/hr-mcp@1.2.0"])
    _bind(tenant_a, edge, server)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        run, _ = sync.server_sync_request(tenant=tenant_a, actor=SYSTEM, server=server)
    assert run.via == "gateway" and callbacks == []


def test_a_reported_run_names_its_gateway_on_the_server_page(login, victor, tenant_a, hr, edge):
    _bind(tenant_a, edge, hr)
    gateway_discovery.discovery_record(gateway=edge, report=gateway_discovery.parse_report(
        {"server": "acme-hr", "tools": [{"name": "lookup", "inputSchema": {"type": "object"}}]}))
    page = _body(login(victor).get(f"/t/alpha/servers/{hr.pk}/"))
    assert 'reported by gateway <span id="sync-gateway">edge-1</span>' in page
    assert "Reported by a gateway" in page


def test_the_database_refuses_cross_tenant_bindings_and_runs(tenant_a, tenant_b, hr, edge):
    """Even code that skips the services cannot bind another tenant's gateway or server."""
    b_gateway = make_gateway(tenant_b, name="b-edge")[0]
    for make in (
        lambda: GatewayBinding.objects.create(tenant=tenant_a, gateway=b_gateway, server=hr),
        lambda: GatewayBinding.objects.create(tenant=tenant_b, gateway=b_gateway, server=hr),
        lambda: ServerSync.objects.create(tenant=tenant_a, server=hr, gateway=b_gateway,
                                          status="succeeded"),
    ):
        with pytest.raises(IntegrityError), transaction.atomic():
            make()
            connection.check_constraints()  # PostgreSQL defers the FK check to commit
    with transaction.atomic():
        GatewayBinding.objects.create(tenant=tenant_a, gateway=edge, server=hr)
        connection.check_constraints()
