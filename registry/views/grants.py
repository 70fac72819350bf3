"""Registry web pages for grants: list, create, edit, revoke."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from governance.tenancy.forms import add_service_errors
from governance.tenancy.mixins import TenantPageView
from governance.tenancy.roles import Cap
from governance.web import page_of, query_without_page, vary_on_htmx
from registry import selectors
from registry.access import access_grant
from registry.forms import GrantCreateForm, GrantFilterForm, GrantRevokeForm, GrantTermsForm
from registry.models import Grant
from registry.services.grants import grant_create, grant_revoke, grant_update
from registry.views.common import pretty_json


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
                grant = grant_create(
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
            "argument_constraints": pretty_json(grant.argument_constraints)
            if grant.argument_constraints else "",
            "approval_condition": pretty_json(grant.approval_condition)
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
                    grant_update(tenant=self.tenant, actor=self.actor, grant=grant,
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
        grant_revoke(tenant=self.tenant, actor=self.actor, grant=grant,
                              reason=form.cleaned_data["reason"])
        messages.success(request, f"Revoked {grant.scope.name} from {grant.agent.name}.")
        return redirect("registry:grant", tenant_slug, grant.pk)
