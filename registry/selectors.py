"""Reads of the registry, tenant first; list querysets carry everything their rows show, so the
number of queries of a list page or endpoint does not grow with its rows."""

from __future__ import annotations

from django.db.models import Count, Prefetch, Q, QuerySet
from django.utils import timezone

from governance.tenancy.models import Tenant
from registry.models import Agent, AgentPrincipal, Grant, McpServer, ServerSync, Tool, ToolScope

REVIEW_STATES = (Tool.Status.PENDING_REVIEW, Tool.Status.QUARANTINED)
"""The tool states a person has to look at (new or changed definitions)."""


def server_list(
    tenant: Tenant, *, search: str = "", status: str = "", transport: str = ""
) -> QuerySet[McpServer]:
    servers = (
        McpServer.objects.for_tenant(tenant)
        .select_related("owner", "latest_sync")
        .prefetch_related("bindings__gateway")
        .annotate(
            tool_count=Count("tools", filter=Q(tools__present=True), distinct=True),
            review_count=Count(
                "tools",
                filter=Q(tools__status__in=REVIEW_STATES),
                distinct=True,
            ),
        )
    )
    if search:
        servers = servers.filter(
            Q(name__icontains=search) | Q(description__icontains=search) | Q(url__icontains=search)
        )
    if status:
        servers = servers.filter(status=status)
    if transport:
        servers = servers.filter(transport=transport)
    return servers.order_by("name")


def tool_list(
    tenant: Tenant,
    *,
    server: McpServer | int | None = None,
    status: str = "",
    search: str = "",
    present: bool | None = None,
) -> QuerySet[Tool]:
    tools = Tool.objects.for_tenant(tenant).select_related("server")
    if server is not None:
        tools = tools.filter(server=server)
    if status:
        tools = tools.filter(status=status)
    if present is not None:
        tools = tools.filter(present=present)
    if search:
        tools = tools.filter(
            Q(name__icontains=search) | Q(title__icontains=search)
            | Q(description__icontains=search)
        )
    return tools.order_by("server__name", "name")


def tools_needing_review(tenant: Tenant, *, server: McpServer | int | None = None
                         ) -> QuerySet[Tool]:
    return tool_list(tenant, server=server).filter(status__in=REVIEW_STATES)


def server_any(tenant: Tenant) -> bool:
    """Whether the tenant registered any server at all (the empty list's first-step hint)."""
    return McpServer.objects.for_tenant(tenant).exists()


def server_syncs(tenant: Tenant, server: McpServer) -> QuerySet[ServerSync]:
    return ServerSync.objects.for_tenant(tenant).filter(server=server).select_related(
        "requested_by"
    )


def scope_list(tenant: Tenant, *, search: str = "", risk_level: str = "") -> QuerySet[ToolScope]:
    scopes = (
        ToolScope.objects.for_tenant(tenant)
        .annotate(
            tool_count=Count("tools", distinct=True),
            active_grant_count=Count(
                "grants", filter=Q(grants__status=Grant.Status.ACTIVE), distinct=True
            ),
        )
        .prefetch_related(Prefetch("tools", queryset=Tool.objects.select_related("server")))
    )
    if search:
        scopes = scopes.filter(Q(name__icontains=search) | Q(description__icontains=search))
    if risk_level:
        scopes = scopes.filter(risk_level=risk_level)
    return scopes.order_by("name")


def scope_tools(tenant: Tenant, scope: ToolScope) -> QuerySet[Tool]:
    return (Tool.objects.for_tenant(tenant).filter(scopes=scope).select_related("server")
            .order_by("server__name", "name"))


def tool_scopes(tenant: Tenant, tool: Tool) -> QuerySet[ToolScope]:
    return ToolScope.objects.for_tenant(tenant).filter(tools=tool).order_by("name")


def agent_list(
    tenant: Tenant, *, search: str = "", status: str = "", owner=None
) -> QuerySet[Agent]:
    now = timezone.now()
    agents = (
        Agent.objects.for_tenant(tenant)
        .select_related("owner")
        .prefetch_related(Prefetch("principals", queryset=AgentPrincipal.objects.order_by("id")))
        .annotate(
            active_grant_count=Count(
                "grants",
                filter=Q(grants__status=Grant.Status.ACTIVE)
                & (Q(grants__expires_at__isnull=True) | Q(grants__expires_at__gt=now)),
                distinct=True,
            )
        )
    )
    if search:
        agents = agents.filter(
            Q(name__icontains=search) | Q(purpose__icontains=search)
            | Q(principals__subject__icontains=search)
        ).distinct()
    if status:
        agents = agents.filter(status=status)
    if owner is not None:
        agents = agents.filter(owner=owner)
    return agents.order_by("name")


def grant_list(
    tenant: Tenant,
    *,
    agent: Agent | int | None = None,
    scope: ToolScope | int | None = None,
    status: str = "",
    in_force: bool | None = None,
) -> QuerySet[Grant]:
    grants = Grant.objects.for_tenant(tenant).select_related("agent", "scope", "created_by")
    if agent is not None:
        grants = grants.filter(agent=agent)
    if scope is not None:
        grants = grants.filter(scope=scope)
    if status:
        grants = grants.filter(status=status)
    if in_force is not None:
        now = timezone.now()
        live = Q(status=Grant.Status.ACTIVE) & (Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        grants = grants.filter(live) if in_force else grants.exclude(live)
    return grants.order_by("-created_at", "-id")


# Added with the REST API (registry/api): tenant-wide lists of sync runs and principals.


def sync_list(
    tenant: Tenant, *, server: McpServer | int | None = None, status: str = ""
) -> QuerySet[ServerSync]:
    syncs = ServerSync.objects.for_tenant(tenant).select_related("server", "requested_by",
                                                                 "gateway")
    if server is not None:
        syncs = syncs.filter(server=server)
    if status:
        syncs = syncs.filter(status=status)
    return syncs.order_by("-created_at", "-id")


def principal_list(
    tenant: Tenant, *, agent: Agent | int | None = None
) -> QuerySet[AgentPrincipal]:
    principals = AgentPrincipal.objects.for_tenant(tenant).select_related("agent")
    if agent is not None:
        principals = principals.filter(agent=agent)
    return principals.order_by("issuer", "subject", "id")
