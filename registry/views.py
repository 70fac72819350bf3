"""Registry web pages: servers and their tool syncs, tools (with the drift diff), scopes, agents
and grants. Thin: parse the form → access helper → service → post/redirect/get."""

from __future__ import annotations

import difflib
import json
from typing import Any
from urllib.parse import urlencode, urlsplit

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

from governance.tenancy.forms import add_service_errors
from governance.tenancy.mixins import TenantPageView
from governance.tenancy.roles import Cap
from governance.web import error_text, page_of, pluralized, query_without_page, vary_on_htmx
from registry import selectors, services
from registry.access import (
    access_agent,
    access_grant,
    access_principal,
    access_scope,
    access_server,
    access_sync,
    access_tool,
    can_manage_agent,
    manageable_agent_ids,
)
from registry.forms import (
    AgentForm,
    GrantCreateForm,
    GrantFilterForm,
    GrantRevokeForm,
    GrantTermsForm,
    PrincipalForm,
    ScopeForm,
    ServerFilterForm,
    ServerForm,
    ServerImportForm,
)
from registry.gateway_bindings import server_bindings
from registry.gateway_discovery import needs_gateway
from registry.models import Agent, Grant, McpServer, ServerSync, Tool
from registry.sync import SYNCABLE, server_sync_request

RECENT_SYNCS = 10
REVIEW_STATES = (Tool.Status.PENDING_REVIEW, Tool.Status.QUARANTINED)


def _back(request: HttpRequest, default: str) -> HttpResponse:
    """Redirect to the page the form came from (``next``), if it is one of ours."""
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect(target)
    return redirect(default)


# --- Servers -----------------------------------------------------------------------------------


class ServerListView(TenantPageView):
    """Servers with tool counts, the state of their last sync and what waits for review."""

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = ServerFilterForm(request.GET or None)
        filters = form.cleaned_data if form.is_valid() else {}
        servers = selectors.server_list(
            self.tenant, search=filters.get("q", ""), status=filters.get("status", "")
        )
        template = "registry/_servers_table.html" if request.htmx else "registry/servers.html"
        return vary_on_htmx(render(request, template, {
            "form": form, "page": page_of(request, servers), "query": query_without_page(request),
            "any_server": McpServer.objects.for_tenant(self.tenant).exists(),
        }))


class ServerCreateView(TenantPageView):
    """Register a server by hand."""

    capability = Cap.MANAGE_REGISTRY

    def render_form(self, request, form, status=200):
        return render(request, "registry/server_form.html", {"form": form, "server": None},
                      status=status)

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        return self.render_form(request, ServerForm(tenant=self.tenant))

    def post(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = ServerForm(request.POST, tenant=self.tenant)
        if form.is_valid():
            try:
                server = services.server_create(tenant=self.tenant, actor=self.actor,
                                                **form.cleaned_data)
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Registered {server.name}. Activate it, then sync "
                                          "its tools to review them.")
                return redirect("registry:server", tenant_slug, server.pk)
        return self.render_form(request, form, status=400)


class ServerImportView(TenantPageView):
    """Register a server from an MCP registry server.json (uploaded or pasted)."""

    capability = Cap.MANAGE_REGISTRY

    def render_form(self, request, form, problems=(), status=200):
        return render(request, "registry/server_import.html",
                      {"form": form, "problems": problems}, status=status)

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        return self.render_form(request, ServerImportForm())

    def post(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = ServerImportForm(request.POST, request.FILES)
        if not form.is_valid():
            return self.render_form(request, form, status=400)
        data = form.cleaned_data
        try:
            server = services.server_import(
                tenant=self.tenant, actor=self.actor, document=data["raw"],
                data_classes=data["data_classes"], risk_tier=data["risk_tier"],
            )
        except ValidationError as exc:
            problems = _import_problems(exc)
            raw = data["raw"]
            if isinstance(raw, bytes):  # an uploaded file: keep its text to fix in place
                raw = raw.decode("utf-8-sig", errors="replace")
            form = ServerImportForm(initial={
                "document": raw, "risk_tier": data["risk_tier"],
                "data_classes": data["data_classes"],
            })
            return self.render_form(request, form, problems, status=400)
        messages.success(request, f"Imported {server.name} (version {server.version}). "
                                  "Activate it, then sync its tools to review them.")
        return redirect("registry:server", tenant_slug, server.pk)


def _import_problems(exc: ValidationError) -> list[tuple[str, str]]:
    """(field path, message) pairs; the path is empty for the document as a whole."""
    if not hasattr(exc, "error_dict"):
        return [("", error_text(exc))]
    return [
        ("" if path in ("document", "__all__") else path, " ".join(errors))
        for path, errors in exc.message_dict.items()
    ]


def _server_tools_context(tenant, server: McpServer) -> dict[str, Any]:
    tools = list(selectors.tool_list(tenant, server=server))
    return {
        "server": server,
        "tools": tools,
        "review_count": sum(t.status in REVIEW_STATES for t in tools),
        "syncs": selectors.server_syncs(tenant, server)[:RECENT_SYNCS],
    }


class ServerDetailView(TenantPageView):
    """A server: its fields, lifecycle, tool sync progress, tools and recent syncs."""

    def get(self, request: HttpRequest, tenant_slug: str, server_id: int) -> HttpResponse:
        server = access_server(self.tenancy, server_id)
        run = server.latest_sync
        return render(request, "registry/server.html", _server_tools_context(self.tenant, server)
                      | {
                          "run": run,
                          "next_states": sorted(server.TRANSITIONS.get(server.status, ())),
                          "can_sync": server.status in SYNCABLE,
                          "bindings": server_bindings(self.tenant, server),
                          "via_gateway": needs_gateway(server),
                      })


class ServerEditView(TenantPageView):
    """Change a server's descriptive fields (status has its own buttons)."""

    capability = Cap.MANAGE_REGISTRY

    def render_form(self, request, server, form, status=200):
        return render(request, "registry/server_form.html", {"form": form, "server": server},
                      status=status)

    def get(self, request: HttpRequest, tenant_slug: str, server_id: int) -> HttpResponse:
        server = access_server(self.tenancy, server_id, write=True)
        form = ServerForm(initial=ServerForm.initial_for(server), tenant=self.tenant)
        return self.render_form(request, server, form)

    def post(self, request: HttpRequest, tenant_slug: str, server_id: int) -> HttpResponse:
        server = access_server(self.tenancy, server_id, write=True)
        form = ServerForm(request.POST, tenant=self.tenant)
        if form.is_valid():
            try:
                services.server_update(tenant=self.tenant, actor=self.actor, server=server,
                                       **form.cleaned_data)
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Saved {form.cleaned_data['name']}.")
                return redirect("registry:server", tenant_slug, server.pk)
        return self.render_form(request, server, form, status=400)


STATE_VERBS = {
    McpServer.Status.ACTIVE: "Activate",
    McpServer.Status.SUSPENDED: "Suspend",
    McpServer.Status.RETIRED: "Retire",
}


class ServerTransitionView(TenantPageView):
    """Activate, suspend or retire a server; GET asks for confirmation (retiring is final)."""

    capability = Cap.MANAGE_REGISTRY

    def get(self, request: HttpRequest, tenant_slug: str, server_id: int) -> HttpResponse:
        server = access_server(self.tenancy, server_id, write=True)
        status = request.GET.get("status", "")
        if status not in STATE_VERBS:
            raise Http404("No such status")
        verb = STATE_VERBS[status]
        body = {
            McpServer.Status.RETIRED: "Retiring is final: the server and its tools leave every "
                                      "policy bundle, and it cannot be activated again.",
            McpServer.Status.SUSPENDED: "Its tools leave the policy bundles until you "
                                        "activate it again.",
            McpServer.Status.ACTIVE: "Its approved tools enter the policy bundles.",
        }[status]
        return render(request, "confirm.html", {
            "title": f"{verb} {server.name}?", "body": body, "action": f"{verb} server",
            "hidden": {"status": status},
            "cancel_url": reverse("registry:server", args=[tenant_slug, server.pk]),
        })

    def post(self, request: HttpRequest, tenant_slug: str, server_id: int) -> HttpResponse:
        server = access_server(self.tenancy, server_id, write=True)
        status = request.POST.get("status", "")
        try:
            server = services.server_transition(tenant=self.tenant, actor=self.actor,
                                                server=server, status=status)
        except ValidationError as exc:
            messages.error(request, error_text(exc))
        else:
            messages.success(request, f"{server.name} is now {server.status}.")
        return redirect("registry:server", tenant_slug, server.pk)


class ServerSyncView(TenantPageView):
    """Queue a tools/list run (or join the one already running) and show its progress."""

    capability = Cap.MANAGE_REGISTRY

    def post(self, request: HttpRequest, tenant_slug: str, server_id: int) -> HttpResponse:
        server = access_server(self.tenancy, server_id, write=True)
        try:
            run, created = server_sync_request(
                tenant=self.tenant, actor=self.actor, server=server,
                trigger=ServerSync.Trigger.MANUAL, requested_by=request.user,
            )
        except ValidationError as exc:
            messages.error(request, error_text(exc))
        else:
            if created:
                messages.success(request, f"Sync #{run.pk} of {server.name} started.")
            else:
                messages.info(request, f"Sync #{run.pk} of {server.name} is already under way; "
                                       "showing its progress.")
        return redirect("registry:server", tenant_slug, server.pk)


class SyncView(TenantPageView):
    """One sync run. htmx polls the fragment every second while it is queued or running; the
    final fragment also refreshes the server's tools and recent syncs."""

    def get(self, request: HttpRequest, tenant_slug: str, server_id: int,
            sync_id: int) -> HttpResponse:
        server = access_server(self.tenancy, server_id)
        run = access_sync(self.tenancy, sync_id)
        if run.server_id != server.pk:
            raise Http404("No such sync of this server")
        context: dict[str, Any] = {"server": server, "run": run}
        if not request.htmx:
            return vary_on_htmx(render(request, "registry/sync.html", context))
        # The run just finished under the eyes of the server page: refresh its tools too.
        on_server_page = urlsplit(request.htmx.current_url or "").path == reverse(
            "registry:server", args=[tenant_slug, server.pk])
        if not run.is_open and on_server_page:
            context |= _server_tools_context(self.tenant, server) | {"oob": True}
        return vary_on_htmx(render(request, "registry/_sync_progress.html", context))


# --- Tools -------------------------------------------------------------------------------------

DIFF_PARTS = [
    ("title", "Title"),
    ("description", "Description"),
    ("input_schema", "Input schema"),
    ("output_schema", "Output schema"),
    ("annotations", "Annotations"),
]


def _lines(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.splitlines()
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False).splitlines()


def definition_diff(pinned: dict[str, Any], drifted: dict[str, Any]) -> list[dict[str, Any]]:
    """A line diff per part of a tool definition (JSON pretty-printed with sorted keys):
    ``[{"label", "changed", "lines": [(kind, text)]}]``, kind one of hunk, ctx, add, del."""
    parts = []
    for field, label in DIFF_PARTS:
        old, new = _lines(pinned.get(field)), _lines(drifted.get(field))
        lines: list[tuple[str, str]] = []
        # The first two lines of a unified diff are the ---/+++ file headers.
        for line in list(difflib.unified_diff(old, new, lineterm="", n=3))[2:]:
            if line.startswith("@@"):
                lines.append(("hunk", line))
            else:
                kind = {"+": "add", "-": "del"}.get(line[:1], "ctx")
                lines.append((kind, line[1:]))
        parts.append({"label": label, "changed": old != new, "lines": lines})
    return parts


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


class ToolDetailView(TenantPageView):
    """A tool's pinned definition and, when it drifted, what changed."""

    def get(self, request: HttpRequest, tenant_slug: str, tool_id: int) -> HttpResponse:
        tool = access_tool(self.tenancy, tool_id)
        diff = None
        if tool.drifted_definition is not None:
            pinned = {field: getattr(tool, field) for field, _ in DIFF_PARTS}
            diff = definition_diff(pinned, tool.drifted_definition)
        return render(request, "registry/tool.html", {
            "tool": tool,
            "input_schema": _pretty(tool.input_schema),
            "output_schema": _pretty(tool.output_schema) if tool.output_schema else "",
            "annotations": _pretty(tool.annotations) if tool.annotations else "",
            "diff": diff,
            "unchanged": [part["label"] for part in diff or () if not part["changed"]],
            "scopes": tool.scopes.order_by("name"),
        })


def _tool_row(request: HttpRequest, tenant, tool: Tool, error: str = "") -> HttpResponse:
    """The table row of a reviewed tool, and the server's "need review" count out of band."""
    tool = selectors.tool_list(tenant).get(pk=tool.pk)
    review_count = selectors.tool_list(tenant, server=tool.server_id).filter(
        status__in=REVIEW_STATES).count()
    return vary_on_htmx(render(request, "registry/_tool_row.html", {
        "tool": tool, "row_error": error, "heading_oob": True, "review_count": review_count,
    }))


class ToolApproveView(TenantPageView):
    """Approve a tool (pinning a drifted definition); htmx gets the updated table row."""

    capability = Cap.MANAGE_REGISTRY

    def post(self, request: HttpRequest, tenant_slug: str, tool_id: int) -> HttpResponse:
        tool = access_tool(self.tenancy, tool_id, write=True)
        drifted = tool.drifted_definition is not None
        try:
            tool = services.tool_approve(tenant=self.tenant, actor=self.actor, tool=tool)
        except ValidationError as exc:
            if request.htmx:
                return _tool_row(request, self.tenant, tool, error_text(exc))
            messages.error(request, error_text(exc))
        else:
            if request.htmx:
                return _tool_row(request, self.tenant, tool)
            messages.success(request, f"Approved the new definition of {tool.name}." if drifted
                             else f"Approved {tool.name}.")
        return vary_on_htmx(_back(request, reverse("registry:tool", args=[tenant_slug, tool.pk])))


class ToolBlockView(TenantPageView):
    """Block a tool after confirmation (a page, or the browser's dialog with htmx)."""

    capability = Cap.MANAGE_REGISTRY

    def get(self, request: HttpRequest, tenant_slug: str, tool_id: int) -> HttpResponse:
        tool = access_tool(self.tenancy, tool_id, write=True)
        return render(request, "confirm.html", {
            "title": f"Block {tool.name}?",
            "body": f"Calls to {tool.server.name}/{tool.name} are denied by every gateway from "
                    "the next policy bundle on, until someone approves the tool again.",
            "action": "Block tool",
            "hidden": {"next": request.GET.get("next", "")},
            "cancel_url": reverse("registry:tool", args=[tenant_slug, tool.pk]),
        })

    def post(self, request: HttpRequest, tenant_slug: str, tool_id: int) -> HttpResponse:
        tool = access_tool(self.tenancy, tool_id, write=True)
        try:
            tool = services.tool_block(tenant=self.tenant, actor=self.actor, tool=tool)
        except ValidationError as exc:
            if request.htmx:
                return _tool_row(request, self.tenant, tool, error_text(exc))
            messages.error(request, error_text(exc))
        else:
            if request.htmx:
                return _tool_row(request, self.tenant, tool)
            messages.success(request, f"Blocked {tool.name}.")
        return vary_on_htmx(_back(request, reverse("registry:tool", args=[tenant_slug, tool.pk])))


# --- Scopes ------------------------------------------------------------------------------------


class ScopeListView(TenantPageView):
    """Tool scopes with their tool count, risk and active grants."""

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        search = request.GET.get("q", "").strip()
        return render(request, "registry/scopes.html", {
            "page": page_of(request, selectors.scope_list(self.tenant, search=search)),
            "q": search, "query": urlencode({"q": search}) if search else "",
        })


class ScopeCreateView(TenantPageView):
    """A new scope, picking its tools across servers."""

    capability = Cap.MANAGE_REGISTRY

    def render_form(self, request, form, status=200):
        return render(request, "registry/scope_form.html", {"form": form, "scope": None},
                      status=status)

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        return self.render_form(request, ScopeForm(tenant=self.tenant))

    def post(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = ScopeForm(request.POST, tenant=self.tenant)
        if form.is_valid():
            try:
                scope = services.scope_create(tenant=self.tenant, actor=self.actor,
                                              **form.cleaned_data)
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                tools = pluralized(len(form.cleaned_data["tools"]), "tool")
                messages.success(request, f"Created scope {scope.name} with {tools}.")
                return redirect("registry:scope", tenant_slug, scope.pk)
        return self.render_form(request, form, status=400)


class ScopeDetailView(TenantPageView):
    """A scope: its tools and the grants that give it to agents."""

    def get(self, request: HttpRequest, tenant_slug: str, scope_id: int) -> HttpResponse:
        scope = access_scope(self.tenancy, scope_id)
        return render(request, "registry/scope.html", {
            "scope": scope,
            "tools": scope.tools.select_related("server").order_by("server__name", "name"),
            "grants": selectors.grant_list(self.tenant, scope=scope),
        })


class ScopeEditView(TenantPageView):
    """Change a scope and its tools (one transaction: both or neither)."""

    capability = Cap.MANAGE_REGISTRY

    def render_form(self, request, scope, form, status=200):
        return render(request, "registry/scope_form.html", {"form": form, "scope": scope},
                      status=status)

    def get(self, request: HttpRequest, tenant_slug: str, scope_id: int) -> HttpResponse:
        scope = access_scope(self.tenancy, scope_id, write=True)
        form = ScopeForm(initial=ScopeForm.initial_for(scope), tenant=self.tenant, scope=scope)
        return self.render_form(request, scope, form)

    def post(self, request: HttpRequest, tenant_slug: str, scope_id: int) -> HttpResponse:
        scope = access_scope(self.tenancy, scope_id, write=True)
        form = ScopeForm(request.POST, tenant=self.tenant, scope=scope)
        if form.is_valid():
            data = dict(form.cleaned_data)
            tools = set(data.pop("tools"))
            changes = {k: v for k, v in data.items() if getattr(scope, k) != v}
            try:
                with transaction.atomic():
                    if changes:
                        services.scope_update(tenant=self.tenant, actor=self.actor, scope=scope,
                                              **changes)
                    if tools != set(scope.tools.all()):
                        services.scope_set_tools(tenant=self.tenant, actor=self.actor,
                                                 scope=scope, tools=tools)
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Saved scope {data['name']}.")
                return redirect("registry:scope", tenant_slug, scope.pk)
        return self.render_form(request, scope, form, status=400)


class ScopeDeleteView(TenantPageView):
    """Confirm, then delete a scope (refused once it was ever granted)."""

    capability = Cap.MANAGE_REGISTRY

    def get(self, request: HttpRequest, tenant_slug: str, scope_id: int) -> HttpResponse:
        scope = access_scope(self.tenancy, scope_id, write=True)
        return render(request, "confirm.html", {
            "title": f"Delete scope {scope.name}?",
            "body": "The scope and its list of tools are deleted (the tools stay). A scope that "
                    "was ever granted is kept for the record instead.",
            "action": "Delete scope",
            "cancel_url": reverse("registry:scope", args=[tenant_slug, scope.pk]),
        })

    def post(self, request: HttpRequest, tenant_slug: str, scope_id: int) -> HttpResponse:
        scope = access_scope(self.tenancy, scope_id, write=True)
        try:
            services.scope_delete(tenant=self.tenant, actor=self.actor, scope=scope)
        except ValidationError as exc:
            messages.error(request, error_text(exc))
            return redirect("registry:scope", tenant_slug, scope.pk)
        messages.success(request, f"Deleted scope {scope.name}.")
        return redirect("registry:scopes", tenant_slug)


# --- Agents ------------------------------------------------------------------------------------


class AgentListView(TenantPageView):
    """Every agent (developers see all, and manage the ones they own)."""

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        search = request.GET.get("q", "").strip()
        mine = request.GET.get("mine") == "1"
        agents = selectors.agent_list(self.tenant, search=search,
                                      owner=request.user if mine else None)
        page = page_of(request, agents)
        manageable = manageable_agent_ids(self.tenancy, page.object_list)
        rows = [(agent, manageable is None or agent.pk in manageable) for agent in page]
        return render(request, "registry/agents.html", {
            "page": page, "rows": rows, "q": search, "mine": mine,
            "query": query_without_page(request),
            "may_create": self.tenancy.can(Cap.OWN_AGENTS),
        })


class AgentCreateView(TenantPageView):
    """Register an agent: a developer owns it; an admin may choose its owner."""

    capability = Cap.OWN_AGENTS
    post_capability = Cap.OWN_AGENTS

    def form(self, data=None) -> AgentForm:
        may_choose = self.tenancy.can(Cap.MANAGE_REGISTRY)
        return AgentForm(data, tenant=self.tenant, may_choose_owner=may_choose,
                         initial={"owner": self.request.user.pk} if may_choose else None)

    def render_form(self, request, form, status=200):
        return render(request, "registry/agent_form.html", {"form": form, "agent": None},
                      status=status)

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        return self.render_form(request, self.form())

    def post(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = self.form(request.POST)
        if form.is_valid():
            data = dict(form.cleaned_data)
            owner = data.pop("owner") if "owner" in data else request.user
            try:
                agent = services.agent_create(tenant=self.tenant, actor=self.actor, owner=owner,
                                              **data)
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Registered agent {agent.name}. Add the principal "
                                          "gateways will recognise it by.")
                return redirect("registry:agent", tenant_slug, agent.pk)
        return self.render_form(request, form, status=400)


def _agent_page(request: HttpRequest, agent: Agent, principal_form: PrincipalForm | None = None,
                status: int = 200) -> HttpResponse:
    ctx = request.tenancy
    can_manage = can_manage_agent(ctx, agent)
    return render(request, "registry/agent.html", {
        "agent": agent,
        "principals": agent.principals.order_by("issuer", "subject"),
        "grants": selectors.grant_list(ctx.tenant, agent=agent),
        "can_manage": can_manage,
        "principal_form": (principal_form or PrincipalForm()) if can_manage else None,
    }, status=status)


class AgentDetailView(TenantPageView):
    """An agent: its principals, its grants and (for its owner or an admin) what to change."""

    def get(self, request: HttpRequest, tenant_slug: str, agent_id: int) -> HttpResponse:
        return _agent_page(request, access_agent(self.tenancy, agent_id))


class AgentEditView(TenantPageView):
    """Change an agent's name, purpose and environment (and owner, for admins)."""

    capability = Cap.OWN_AGENTS
    post_capability = Cap.OWN_AGENTS

    def form(self, data=None, initial=None) -> AgentForm:
        return AgentForm(data, initial=initial, tenant=self.tenant,
                         may_choose_owner=self.tenancy.can(Cap.MANAGE_REGISTRY))

    def render_form(self, request, agent, form, status=200):
        return render(request, "registry/agent_form.html", {"form": form, "agent": agent},
                      status=status)

    def get(self, request: HttpRequest, tenant_slug: str, agent_id: int) -> HttpResponse:
        agent = access_agent(self.tenancy, agent_id, write=True)
        initial = {"name": agent.name, "purpose": agent.purpose,
                   "environment": agent.environment, "owner": agent.owner_id}
        return self.render_form(request, agent, self.form(initial=initial))

    def post(self, request: HttpRequest, tenant_slug: str, agent_id: int) -> HttpResponse:
        agent = access_agent(self.tenancy, agent_id, write=True)
        form = self.form(request.POST)
        if form.is_valid():
            try:
                services.agent_update(tenant=self.tenant, actor=self.actor, agent=agent,
                                      **form.cleaned_data)
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Saved agent {form.cleaned_data['name']}.")
                return redirect("registry:agent", tenant_slug, agent.pk)
        return self.render_form(request, agent, form, status=400)


class AgentTransitionView(TenantPageView):
    """Suspend or reactivate an agent (its owner or an admin)."""

    capability = Cap.OWN_AGENTS
    post_capability = Cap.OWN_AGENTS

    def post(self, request: HttpRequest, tenant_slug: str, agent_id: int) -> HttpResponse:
        agent = access_agent(self.tenancy, agent_id, write=True)
        try:
            agent = services.agent_transition(tenant=self.tenant, actor=self.actor, agent=agent,
                                              status=request.POST.get("status", ""))
        except ValidationError as exc:
            messages.error(request, error_text(exc))
        else:
            messages.success(request, f"Agent {agent.name} is now {agent.status}.")
        return redirect("registry:agent", tenant_slug, agent.pk)


class PrincipalAddView(TenantPageView):
    """Add an (issuer, subject) pair to an agent."""

    capability = Cap.OWN_AGENTS
    post_capability = Cap.OWN_AGENTS

    def post(self, request: HttpRequest, tenant_slug: str, agent_id: int) -> HttpResponse:
        agent = access_agent(self.tenancy, agent_id, write=True)
        form = PrincipalForm(request.POST)
        if form.is_valid():
            try:
                services.agent_principal_add(tenant=self.tenant, actor=self.actor, agent=agent,
                                             **form.cleaned_data)
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Gateways now recognise {agent.name} as "
                                          f"{form.cleaned_data['subject']!r} from "
                                          f"{form.cleaned_data['issuer']!r}.")
                return redirect("registry:agent", tenant_slug, agent.pk)
        return _agent_page(request, agent, form, status=400)


class PrincipalRemoveView(TenantPageView):
    """Confirm, then remove a principal of an agent."""

    capability = Cap.OWN_AGENTS
    post_capability = Cap.OWN_AGENTS

    def get(self, request: HttpRequest, tenant_slug: str, principal_id: int) -> HttpResponse:
        principal = access_principal(self.tenancy, principal_id, write=True)
        return render(request, "confirm.html", {
            "title": f"Remove principal {principal.subject!r}?",
            "body": f"Gateways stop recognising {principal.agent.name} as {principal.subject!r} "
                    f"from {principal.issuer!r} with the next policy bundle: its calls with that "
                    "identity are denied.",
            "action": "Remove principal",
            "cancel_url": reverse("registry:agent", args=[tenant_slug, principal.agent_id]),
        })

    def post(self, request: HttpRequest, tenant_slug: str, principal_id: int) -> HttpResponse:
        principal = access_principal(self.tenancy, principal_id, write=True)
        agent_id = principal.agent_id
        services.agent_principal_remove(tenant=self.tenant, actor=self.actor,
                                        principal=principal)
        messages.success(request, f"Removed principal {principal.subject!r}.")
        return redirect("registry:agent", tenant_slug, agent_id)


# --- Grants ------------------------------------------------------------------------------------


class GrantListView(TenantPageView):
    """Grants, filtered by agent, scope and whether they are in force; htmx gets the table."""

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = GrantFilterForm(request.GET or None, tenant=self.tenant)
        grants = Grant.objects.none()
        if not form.is_bound:
            grants = selectors.grant_list(self.tenant)
        elif form.is_valid():
            grants = selectors.grant_list(self.tenant, **form.filters())
        template = "registry/_grants_table.html" if request.htmx else "registry/grants.html"
        status = 400 if form.errors and not request.htmx else 200
        return vary_on_htmx(render(request, template, {
            "form": form, "page": page_of(request, grants), "query": query_without_page(request),
            "filtered": form.is_bound,
        }, status=status))


def _changed_terms(grant: Grant, terms: dict[str, Any]) -> dict[str, Any]:
    """Only what the form changed: an untouched past expiry is not re-validated, and an expiry
    the form showed to the minute is not "changed" by dropping its seconds."""
    changed = {}
    for field, value in terms.items():
        current = getattr(grant, field)
        if field == "expires_at" and current is not None:
            current = current.replace(second=0, microsecond=0)
        if current != value:
            changed[field] = value
    return changed


class GrantCreateView(TenantPageView):
    """Grant a scope to an agent with its limits (from the grants page or an agent's page)."""

    capability = Cap.MANAGE_REGISTRY

    def render_form(self, request, form, status=200):
        return render(request, "registry/grant_form.html", {"form": form, "grant": None},
                      status=status)

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        initial = {key: request.GET[key] for key in ("agent", "scope") if request.GET.get(key)}
        return self.render_form(request, GrantCreateForm(initial=initial, tenant=self.tenant))

    def post(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = GrantCreateForm(request.POST, tenant=self.tenant)
        if form.is_valid():
            agent, scope = form.cleaned_data["agent"], form.cleaned_data["scope"]
            try:
                grant = services.grant_create(
                    tenant=self.tenant, actor=self.actor, agent=agent, scope=scope,
                    created_by=request.user, **form.terms(),
                )
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Granted {scope.name} to {agent.name}.")
                return redirect("registry:grant", tenant_slug, grant.pk)
        return self.render_form(request, form, status=400)


class GrantDetailView(TenantPageView):
    """One grant and all its terms."""

    def get(self, request: HttpRequest, tenant_slug: str, grant_id: int) -> HttpResponse:
        grant = access_grant(self.tenancy, grant_id)
        return render(request, "registry/grant.html", {
            "grant": grant,
            "argument_constraints": _pretty(grant.argument_constraints)
            if grant.argument_constraints else "",
            "approval_condition": _pretty(grant.approval_condition)
            if grant.approval_condition else "",
            "days": [label for value, label in GrantTermsForm.base_fields["window_days"].choices
                     if value in grant.window_days],
        })


class GrantEditView(TenantPageView):
    """Change the terms of an active grant."""

    capability = Cap.MANAGE_REGISTRY

    def render_form(self, request, grant, form, status=200):
        return render(request, "registry/grant_form.html", {"form": form, "grant": grant},
                      status=status)

    def get(self, request: HttpRequest, tenant_slug: str, grant_id: int) -> HttpResponse:
        grant = access_grant(self.tenancy, grant_id, write=True)
        if grant.status != Grant.Status.ACTIVE:
            messages.error(request, "A revoked grant cannot be changed; create a new one.")
            return redirect("registry:grant", tenant_slug, grant.pk)
        form = GrantTermsForm(initial=GrantTermsForm.initial_for(grant))
        return self.render_form(request, grant, form)

    def post(self, request: HttpRequest, tenant_slug: str, grant_id: int) -> HttpResponse:
        grant = access_grant(self.tenancy, grant_id, write=True)
        form = GrantTermsForm(request.POST)
        if form.is_valid():
            changes = _changed_terms(grant, form.terms())
            try:
                if changes:
                    services.grant_update(tenant=self.tenant, actor=self.actor, grant=grant,
                                          **changes)
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Saved the grant of {grant.scope.name} to "
                                          f"{grant.agent.name}." if changes
                                 else "Nothing changed.")
                return redirect("registry:grant", tenant_slug, grant.pk)
        return self.render_form(request, grant, form, status=400)


class GrantRevokeView(TenantPageView):
    """Confirm (with a reason for the record), then revoke a grant."""

    capability = Cap.MANAGE_REGISTRY

    def render_confirm(self, request, grant, form, status=200):
        return render(request, "confirm.html", {
            "title": f"Revoke {grant.scope.name} from {grant.agent.name}?",
            "body": "Gateways deny the agent's calls under this grant from the next policy "
                    "bundle on. A revoked grant cannot be restored; you would create a new one.",
            "action": "Revoke grant",
            "form": form,
            "cancel_url": reverse("registry:grant", args=[self.tenant.slug, grant.pk]),
        }, status=status)

    def get(self, request: HttpRequest, tenant_slug: str, grant_id: int) -> HttpResponse:
        grant = access_grant(self.tenancy, grant_id, write=True)
        return self.render_confirm(request, grant, GrantRevokeForm())

    def post(self, request: HttpRequest, tenant_slug: str, grant_id: int) -> HttpResponse:
        grant = access_grant(self.tenancy, grant_id, write=True)
        form = GrantRevokeForm(request.POST)
        if not form.is_valid():
            return self.render_confirm(request, grant, form, status=400)
        services.grant_revoke(tenant=self.tenant, actor=self.actor, grant=grant,
                              reason=form.cleaned_data["reason"])
        messages.success(request, f"Revoked {grant.scope.name} from {grant.agent.name}.")
        return redirect("registry:grant", tenant_slug, grant.pk)

