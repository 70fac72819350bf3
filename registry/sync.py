"""Tool sync: request a ``tools/list`` run, execute it on a worker, sweep stuck and due runs.

The services here and in ``registry/gateway_discovery.py`` (runs a gateway reports) are the only
writers of ``ServerSync``. A run's life:

1. ``server_sync_request`` (web, API or the beat schedule) creates a *queued* run — or returns
   the one already open for that server, so a double click or an overlapping schedule never
   starts two — and enqueues ``registry.tasks.sync_server`` on commit. A stdio server's run
   instead waits for its gateways to report (``via`` gateway): the worker runs no command a
   tenant supplied, only those the operator allow-listed (``registry/stdio_sandbox.py``).
2. The task claims the run (``queued → running`` by a conditional UPDATE, so a redelivered
   message cannot run it twice), and ``server_sync_execute`` talks to the server with the
   official MCP SDK under a deadline, then applies the result in one transaction together with
   the run's outcome: either every tool change and *succeeded*, or nothing and *failed*.
3. ``syncs_fail_stale`` marks runs whose worker died (hard time limit, OOM, kill -9) as failed,
   so the server page never shows "running" forever.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import httpx2
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from governance import outbound
from governance.audit.services import Actor, audit_record
from governance.tasking import enqueue_on_commit
from governance.tenancy.models import Tenant
from registry import gateway_discovery, stdio_sandbox
from registry.discovery import discover_tools
from registry.discovery_errors import BLOCKED_ADDRESS, DiscoveryError
from registry.models import McpServer, ServerSync
from registry.services.tools import tools_record_discovery

logger = logging.getLogger(__name__)

# A run refused by the outbound guard (governance/outbound.py) fails with BLOCKED_ADDRESS.

# Servers in these states can be synced (a pending server is synced to review it before use).
SYNCABLE = (McpServer.Status.PENDING, McpServer.Status.ACTIVE, McpServer.Status.SUSPENDED)


def sync_timeout() -> float:
    """Seconds one run may talk to a server (connect + initialize + every tools/list page)."""
    return float(settings.REGISTRY_SYNC_TIMEOUT)


@transaction.atomic
def server_sync_request(
    *,
    tenant: Tenant,
    actor: Actor,
    server: McpServer,
    trigger: str = ServerSync.Trigger.MANUAL,
    requested_by: AbstractBaseUser | None = None,
) -> tuple[ServerSync, bool]:
    """Queue a sync of ``server``; returns (run, created). An open run is joined, not doubled."""
    server = McpServer.objects.for_tenant(tenant).select_for_update().get(pk=server.pk)
    if server.status not in SYNCABLE:
        raise ValidationError({"status": f"A {server.status} server is not synced."})
    open_run = server.syncs.filter(
        status__in=[ServerSync.Status.QUEUED, ServerSync.Status.RUNNING]
    ).first()
    if open_run is not None:
        return open_run, False
    # A stdio server's command is the tenant's: it runs where the server's gateway runs, and
    # only the gateway lists its tools (unless the operator allow-listed the exact command).
    via = ServerSync.Via.GATEWAY if gateway_discovery.needs_gateway(server) else (
        ServerSync.Via.WORKER)
    bindings = []
    if via == ServerSync.Via.GATEWAY:
        bindings = gateway_discovery.active_bindings(server)
        if not bindings:
            raise ValidationError({"gateways": gateway_discovery.no_gateway_message(server)})
    try:
        with transaction.atomic():
            run = ServerSync.objects.create(
                tenant=tenant,
                server=server,
                trigger=trigger,
                via=via,
                requested_by=requested_by,
                progress=(gateway_discovery.waiting_progress(bindings) if bindings
                          else "Waiting for a worker"),
            )
    except IntegrityError:  # a concurrent request created it first (unique open run)
        return server.syncs.get(
            status__in=[ServerSync.Status.QUEUED, ServerSync.Status.RUNNING]
        ), False
    server.latest_sync = run
    server.save(update_fields=["latest_sync"])
    audit_record(
        tenant=tenant,
        actor=actor,
        action="server.sync_requested",
        obj=server,
        after={"sync": run.pk, "trigger": trigger, "via": via}
        | ({"gateways": [b.gateway.name for b in bindings]} if bindings else {}),
    )
    if via == ServerSync.Via.GATEWAY:
        gateway_discovery.request_reports(server)  # named in their next status answers
    else:
        enqueue_on_commit("registry.tasks.sync_server", run.pk)
    return run, True


def server_sync_claim(run_id: int) -> ServerSync | None:
    """queued → running, exactly once per run (None when someone else already claimed it)."""
    now = timezone.now()
    claimed = ServerSync.objects.filter(pk=run_id, status=ServerSync.Status.QUEUED,
                                        via=ServerSync.Via.WORKER).update(
        status=ServerSync.Status.RUNNING,
        started_at=now,
        progress="Connecting to the server and listing its tools",
    )
    if not claimed:
        return None
    return ServerSync.objects.select_related("server", "tenant").get(pk=run_id)


class _GuardedTransport(httpx2.AsyncBaseTransport):
    """The MCP client's connections, pinned to addresses the outbound guard checked as they
    are made; a refusal ends the run as the check before it does (``blocked_address``)."""

    def __init__(self) -> None:
        self._inner = outbound.pinned_async_transport("MCP server")

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            return await self._inner.handle_async_request(request)
        except outbound.OutboundBlocked as exc:
            raise DiscoveryError(BLOCKED_ADDRESS, f"Not connected: {exc}") from None

    async def aclose(self) -> None:
        await self._inner.aclose()


def server_sync_execute(run: ServerSync) -> ServerSync:
    """Talk to the server (outside any transaction), then record the outcome atomically."""
    server = run.server
    command = server.command or None
    if server.transport == McpServer.Transport.STDIO:
        # Checked again here, whatever queued the run: the worker runs no command the
        # operator did not allow-list, and runs an allowed one sandboxed (stdio_sandbox.py).
        if not stdio_sandbox.allowed(server.command or []):
            return server_sync_fail(run=run, code="not_allowed", message=(
                "This worker runs no stdio server command that is not in "
                "STDIO_DISCOVERY_COMMANDS; the server's gateways report its tools."))
        command = stdio_sandbox.wrap(server.command)
    elif server.url:
        # Checked again now: DNS may have changed since the URL was saved. The MCP SDK follows
        # redirects only within the same origin, so every request goes to this host.
        try:
            outbound.check_url(server.url, purpose="MCP server")
        except outbound.OutboundBlocked as exc:
            return server_sync_fail(run=run, code=BLOCKED_ADDRESS,
                                    message=f"Not connected: {exc}")
    try:
        result = discover_tools(
            transport=server.transport,
            url=server.url or None,
            command=command,
            timeout=sync_timeout(),
            max_tools=settings.REGISTRY_MAX_TOOLS,
            # Connections go only to addresses checked as they are made (no second lookup).
            http_transport=_GuardedTransport,
        )
    except DiscoveryError as exc:
        return server_sync_fail(run=run, code=exc.code,
                                message=stdio_sandbox.unwrap_message(exc.message))
    except ValueError as exc:  # the registered server itself is unusable (bad command, URL)
        return server_sync_fail(run=run, code="invalid_server", message=str(exc))
    ServerSync.objects.filter(pk=run.pk, status=ServerSync.Status.RUNNING).update(
        progress=f"Recording {len(result.tools)} tools", tools_listed=len(result.tools)
    )
    try:
        return _record(run, result)
    except ValidationError as exc:
        return server_sync_fail(run=run, code="rejected", message=" ".join(exc.messages))


@transaction.atomic
def _record(run: ServerSync, result) -> ServerSync:
    tenant = run.tenant
    actor = Actor.system(f"tool sync #{run.pk}")
    run = ServerSync.objects.select_for_update().get(pk=run.pk)
    if run.status != ServerSync.Status.RUNNING:  # swept as stale meanwhile: do not resurrect
        return run
    summary = tools_record_discovery(
        tenant=tenant,
        actor=actor,
        server=run.server,
        definitions=[(tool, tool.definition_sha256) for tool in result.tools],
    )
    now = timezone.now()
    run.status = ServerSync.Status.SUCCEEDED
    run.finished_at = now
    run.tools_listed = len(result.tools)
    run.summary = vars(summary) | {"pages": result.pages}
    run.progress = "Done"
    run.save()
    McpServer.objects.filter(pk=run.server_id).update(last_synced_at=now)
    audit_record(
        tenant=tenant,
        actor=actor,
        action="server.synced",
        obj=run.server,
        after={
            "sync": run.pk,
            "tools": len(result.tools),
            "server_reports": {
                "name": result.server_name,
                "version": result.server_version,
                "protocol": result.protocol_version,
            },
        }
        | vars(summary),
    )
    return run


@transaction.atomic
def server_sync_fail(*, run: ServerSync, code: str, message: str) -> ServerSync:
    """Record a failed run (nothing of it was applied); the previous tools stay as they were."""
    run = (ServerSync.objects.select_for_update(of=("self",))
           .select_related("server", "tenant").get(pk=run.pk))
    if not run.is_open:
        return run
    run.status = ServerSync.Status.FAILED
    run.finished_at = timezone.now()
    run.error_code = code
    run.error_message = message[:4000]
    run.progress = "Failed"
    run.save()
    audit_record(
        tenant=run.tenant,
        actor=Actor.system(f"tool sync #{run.pk}"),
        action="server.sync_failed",
        obj=run.server,
        after={"sync": run.pk, "code": code, "message": run.error_message},
    )
    logger.warning("tool sync %s of server %s failed: %s", run.pk, run.server_id, code)
    return run


def syncs_fail_stale(now=None) -> int:
    """Fail open runs that no worker can still be working on; returns how many."""
    now = now or timezone.now()
    # A running run outlives its task's hard time limit only if the worker died.
    running_cutoff = now - timedelta(seconds=settings.REGISTRY_SYNC_TIME_LIMIT + 60)
    queued_cutoff = now - timedelta(seconds=settings.REGISTRY_SYNC_QUEUE_EXPIRY)
    report_cutoff = now - timedelta(seconds=settings.REGISTRY_GATEWAY_REPORT_GRACE)
    stale = ServerSync.objects.filter(
        Q(status=ServerSync.Status.RUNNING, started_at__lt=running_cutoff)
        | Q(status=ServerSync.Status.QUEUED, via=ServerSync.Via.WORKER,
            created_at__lt=queued_cutoff)
        | Q(status=ServerSync.Status.QUEUED, via=ServerSync.Via.GATEWAY,
            created_at__lt=report_cutoff)
    )
    count = 0
    for run in stale.select_related("server", "tenant"):
        was = run.status
        if run.via == ServerSync.Via.GATEWAY:
            server_sync_fail(run=run, code="no_gateway_report",
                             message=gateway_discovery.stale_message(run))
            gateway_discovery.requests_withdraw(run.server)
            count += 1
            continue
        server_sync_fail(
            run=run,
            code="worker_lost" if was == ServerSync.Status.RUNNING else "not_started",
            message=(
                "The worker running this sync stopped before it finished; start the sync again."
                if was == ServerSync.Status.RUNNING
                else "No worker picked this sync up in time; check that the Celery worker runs."
            ),
        )
        count += 1
    return count


def servers_due_for_resync(now=None) -> list[McpServer]:
    """Active servers whose tenant interval has passed since their last run started."""
    now = now or timezone.now()
    due = []
    tenants = Tenant.objects.filter(registry_resync_minutes__gt=0)
    for tenant in tenants:
        cutoff = now - timedelta(minutes=tenant.registry_resync_minutes)
        servers = (
            McpServer.objects.for_tenant(tenant)
            .filter(status=McpServer.Status.ACTIVE)
            .filter(Q(latest_sync__isnull=True) | Q(latest_sync__created_at__lt=cutoff))
            .exclude(latest_sync__status__in=[ServerSync.Status.QUEUED, ServerSync.Status.RUNNING])
            .select_related("tenant")
        )
        # A stdio server no active gateway fronts cannot be synced: skipped, not failed.
        due.extend(s for s in servers
                   if not gateway_discovery.needs_gateway(s)
                   or gateway_discovery.active_bindings(s))
    return due
