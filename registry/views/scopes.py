"""Registry web pages for tool scopes: list, create, edit, delete."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from governance.tenancy.forms import add_service_errors
from governance.tenancy.mixins import TenantPageView
from governance.tenancy.roles import Cap
from governance.web import error_text, page_of, pluralized
from registry import selectors
from registry.access import access_scope
from registry.forms import ScopeForm
from registry.services.scopes import scope_create, scope_delete, scope_set_tools, scope_update


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
                scope = scope_create(tenant=self.tenant, actor=self.actor,
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
            "tools": selectors.scope_tools(self.tenant, scope),
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
                        scope_update(tenant=self.tenant, actor=self.actor, scope=scope,
                                              **changes)
                    if tools != set(scope.tools.all()):
                        scope_set_tools(tenant=self.tenant, actor=self.actor,
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
            scope_delete(tenant=self.tenant, actor=self.actor, scope=scope)
        except ValidationError as exc:
            messages.error(request, error_text(exc))
            return redirect("registry:scope", tenant_slug, scope.pk)
        messages.success(request, f"Deleted scope {scope.name}.")
        return redirect("registry:scopes", tenant_slug)
