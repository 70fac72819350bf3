"""Tool discovery reported by gateways: the control plane never runs a tenant's command.

A stdio MCP server runs where its gateway runs, so its tools are listed by that gateway
(``tools/list``) and reported over the gateway API (``POST /api/v1/gateway/discovery``,
``registry/gateway_api.py``). A report is recorded exactly as a worker sync: the same
``tools_record_discovery`` (pin, review, drift quarantine, audit events, drift alerts), as a
``ServerSync`` run of trigger ``gateway`` that names the gateway.

* A gateway reports only for servers it is bound to (``GatewayBinding``, managed by tenant
  admins on the gateway's page and through the API, audited).
* "Sync tools" on such a server records a *requested* run (``via`` gateway, queued) and flags
  the server's bindings; the answer to each bound gateway's next ``POST status`` carries
  ``X-Tollgate-Discovery-Requested: <server name>[, …]`` until a report arrives. The next
  report completes the open run; ``registry.sync.syncs_fail_stale`` fails one nobody answers
  within REGISTRY_GATEWAY_REPORT_GRACE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from bundles.models import Gateway
from bundles.services import gateway_actor
from governance.audit.services import Actor, audit_record
from governance.tenancy.models import Tenant
from registry import stdio_sandbox
from registry.discovery import ToolDefinition, canonical_definition
from registry.models import GatewayBinding, McpServer, ServerSync, Tool
from registry.services.tools import tools_record_discovery

DISCOVERY_HEADER = "X-Tollgate-Discovery-Requested"
# Servers in these states take reports (as registry.sync.SYNCABLE: a retired server does not).
REPORTABLE = (McpServer.Status.PENDING, McpServer.Status.ACTIVE, McpServer.Status.SUSPENDED)


class Refused(Exception):
    """A report the gateway API answers with an error (``status``, ``code``, ``message``)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def needs_gateway(server: McpServer) -> bool:
    """Whether the server's tools can only come from its gateways (a stdio command that is
    not on the operator's allow-list)."""
    return (server.transport == McpServer.Transport.STDIO
            and not stdio_sandbox.allowed(server.command or []))


def active_bindings(server: McpServer) -> list[GatewayBinding]:
    return list(server.bindings.select_related("gateway")
                .filter(gateway__status=Gateway.Status.ACTIVE).order_by("gateway__name"))


def no_gateway_message(server: McpServer) -> str:
    return (f"{server.name} is a stdio server: its tools are listed by the gateway that runs "
            "it, and no active gateway is bound to it. Bind it on a gateway's page (Gateways → "
            "the gateway → Servers it fronts), then sync again; nothing was queued.")


# --- Bindings -----------------------------------------------------------------------------------


@transaction.atomic
def gateway_server_bind(
    *,
    tenant: Tenant,
    actor: Actor,
    gateway: Gateway,
    server: McpServer,
    created_by: AbstractBaseUser | None = None,
) -> GatewayBinding:
    """Let ``gateway`` report ``server``'s tools (and ask it to on "Sync tools")."""
    if gateway.tenant_id != tenant.pk or server.tenant_id != tenant.pk:
        raise ValidationError({"server": "No such server in this tenant."})
    if server.status == McpServer.Status.RETIRED:
        raise ValidationError({"server": f"{server.name} is retired; it cannot be bound."})
    if GatewayBinding.objects.filter(gateway=gateway, server=server).exists():
        raise ValidationError({"server": f"{gateway.name} already fronts {server.name}."})
    binding = GatewayBinding.objects.create(tenant=tenant, gateway=gateway, server=server,
                                            created_by=created_by)
    audit_record(tenant=tenant, actor=actor, action="gateway.server_bound", obj=gateway,
                 after={"server": server.name, "server_id": server.pk})
    return binding


@transaction.atomic
def gateway_server_unbind(*, tenant: Tenant, actor: Actor, binding: GatewayBinding) -> None:
    """The gateway no longer reports the server's tools (what it reported stays)."""
    binding = GatewayBinding.objects.for_tenant(tenant).select_related(
        "gateway", "server").get(pk=binding.pk)
    binding.delete()
    audit_record(tenant=tenant, actor=actor, action="gateway.server_unbound",
                 obj=binding.gateway,
                 before={"server": binding.server.name, "server_id": binding.server_id})


# --- Requests (from registry.sync.server_sync_request) and the status header ------------------


def request_reports(server: McpServer) -> list[GatewayBinding]:
    """Flag the server's active bindings (the caller holds the server's row lock)."""
    bindings = active_bindings(server)
    GatewayBinding.objects.filter(pk__in=[b.pk for b in bindings]).update(
        requested_at=timezone.now())
    return bindings


def requests_withdraw(server: McpServer) -> None:
    """The request ended unanswered: its gateways are no longer asked (nor shown as asked)."""
    GatewayBinding.objects.filter(server=server).update(requested_at=None)


def waiting_progress(bindings: list[GatewayBinding]) -> str:
    names = ", ".join(b.gateway.name for b in bindings)
    noun = "gateway" if len(bindings) == 1 else "gateways"
    return f"Waiting for {noun} {names} to report"[:200]


def status_headers(gateway: Gateway) -> dict[str, str]:
    """The discovery header of the answer to ``gateway``'s ``POST status`` (or none)."""
    names = [
        name for name in GatewayBinding.objects.filter(
            gateway=gateway, requested_at__isnull=False,
            server__latest_sync__via=ServerSync.Via.GATEWAY,
            server__latest_sync__status=ServerSync.Status.QUEUED,
        ).order_by("server__name").values_list("server__name", flat=True)
        # A name a header cannot carry unambiguously (a comma, a line break, non-ASCII) is
        # left out: that server's gateway still reports on start and on its own schedule.
        if name.isascii() and name.isprintable() and "," not in name
    ]
    return {DISCOVERY_HEADER: ", ".join(names)} if names else {}


def stale_message(run: ServerSync) -> str:
    """Why a requested run failed: nobody reported in time, and when each gateway last did."""
    grace = settings.REGISTRY_GATEWAY_REPORT_GRACE
    within = (f"{grace} s" if grace % 60 else
              f"{grace // 60} minute{'s' if grace != 60 else ''}")
    bindings = list(run.server.bindings.select_related("gateway").order_by("gateway__name"))
    if not bindings:
        last = "no gateway is bound to this server any more"
    else:
        last = "; ".join(
            f"{b.gateway.name} last reported {b.last_reported_at:%Y-%m-%d %H:%M:%S} UTC"
            if b.last_reported_at else f"{b.gateway.name} has never reported"
            for b in bindings)
    return (f"No gateway reported the tools of {run.server.name} within {within} "
            f"({last}). Check that the gateway runs with --server-name {run.server.name} and "
            "reaches the control plane, then sync again.")


# --- Reports ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    server: str
    tools: list[ToolDefinition]
    server_name: str
    server_version: str


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


def _invalid(message: str) -> Refused:
    return Refused(400, "invalid_report", message)


def parse_report(body: Any) -> Report:
    """The report, validated whole before anything is stored (``Refused`` 400 otherwise)."""
    if not isinstance(body, dict):
        raise _invalid("A discovery report is a JSON object {server, tools, server_info?}.")
    if _has_nul(body):
        raise _invalid("A discovery report cannot contain NUL characters (\\u0000).")
    server = body.get("server")
    if not isinstance(server, str) or not server.strip():
        raise _invalid("server: the server's name (as in the bundle) is required.")
    raw_tools = body.get("tools")
    if not isinstance(raw_tools, list):
        raise _invalid("tools: must be a list of MCP Tool objects (every page of tools/list).")
    if len(raw_tools) > settings.REGISTRY_MAX_TOOLS:
        raise _invalid(f"tools: {len(raw_tools)} tools is more than the limit of "
                       f"{settings.REGISTRY_MAX_TOOLS} (REGISTRY_MAX_TOOLS).")
    tools: list[ToolDefinition] = []
    names: set[str] = set()
    for index, raw in enumerate(raw_tools):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise _invalid(f"tools[{index}]: a tool is an object with a string name.")
        try:
            tool = ToolDefinition.from_wire(raw)
            canonical_definition(tool)
        except (ValueError, TypeError, RecursionError) as exc:
            raise _invalid(f"tools[{index}] ({raw['name'][:100]!r}): {exc}") from None
        if tool.name in names:
            raise _invalid(f"tools[{index}]: two tools are named {tool.name[:100]!r}; tool names "
                           "must be unique.")
        names.add(tool.name)
        tools.append(tool)
    info = body.get("server_info") or {}
    if not isinstance(info, dict) or not all(
            isinstance(info.get(k, ""), str) for k in ("name", "version")):
        raise _invalid("server_info: an object with string name and version (from initialize).")
    return Report(server=server, tools=tools, server_name=info.get("name", "")[:200],
                  server_version=info.get("version", "")[:200])


@transaction.atomic
def discovery_record(*, gateway: Gateway, report: Report) -> tuple[ServerSync, int]:
    """Record a gateway's report as a sync run; returns (run, tools of the server quarantined).

    404 for a server unknown in the gateway's tenant or not bound to this gateway (the two are
    not told apart), 409 for a retired one.
    """
    tenant = gateway.tenant
    server = (McpServer.objects.for_tenant(tenant).select_for_update(of=("self",))
              .filter(name=report.server).first())
    binding = (GatewayBinding.objects.filter(gateway=gateway, server=server).first()
               if server is not None else None)
    if binding is None:
        raise Refused(404, "not_found", f"No server named {report.server[:200]!r} is bound to "
                      "this gateway.")
    if server.status not in REPORTABLE:
        raise Refused(409, "not_synced", f"{server.name} is {server.status}; its tools are no "
                      "longer recorded.")
    actor = gateway_actor(gateway)
    now = timezone.now()
    # The run "Sync tools" opened for the gateways, if any; otherwise a run of its own.
    run = server.syncs.select_for_update().filter(
        via=ServerSync.Via.GATEWAY, status=ServerSync.Status.QUEUED).first()
    if run is None:
        run = ServerSync(tenant=tenant, server=server, trigger=ServerSync.Trigger.GATEWAY,
                         via=ServerSync.Via.GATEWAY, created_at=now)
    try:
        summary = tools_record_discovery(
            tenant=tenant, actor=actor, server=server,
            definitions=[(tool, tool.definition_sha256) for tool in report.tools])
    except ValidationError as exc:
        raise _invalid(" ".join(exc.messages)) from None
    run.status = ServerSync.Status.SUCCEEDED
    run.gateway = gateway
    run.started_at = run.started_at or now
    run.finished_at = now
    run.tools_listed = len(report.tools)
    run.summary = vars(summary) | {"pages": None}
    run.progress = f"Reported by gateway {gateway.name}"[:200]
    run.save()
    latest = server.latest_sync
    # A worker run still open stays the one the server page follows.
    keep_latest = latest is not None and latest.pk != run.pk and latest.is_open
    McpServer.objects.filter(pk=server.pk).update(
        last_synced_at=now, **({} if keep_latest else {"latest_sync": run}))
    GatewayBinding.objects.filter(server=server).update(requested_at=None)
    GatewayBinding.objects.filter(pk=binding.pk).update(last_reported_at=now)
    audit_record(
        tenant=tenant, actor=actor, action="server.synced", obj=server,
        after={
            "sync": run.pk, "tools": len(report.tools), "gateway": gateway.name,
            "server_reports": {"name": report.server_name, "version": report.server_version,
                               "protocol": None},
        } | vars(summary),
    )
    quarantined = Tool.objects.filter(server=server, status=Tool.Status.QUARANTINED).count()
    return run, quarantined


def report_answer(run: ServerSync, quarantined: int) -> dict[str, Any]:
    """The 200 body: ``{server, sync: {id, status, added, changed, removed, quarantined}}``."""
    summary = run.summary
    return {
        "server": run.server.name,
        "sync": {
            "id": run.pk, "status": run.status,
            "added": summary.get("new", 0),
            "changed": summary.get("drifted", 0) + summary.get("updated", 0),
            "removed": summary.get("disappeared", 0),
            "quarantined": quarantined,
        },
    }
