"""Registry web pages for MCP servers: list, register, import, edit, lifecycle, syncs."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from governance.tenancy.forms import add_service_errors
from governance.tenancy.mixins import TenantPageView
from governance.tenancy.roles import Cap
from governance.web import error_text, page_of, query_without_page, vary_on_htmx
from registry import selectors
from registry.access import access_server, access_sync
from registry.forms import ServerFilterForm, ServerForm, ServerImportForm
from registry.gateway_bindings import server_bindings
from registry.gateway_discovery import needs_gateway
from registry.models import McpServer, ServerSync
from registry.services.servers import server_create, server_import, server_transition, server_update
from registry.sync import SYNCABLE, server_sync_request

RECENT_SYNCS = 10


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
            "any_server": selectors.server_any(self.tenant),
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
                server = server_create(tenant=self.tenant, actor=self.actor,
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
            server = server_import(
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
        "review_count": sum(t.status in selectors.REVIEW_STATES for t in tools),
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
                server_update(tenant=self.tenant, actor=self.actor, server=server,
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
            server = server_transition(tenant=self.tenant, actor=self.actor,
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
