"""Single registry objects for a caller: 404 outside the tenant, 403 without the right to change.

Servers, tools, scopes and grants are changed by registry managers (admins). Agents are also
changed by their owners: a developer holding the django-guardian object permission
``registry.manage_agent`` on that agent (granted when the agent is created for them).
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from guardian.shortcuts import get_objects_for_user

from governance.tenancy.access import TenantContext, access_object
from governance.tenancy.roles import Cap
from registry.models import Agent, AgentPrincipal, Grant, McpServer, ServerSync, Tool, ToolScope
from registry.services import AGENT_PERMISSION


def _registry_object(ctx: TenantContext, model, pk, *, write: bool):
    obj = access_object(ctx.tenant, model, pk)
    if write:
        ctx.require(Cap.MANAGE_REGISTRY)
    return obj


def access_server(ctx: TenantContext, pk, *, write: bool = False) -> McpServer:
    return _registry_object(ctx, McpServer, pk, write=write)


def access_sync(ctx: TenantContext, pk) -> ServerSync:
    return access_object(ctx.tenant, ServerSync, pk)


def access_tool(ctx: TenantContext, pk, *, write: bool = False) -> Tool:
    return _registry_object(ctx, Tool, pk, write=write)


def access_scope(ctx: TenantContext, pk, *, write: bool = False) -> ToolScope:
    return _registry_object(ctx, ToolScope, pk, write=write)


def access_grant(ctx: TenantContext, pk, *, write: bool = False) -> Grant:
    return _registry_object(ctx, Grant, pk, write=write)


def _agent_reach(ctx: TenantContext) -> str:
    """Who may act for an agent (manage it, request access for it), the one rule: registry
    managers (admins) for every agent ("all"); owners (developers) for the agents they hold the
    object permission on ("owned"), also through their personal token, never through a
    service token; nobody else ("none")."""
    if ctx.can(Cap.MANAGE_REGISTRY):
        return "all"
    if ctx.can(Cap.OWN_AGENTS) and ctx.user is not None:
        return "owned"
    return "none"


def can_manage_agent(ctx: TenantContext, agent: Agent) -> bool:
    """Whether the caller may act for ``agent`` (see ``_agent_reach``)."""
    reach = _agent_reach(ctx)
    return reach == "all" or (reach == "owned" and ctx.user.has_perm(AGENT_PERMISSION, agent))


def manageable_agents(ctx: TenantContext, agents: QuerySet[Agent]) -> QuerySet[Agent]:
    """The agents among ``agents`` the caller may act for (the rule of ``can_manage_agent``,
    one query)."""
    reach = _agent_reach(ctx)
    if reach == "all":
        return agents
    if reach == "none":
        return agents.none()
    return get_objects_for_user(ctx.user, AGENT_PERMISSION, klass=agents,
                                accept_global_perms=False)


def access_agent(ctx: TenantContext, pk, *, write: bool = False) -> Agent:
    agent = access_object(ctx.tenant, Agent, pk)
    if write and not can_manage_agent(ctx, agent):
        raise PermissionDenied("Only the agent's owner or an admin may change this agent.")
    return agent


def access_principal(ctx: TenantContext, pk, *, write: bool = False) -> AgentPrincipal:
    principal = access_object(ctx.tenant, AgentPrincipal, pk)
    if write and not can_manage_agent(ctx, principal.agent):
        raise PermissionDenied("Only the agent's owner or an admin may change this agent.")
    return principal


def manageable_agent_ids(ctx: TenantContext, agents) -> set[int] | None:
    """Ids among ``agents`` the caller may change (one query); None means all (a manager)."""
    if _agent_reach(ctx) == "all":
        return None
    among = Agent.objects.filter(pk__in=[a.pk for a in agents])
    return set(manageable_agents(ctx, among).values_list("pk", flat=True))
