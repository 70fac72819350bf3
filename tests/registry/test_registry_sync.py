"""Tool sync runs (registry/sync.py, registry/tasks.py) against real MCP servers.

The service-level tests call the same functions the Celery task calls, in this process, against
the real mutable MCP server (official SDK over streamable HTTP) and against impostors; the
worker tests at the end start a real ``celery worker`` process.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from governance.audit.models import AuditEvent
from governance.audit.services import Actor
from registry import services, sync, tasks
from registry.models import McpServer, ServerSync, Tool
from tests.mcp_servers.not_mcp import CannedHttpServer, SilentServer
from tests.mcp_support import tool

SYSTEM = Actor.system("test")


def _server(tenant, url, *, status=McpServer.Status.ACTIVE, name="payroll"):
    server = services.server_create(
        tenant=tenant, actor=SYSTEM, name=name, transport="streamable-http", url=url
    )
    path = {"pending": [], "active": ["active"], "suspended": ["active", "suspended"],
            "retired": ["retired"]}[status]
    for step in path:
        server = services.server_transition(tenant=tenant, actor=SYSTEM, server=server,
                                            status=step)
    return server


def _run(tenant, server) -> ServerSync:
    """Request, claim and execute one sync in this process, as the worker would."""
    run, created = sync.server_sync_request(tenant=tenant, actor=SYSTEM, server=server)
    assert created
    claimed = sync.server_sync_claim(run.pk)
    assert claimed is not None
    return sync.server_sync_execute(claimed)


@pytest.fixture
def fast(settings):
    settings.REGISTRY_SYNC_TIMEOUT = 5
    return settings


def test_a_sync_records_new_tools_pending_review(tenant_a, mcp_server, fast):
    mcp_server.serve([tool("lookup"), tool("refund")])
    server = _server(tenant_a, mcp_server.url)

    run = _run(tenant_a, server)

    assert run.status == ServerSync.Status.SUCCEEDED, run.error_message
    assert run.tools_listed == 2
    assert run.summary["new"] == 2
    assert run.progress == "Done"
    tools = Tool.objects.for_tenant(tenant_a).filter(server=server)
    assert {t.name: t.status for t in tools} == {
        "lookup": "pending_review", "refund": "pending_review"
    }
    server.refresh_from_db()
    assert server.latest_sync_id == run.pk
    assert server.last_synced_at == run.finished_at
    synced = AuditEvent.objects.get(tenant=tenant_a, action="server.synced")
    assert synced.after["new"] == 2
    assert synced.after["server_reports"]["name"]  # what the server said about itself
    assert synced.actor_label == f"tool sync #{run.pk}"


def test_drift_behind_the_registrys_back_quarantines_the_tool(tenant_a, mcp_server, fast):
    mcp_server.serve([tool("refund")])
    server = _server(tenant_a, mcp_server.url)
    _run(tenant_a, server)
    refund = Tool.objects.get(server=server, name="refund")
    services.tool_approve(tenant=tenant_a, actor=SYSTEM, tool=refund)
    pinned = Tool.objects.get(pk=refund.pk).definition_sha256

    mcp_server.serve([tool("refund", description="Refund anything, to any account.")])
    run = _run(tenant_a, server)

    assert run.summary["drifted"] == 1
    refund.refresh_from_db()
    assert refund.status == Tool.Status.QUARANTINED
    assert refund.definition_sha256 == pinned  # the approved definition stays pinned
    assert refund.drifted_definition["description"] == "Refund anything, to any account."
    alert = AuditEvent.objects.get(tenant=tenant_a, action="tool.drift_detected")
    assert alert.before == {"status": "approved", "sha256": pinned}


def test_a_tool_the_server_stopped_listing_is_marked_absent(tenant_a, mcp_server, fast):
    mcp_server.serve([tool("lookup"), tool("refund")])
    server = _server(tenant_a, mcp_server.url)
    _run(tenant_a, server)

    mcp_server.serve([tool("lookup")])
    run = _run(tenant_a, server)

    assert run.summary["disappeared"] == 1
    assert Tool.objects.get(server=server, name="refund").present is False


def test_an_unreachable_server_fails_the_run_and_changes_nothing(tenant_a, mcp_server, fast):
    mcp_server.serve([tool("lookup")])
    server = _server(tenant_a, mcp_server.url)
    _run(tenant_a, server)
    services.server_update(tenant=tenant_a, actor=SYSTEM, server=server,
                           url="http://127.0.0.1:9/mcp")  # discard port: nothing listens

    run = _run(tenant_a, server)

    assert run.status == ServerSync.Status.FAILED
    assert run.error_code == "unreachable"
    assert "127.0.0.1:9" in run.error_message
    assert Tool.objects.get(server=server, name="lookup").present is True  # untouched
    failed = AuditEvent.objects.get(tenant=tenant_a, action="server.sync_failed")
    assert failed.after["code"] == "unreachable"


def test_a_server_that_never_answers_times_out(tenant_a, settings):
    settings.REGISTRY_SYNC_TIMEOUT = 1
    with SilentServer() as silent:
        server = _server(tenant_a, silent.url)
        run = _run(tenant_a, server)
    assert run.status == ServerSync.Status.FAILED
    assert run.error_code == "timeout"
    assert Tool.objects.for_tenant(tenant_a).count() == 0


def test_a_malformed_answer_fails_the_run(tenant_a, fast):
    with CannedHttpServer(content_type="application/json", body=b'{"jsonrpc": "2.0", "id": 1, '
                          b'"result": {"tools": "not a list"}}') as canned:
        server = _server(tenant_a, canned.url)
        run = _run(tenant_a, server)
    assert run.status == ServerSync.Status.FAILED
    assert run.error_code == "protocol"
    assert Tool.objects.for_tenant(tenant_a).count() == 0


def test_ten_thousand_tools_are_refused_whole(tenant_a, mcp_server, settings):
    settings.REGISTRY_SYNC_TIMEOUT = 60
    mcp_server.serve(
        [{"name": f"tool_{i:05d}", "inputSchema": {"type": "object"}} for i in range(10_000)],
        page_size=500,
    )
    server = _server(tenant_a, mcp_server.url)

    run = _run(tenant_a, server)

    assert run.status == ServerSync.Status.FAILED
    assert run.error_code == "too_many_tools"
    assert Tool.objects.for_tenant(tenant_a).count() == 0


def test_a_stdio_server_nobody_here_wrote_is_synced_and_stays_unchanged(
    tenant_a, everything_stdio_wrapper, settings
):
    """npm @modelcontextprotocol/server-everything, spawned over stdio by the sync itself: the
    operator allow-listed the exact wrapper that starts it (STDIO_DISCOVERY_COMMANDS), and the
    worker runs it sandboxed (registry/stdio_sandbox.py)."""
    settings.REGISTRY_SYNC_TIMEOUT = 30
    settings.STDIO_DISCOVERY_COMMANDS = [str(everything_stdio_wrapper)]
    server = services.server_create(tenant=tenant_a, actor=SYSTEM, name="everything",
                                    transport="stdio", command=[str(everything_stdio_wrapper)])
    first = _run(tenant_a, server)
    assert first.status == ServerSync.Status.SUCCEEDED, first.error_message
    names = set(Tool.objects.filter(server=server).values_list("name", flat=True))
    assert {"echo", "get-sum"} <= names
    assert first.summary["new"] == len(names) == first.tools_listed

    second = _run(tenant_a, server)  # a new process: same definitions, same hashes
    assert second.summary["unchanged"] == len(names)
    assert second.summary["new"] == second.summary["drifted"] == second.summary["updated"] == 0


def test_a_second_request_joins_the_open_run(tenant_a, mcp_server):
    server = _server(tenant_a, mcp_server.url)
    first, created = sync.server_sync_request(tenant=tenant_a, actor=SYSTEM, server=server)
    again, created_again = sync.server_sync_request(tenant=tenant_a, actor=SYSTEM, server=server)
    assert created and not created_again
    assert again.pk == first.pk
    assert ServerSync.objects.filter(server=server).count() == 1
    assert AuditEvent.objects.filter(action="server.sync_requested").count() == 1


def test_a_run_is_claimed_once(tenant_a, mcp_server):
    server = _server(tenant_a, mcp_server.url)
    run, _ = sync.server_sync_request(tenant=tenant_a, actor=SYSTEM, server=server)
    assert sync.server_sync_claim(run.pk) is not None
    assert sync.server_sync_claim(run.pk) is None  # a redelivered message does nothing
    assert tasks.sync_server(run.pk) == "already claimed"


def test_a_retired_server_is_not_synced(tenant_a, mcp_server):
    server = _server(tenant_a, mcp_server.url, status=McpServer.Status.RETIRED)
    with pytest.raises(ValidationError) as caught:
        sync.server_sync_request(tenant=tenant_a, actor=SYSTEM, server=server)
    assert caught.value.message_dict == {"status": ["A retired server is not synced."]}


def test_the_sync_task_runs_the_whole_run(tenant_a, mcp_server, fast):
    mcp_server.serve([tool("lookup")])
    server = _server(tenant_a, mcp_server.url)
    run, _ = sync.server_sync_request(tenant=tenant_a, actor=SYSTEM, server=server)
    assert tasks.sync_server(run.pk) == "succeeded"
    assert Tool.objects.filter(server=server, name="lookup").exists()


def test_runs_whose_worker_died_are_failed_by_the_sweep(tenant_a, mcp_server, settings):
    server = _server(tenant_a, mcp_server.url)
    run, _ = sync.server_sync_request(tenant=tenant_a, actor=SYSTEM, server=server)
    sync.server_sync_claim(run.pk)
    later = timezone.now() + timedelta(seconds=settings.REGISTRY_SYNC_TIME_LIMIT + 61)

    assert sync.syncs_fail_stale(now=timezone.now()) == 0
    assert sync.syncs_fail_stale(now=later) == 1

    run.refresh_from_db()
    assert run.status == ServerSync.Status.FAILED
    assert run.error_code == "worker_lost"
    # The server can be synced again right away.
    _, created = sync.server_sync_request(tenant=tenant_a, actor=SYSTEM, server=server)
    assert created


def test_a_run_no_worker_picked_up_expires(tenant_a, mcp_server, settings):
    server = _server(tenant_a, mcp_server.url)
    run, _ = sync.server_sync_request(tenant=tenant_a, actor=SYSTEM, server=server)
    later = timezone.now() + timedelta(seconds=settings.REGISTRY_SYNC_QUEUE_EXPIRY + 1)
    assert sync.syncs_fail_stale(now=later) == 1
    run.refresh_from_db()
    assert (run.status, run.error_code) == (ServerSync.Status.FAILED, "not_started")


def test_a_swept_run_is_not_resurrected_by_a_late_worker(tenant_a, mcp_server, fast):
    mcp_server.serve([tool("lookup")])
    server = _server(tenant_a, mcp_server.url)
    run, _ = sync.server_sync_request(tenant=tenant_a, actor=SYSTEM, server=server)
    claimed = sync.server_sync_claim(run.pk)
    sync.server_sync_fail(run=claimed, code="worker_lost", message="swept")

    result = sync.server_sync_execute(claimed)

    assert result.status == ServerSync.Status.FAILED
    assert Tool.objects.for_tenant(tenant_a).count() == 0


def test_resync_follows_each_tenants_interval(tenant_a, tenant_b, mcp_server):
    tenant_a.registry_resync_minutes = 30
    tenant_a.save()
    tenant_b.registry_resync_minutes = 0  # manual only
    tenant_b.save()
    due_a = _server(tenant_a, mcp_server.url)
    _server(tenant_a, mcp_server.url, status=McpServer.Status.SUSPENDED, name="paused")
    _server(tenant_b, mcp_server.url)

    assert [s.pk for s in sync.servers_due_for_resync()] == [due_a.pk]  # never synced yet

    assert tasks.resync_servers() == 1
    run = ServerSync.objects.get(server=due_a)
    assert run.trigger == ServerSync.Trigger.SCHEDULED
    assert sync.servers_due_for_resync() == []  # a run is open
    sync.server_sync_claim(run.pk)
    sync.server_sync_fail(run=run, code="x", message="x")
    assert sync.servers_due_for_resync() == []  # ran less than 30 minutes ago
    assert [s.pk for s in sync.servers_due_for_resync(
        now=timezone.now() + timedelta(minutes=31))] == [due_a.pk]


# --- With a real Celery worker (PostgreSQL: the worker reads the test database) ---------------


@pytest.mark.postgres
def test_a_real_worker_runs_the_sync_and_survives_a_hanging_server(
    celery_worker_process, tenant_a, mcp_server
):
    worker = celery_worker_process(REGISTRY_SYNC_TIMEOUT="2")
    mcp_server.serve([tool("lookup"), tool("refund")])
    good = _server(tenant_a, mcp_server.url)

    run, _ = sync.server_sync_request(tenant=tenant_a, actor=SYSTEM, server=good)
    worker.wait_until(lambda: not ServerSync.objects.get(pk=run.pk).is_open)

    run.refresh_from_db()
    assert run.status == ServerSync.Status.SUCCEEDED, run.error_message
    assert set(Tool.objects.filter(server=good).values_list("name", flat=True)) == {
        "lookup", "refund"
    }

    with SilentServer() as silent:
        hanging = _server(tenant_a, silent.url, name="hangs")
        stuck, _ = sync.server_sync_request(tenant=tenant_a, actor=SYSTEM, server=hanging)
        worker.wait_until(lambda: not ServerSync.objects.get(pk=stuck.pk).is_open)
    stuck.refresh_from_db()
    assert (stuck.status, stuck.error_code) == (ServerSync.Status.FAILED, "timeout")

    # The worker is free again: the next sync of the good server completes.
    mcp_server.serve([tool("lookup")])
    again, created = sync.server_sync_request(tenant=tenant_a, actor=SYSTEM, server=good)
    assert created
    worker.wait_until(lambda: not ServerSync.objects.get(pk=again.pk).is_open)
    again.refresh_from_db()
    assert again.summary["disappeared"] == 1
