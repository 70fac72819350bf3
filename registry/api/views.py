"""Registry REST API: servers (and their sync runs), tools, scopes, agents, principals, grants.

Every handler is thin: the object comes through a registry.access helper (404 outside the
tenant, 403 without the right to change it), the input through an …In serializer, the change
through one registry service (which audits it), the answer through an …Out serializer of a row
reloaded from registry.selectors (so single objects and list rows look the same).
"""

from __future__ import annotations

from django.db import transaction
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, UnsupportedMediaType
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from governance.tenancy.api.base import TenantViewSet
from governance.tenancy.api.schema import NO_CONTENT, READ, WRITE, error_responses
from governance.tenancy.models import Membership
from governance.tenancy.roles import Cap
from registry import selectors
from registry.access import (
    access_agent,
    access_grant,
    access_principal,
    access_scope,
    access_server,
    access_sync,
    access_tool,
    can_manage_agent,
)
from registry.api import serializers as s
from registry.models import Agent, AgentPrincipal, Grant, McpServer, ServerSync, Tool, ToolScope
from registry.server_json import MAX_DOCUMENT_BYTES
from registry.services.agents import (
    agent_create,
    agent_principal_add,
    agent_principal_remove,
    agent_transition,
    agent_update,
)
from registry.services.grants import grant_create, grant_revoke, grant_update
from registry.services.scopes import scope_create, scope_delete, scope_set_tools, scope_update
from registry.services.servers import server_create, server_import, server_transition, server_update
from registry.services.tools import tool_approve, tool_block
from registry.sync import server_sync_request

# --- Servers -----------------------------------------------------------------------------------


class ServerViewSet(TenantViewSet):
    """MCP servers: register (or import a server.json), describe, move along the lifecycle,
    retire, and queue a tool sync."""

    model = McpServer
    capabilities = {
        "*": Cap.VIEW,
        "create": Cap.MANAGE_REGISTRY,
        "partial_update": Cap.MANAGE_REGISTRY,
        "destroy": Cap.MANAGE_REGISTRY,
        "transition": Cap.MANAGE_REGISTRY,
        "sync": Cap.MANAGE_REGISTRY,
        "import_server": Cap.MANAGE_REGISTRY,
    }

    def out(self, server: McpServer) -> dict:
        return s.ServerOut(selectors.server_list(self.tenancy.tenant).get(pk=server.pk)).data

    @extend_schema(parameters=[s.ServerFilter], responses={200: s.ServerOut(many=True), **READ})
    def list(self, request: Request, tenant_slug: str) -> Response:
        return self.page(
            selectors.server_list(self.tenancy.tenant, **self.filters(s.ServerFilter)), s.ServerOut
        )

    @extend_schema(responses={200: s.ServerOut, **READ})
    def retrieve(self, request: Request, tenant_slug: str, pk: str) -> Response:
        return Response(self.out(access_server(self.tenancy, pk)))

    @extend_schema(request=s.ServerIn, responses={201: s.ServerOut, **WRITE})
    def create(self, request: Request, tenant_slug: str) -> Response:
        values = self.parse(s.ServerIn)
        values.setdefault("owner", self.tenancy.user)
        server = server_create(**self.service_kwargs(), **values)
        return Response(self.out(server), status=status.HTTP_201_CREATED)

    @extend_schema(request=s.ServerIn(partial=True), responses={200: s.ServerOut, **WRITE})
    def partial_update(self, request: Request, tenant_slug: str, pk: str) -> Response:
        server = access_server(self.tenancy, pk, write=True)
        values = self.parse(s.ServerIn, partial=True)
        server = server_update(**self.service_kwargs(), server=server, **values)
        return Response(self.out(server))

    @extend_schema(
        description="Retire the server (the record stays; retired is final).",
        responses=NO_CONTENT,
    )
    def destroy(self, request: Request, tenant_slug: str, pk: str) -> Response:
        server = access_server(self.tenancy, pk, write=True)
        server_transition(**self.service_kwargs(), server=server,
                                   status=McpServer.Status.RETIRED)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        request=s.ServerTransitionIn,
        description="pending → active | retired; active → suspended | retired; "
        "suspended → active | retired.",
        responses={200: s.ServerOut, **WRITE},
    )
    @action(detail=True, methods=["post"])
    def transition(self, request: Request, tenant_slug: str, pk: str) -> Response:
        server = access_server(self.tenancy, pk, write=True)
        values = self.parse(s.ServerTransitionIn)
        server = server_transition(**self.service_kwargs(), server=server, **values)
        return Response(self.out(server))

    @extend_schema(
        request=None,
        description="Queue a tools/list run of the server on a worker. A run already queued "
        "or running is returned instead (created false). Poll the run's URL for progress. "
        "A stdio server's run (via gateway) instead asks the gateways bound to it to report "
        "(the control plane never runs its command); 400 on `gateways` when none is bound.",
        responses={202: s.SyncRequestedOut, **WRITE},
    )
    @action(detail=True, methods=["post"])
    def sync(self, request: Request, tenant_slug: str, pk: str) -> Response:
        server = access_server(self.tenancy, pk, write=True)
        run, created = server_sync_request(
            **self.service_kwargs(), server=server, trigger=ServerSync.Trigger.API,
            requested_by=self.tenancy.user,
        )
        url = reverse("syncs-detail", kwargs={"tenant_slug": tenant_slug, "pk": run.pk})
        run = selectors.sync_list(self.tenancy.tenant).get(pk=run.pk)
        body = s.SyncOut(run).data | {"created": created, "url": url}
        return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": url})

    @extend_schema(
        request={
            "application/json": OpenApiTypes.OBJECT,
            "multipart/form-data": s.ServerImportUploadIn,
        },
        description="Register a server from an MCP registry server.json: send the document as "
        "the JSON body, or upload it as the multipart field `file`. Errors name the field of "
        "the document (`packages[0].transport.type`); `document` when it is not JSON at all.",
        responses={201: s.ServerOut, **error_responses(400, 403, 415)},
    )
    @action(detail=False, methods=["post"], url_path="import", url_name="import",
            parser_classes=[JSONParser, MultiPartParser])
    def import_server(self, request: Request, tenant_slug: str) -> Response:
        server = server_import(
            **self.service_kwargs(), document=self._document(), owner=self.tenancy.user
        )
        return Response(self.out(server), status=status.HTTP_201_CREATED)

    def _document(self) -> bytes:
        """The raw document: the services parse it, so a broken one is reported like the rest
        (the JSON body is the document itself, any keys; an upload takes the field file only)."""
        media_type = (self.request.content_type or "").split(";")[0].strip().lower()
        if media_type == "multipart/form-data":
            return self.parse(s.ServerImportUploadIn)["file"].read(MAX_DOCUMENT_BYTES + 1)
        if media_type == "application/json" or media_type.endswith("+json"):
            return self.request.body
        raise UnsupportedMediaType(media_type or "(none)")


# --- Sync runs ---------------------------------------------------------------------------------


class SyncViewSet(TenantViewSet):
    """Tool sync runs (queued → running → succeeded | failed), newest first: poll for
    progress."""

    model = ServerSync
    capabilities = {"*": Cap.VIEW}

    @extend_schema(parameters=[s.SyncFilter], responses={200: s.SyncOut(many=True), **READ})
    def list(self, request: Request, tenant_slug: str) -> Response:
        return self.page(
            selectors.sync_list(self.tenancy.tenant, **self.filters(s.SyncFilter)), s.SyncOut
        )

    @extend_schema(responses={200: s.SyncOut, **READ})
    def retrieve(self, request: Request, tenant_slug: str, pk: str) -> Response:
        run = access_sync(self.tenancy, pk)
        return Response(s.SyncOut(selectors.sync_list(self.tenancy.tenant).get(pk=run.pk)).data)


# --- Tools -------------------------------------------------------------------------------------


class ToolViewSet(TenantViewSet):
    """Tools found by syncs, pinned to the definition someone approved."""

    model = Tool
    capabilities = {"*": Cap.VIEW, "approve": Cap.MANAGE_REGISTRY, "block": Cap.MANAGE_REGISTRY}

    def out(self, tool: Tool) -> dict:
        return s.ToolDetailOut(selectors.tool_list(self.tenancy.tenant).get(pk=tool.pk)).data

    @extend_schema(parameters=[s.ToolFilter], responses={200: s.ToolOut(many=True), **READ})
    def list(self, request: Request, tenant_slug: str) -> Response:
        return self.page(
            selectors.tool_list(self.tenancy.tenant, **self.filters(s.ToolFilter)), s.ToolOut
        )

    @extend_schema(responses={200: s.ToolDetailOut, **READ})
    def retrieve(self, request: Request, tenant_slug: str, pk: str) -> Response:
        return Response(self.out(access_tool(self.tenancy, pk)))

    @extend_schema(
        request=s.ToolApproveIn,
        description="Approve the tool; a quarantined tool's drifted definition becomes the "
        "pinned one. Send the sha256 you reviewed: a definition that changed since is not "
        "approved. A definition with review findings needs confirm_findings: true.",
        responses={200: s.ToolDetailOut, **WRITE},
    )
    @action(detail=True, methods=["post"])
    def approve(self, request: Request, tenant_slug: str, pk: str) -> Response:
        tool = access_tool(self.tenancy, pk, write=True)
        values = self.parse(s.ToolApproveIn)
        return Response(self.out(tool_approve(
            **self.service_kwargs(), tool=tool, expected_sha256=values.get("sha256", ""),
            confirm_findings=values["confirm_findings"])))

    @extend_schema(request=None, description="Block the tool: it leaves every bundle.",
                   responses={200: s.ToolDetailOut, **WRITE})
    @action(detail=True, methods=["post"])
    def block(self, request: Request, tenant_slug: str, pk: str) -> Response:
        tool = access_tool(self.tenancy, pk, write=True)
        return Response(self.out(tool_block(**self.service_kwargs(), tool=tool)))


# --- Scopes ------------------------------------------------------------------------------------


class ScopeViewSet(TenantViewSet):
    """Tool scopes: named sets of tools (across servers) that grants are made of."""

    model = ToolScope
    capabilities = {
        "*": Cap.VIEW,
        "create": Cap.MANAGE_REGISTRY,
        "partial_update": Cap.MANAGE_REGISTRY,
        "destroy": Cap.MANAGE_REGISTRY,
    }

    def out(self, scope: ToolScope) -> dict:
        return s.ScopeOut(selectors.scope_list(self.tenancy.tenant).get(pk=scope.pk)).data

    @extend_schema(parameters=[s.ScopeFilter], responses={200: s.ScopeOut(many=True), **READ})
    def list(self, request: Request, tenant_slug: str) -> Response:
        return self.page(
            selectors.scope_list(self.tenancy.tenant, **self.filters(s.ScopeFilter)), s.ScopeOut
        )

    @extend_schema(responses={200: s.ScopeOut, **READ})
    def retrieve(self, request: Request, tenant_slug: str, pk: str) -> Response:
        return Response(self.out(access_scope(self.tenancy, pk)))

    @extend_schema(request=s.ScopeIn, responses={201: s.ScopeOut, **WRITE})
    def create(self, request: Request, tenant_slug: str) -> Response:
        scope = scope_create(**self.service_kwargs(), **self.parse(s.ScopeIn))
        return Response(self.out(scope), status=status.HTTP_201_CREATED)

    @extend_schema(
        request=s.ScopeIn(partial=True),
        description="Change fields; `tools`, when given, replaces the scope's tools.",
        responses={200: s.ScopeOut, **WRITE},
    )
    def partial_update(self, request: Request, tenant_slug: str, pk: str) -> Response:
        scope = access_scope(self.tenancy, pk, write=True)
        values = self.parse(s.ScopeIn, partial=True)
        tools = values.pop("tools", None)
        with transaction.atomic():  # one PATCH, one outcome
            if values:
                scope = scope_update(**self.service_kwargs(), scope=scope, **values)
            if tools is not None:
                scope = scope_set_tools(**self.service_kwargs(), scope=scope, tools=tools)
        return Response(self.out(scope))

    @extend_schema(description="Delete a scope that was never granted.", responses=NO_CONTENT)
    def destroy(self, request: Request, tenant_slug: str, pk: str) -> Response:
        scope = access_scope(self.tenancy, pk, write=True)
        scope_delete(**self.service_kwargs(), scope=scope)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- Agents and their principals -----------------------------------------------------------------


class AgentViewSet(TenantViewSet):
    """Agents. Developers register their own and manage only those; admins manage all.
    There is no delete: suspension is how an agent is retired."""

    model = Agent
    capabilities = {
        "*": Cap.VIEW,
        "create": Cap.OWN_AGENTS,
        "partial_update": Cap.OWN_AGENTS,
        "transition": Cap.OWN_AGENTS,
    }

    def out(self, agent: Agent) -> dict:
        return s.AgentOut(selectors.agent_list(self.tenancy.tenant).get(pk=agent.pk)).data

    @extend_schema(parameters=[s.AgentFilter], responses={200: s.AgentOut(many=True), **READ})
    def list(self, request: Request, tenant_slug: str) -> Response:
        values = self.filters(s.AgentFilter)
        tenant = self.tenancy.tenant
        if "owner" in values:
            member = (
                Membership.objects.for_tenant(tenant).select_related("user")
                .filter(user__username=values["owner"]).first()
            )
            if member is None:  # nobody by that name here: nobody's agents
                return self.page(Agent.objects.none(), s.AgentOut)
            values["owner"] = member.user
        return self.page(selectors.agent_list(tenant, **values), s.AgentOut)

    @extend_schema(responses={200: s.AgentOut, **READ})
    def retrieve(self, request: Request, tenant_slug: str, pk: str) -> Response:
        return Response(self.out(access_agent(self.tenancy, pk)))

    @extend_schema(
        request=s.AgentIn,
        description="A developer's agent is theirs; an admin may name another member as owner.",
        responses={201: s.AgentOut, **WRITE},
    )
    def create(self, request: Request, tenant_slug: str) -> Response:
        values = self.parse(s.AgentIn)
        owner = values.pop("owner", self.tenancy.user)
        if not self.tenancy.can(Cap.MANAGE_REGISTRY):
            if self.tenancy.user is None:
                raise PermissionDenied("An agent registered without the admin role belongs to "
                                       "the person registering it; use a personal token.")
            if owner != self.tenancy.user:
                raise PermissionDenied("Only an admin may register an agent for someone else.")
        agent = agent_create(**self.service_kwargs(), owner=owner, **values)
        return Response(self.out(agent), status=status.HTTP_201_CREATED)

    @extend_schema(
        request=s.AgentIn(partial=True),
        description="Owner or admin; only an admin may change the owner.",
        responses={200: s.AgentOut, **WRITE},
    )
    def partial_update(self, request: Request, tenant_slug: str, pk: str) -> Response:
        agent = access_agent(self.tenancy, pk, write=True)
        values = self.parse(s.AgentIn, partial=True)
        if (
            "owner" in values
            and values["owner"] != agent.owner
            and not self.tenancy.can(Cap.MANAGE_REGISTRY)
        ):
            raise PermissionDenied("Only an admin may change an agent's owner.")
        agent = agent_update(**self.service_kwargs(), agent=agent, **values)
        return Response(self.out(agent))

    @extend_schema(request=s.AgentTransitionIn, description="Suspend or reactivate (owner or "
                   "admin).", responses={200: s.AgentOut, **WRITE})
    @action(detail=True, methods=["post"])
    def transition(self, request: Request, tenant_slug: str, pk: str) -> Response:
        agent = access_agent(self.tenancy, pk, write=True)
        values = self.parse(s.AgentTransitionIn)
        agent = agent_transition(**self.service_kwargs(), agent=agent, **values)
        return Response(self.out(agent))


class PrincipalViewSet(TenantViewSet):
    """(issuer, subject) pairs by which gateways recognise agents; changed by the agent's owner
    or an admin."""

    model = AgentPrincipal
    capabilities = {"*": Cap.VIEW, "create": Cap.OWN_AGENTS, "destroy": Cap.OWN_AGENTS}

    @extend_schema(parameters=[s.PrincipalFilter],
                   responses={200: s.PrincipalOut(many=True), **READ})
    def list(self, request: Request, tenant_slug: str) -> Response:
        return self.page(
            selectors.principal_list(self.tenancy.tenant, **self.filters(s.PrincipalFilter)),
            s.PrincipalOut,
        )

    @extend_schema(responses={200: s.PrincipalOut, **READ})
    def retrieve(self, request: Request, tenant_slug: str, pk: str) -> Response:
        return Response(s.PrincipalOut(access_principal(self.tenancy, pk)).data)

    @extend_schema(request=s.PrincipalIn, responses={201: s.PrincipalOut, **WRITE})
    def create(self, request: Request, tenant_slug: str) -> Response:
        values = self.parse(s.PrincipalIn)
        if not can_manage_agent(self.tenancy, values["agent"]):
            raise PermissionDenied("Only the agent's owner or an admin may change this agent.")
        principal = agent_principal_add(**self.service_kwargs(), **values)
        return Response(s.PrincipalOut(principal).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=NO_CONTENT)
    def destroy(self, request: Request, tenant_slug: str, pk: str) -> Response:
        principal = access_principal(self.tenancy, pk, write=True)
        agent_principal_remove(**self.service_kwargs(), principal=principal)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- Grants ------------------------------------------------------------------------------------


class GrantViewSet(TenantViewSet):
    """Grants of a scope to an agent, with limits, argument constraints, approval and expiry."""

    model = Grant
    capabilities = {
        "*": Cap.VIEW,
        "create": Cap.MANAGE_REGISTRY,
        "partial_update": Cap.MANAGE_REGISTRY,
        "destroy": Cap.MANAGE_REGISTRY,
        "revoke": Cap.MANAGE_REGISTRY,
    }

    def out(self, grant: Grant) -> dict:
        return s.GrantOut(selectors.grant_list(self.tenancy.tenant).get(pk=grant.pk)).data

    @extend_schema(parameters=[s.GrantFilter], responses={200: s.GrantOut(many=True), **READ})
    def list(self, request: Request, tenant_slug: str) -> Response:
        return self.page(
            selectors.grant_list(self.tenancy.tenant, **self.filters(s.GrantFilter)), s.GrantOut
        )

    @extend_schema(responses={200: s.GrantOut, **READ})
    def retrieve(self, request: Request, tenant_slug: str, pk: str) -> Response:
        return Response(self.out(access_grant(self.tenancy, pk)))

    @extend_schema(
        request=s.GrantIn,
        description="An error inside argument_constraints or approval_condition names its path "
        "(argument_constraints.refund.amount.maximum: …).",
        responses={201: s.GrantOut, **WRITE},
    )
    def create(self, request: Request, tenant_slug: str) -> Response:
        values = self.parse(s.GrantIn)
        grant = grant_create(**self.service_kwargs(), created_by=self.tenancy.user,
                                      **values)
        return Response(self.out(grant), status=status.HTTP_201_CREATED)

    @extend_schema(request=s.GrantTermsIn(partial=True), responses={200: s.GrantOut, **WRITE})
    def partial_update(self, request: Request, tenant_slug: str, pk: str) -> Response:
        grant = access_grant(self.tenancy, pk, write=True)
        values = self.parse(s.GrantTermsIn, partial=True)
        grant = grant_update(**self.service_kwargs(), grant=grant, **values)
        return Response(self.out(grant))

    @extend_schema(description="Revoke at once (the record stays).", responses=NO_CONTENT)
    def destroy(self, request: Request, tenant_slug: str, pk: str) -> Response:
        grant = access_grant(self.tenancy, pk, write=True)
        grant_revoke(**self.service_kwargs(), grant=grant,
                              reason="revoked through the API")
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=s.GrantRevokeIn, description="Revoke at once, with a reason.",
                   responses={200: s.GrantOut, **WRITE})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, tenant_slug: str, pk: str) -> Response:
        grant = access_grant(self.tenancy, pk, write=True)
        values = self.parse(s.GrantRevokeIn)
        grant = grant_revoke(**self.service_kwargs(), grant=grant, **values)
        return Response(self.out(grant))
