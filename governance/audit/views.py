"""Audit log pages for admins and auditors."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from governance.audit import selectors
from governance.audit.forms import AuditFilterForm
from governance.audit.models import AuditEvent
from governance.audit.services import audit_verify
from governance.tenancy.mixins import TenantPageView
from governance.tenancy.roles import Cap
from governance.web import page_of, query_without_page, vary_on_htmx

PAGE_SIZE = 50


class AuditLogView(TenantPageView):
    """Filterable, paginated audit trail; htmx requests get just the table."""

    capability = Cap.VIEW_AUDIT

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = AuditFilterForm(request.GET or None)
        events = AuditEvent.objects.none()
        if form.is_bound and form.is_valid():
            events = selectors.audit_event_list(self.tenant, **form.filters())
        elif not form.is_bound:
            events = selectors.audit_event_list(self.tenant)
        page = page_of(request, events, PAGE_SIZE)
        template = "audit/_events_table.html" if request.htmx else "audit/log.html"
        # htmx swaps only 2xx responses: a rejected filter is shown in the table with a 200.
        status = 400 if form.errors and not request.htmx else 200
        return vary_on_htmx(render(request, template, {
            "form": form, "page": page, "query": query_without_page(request),
            "actions": selectors.audit_actions(self.tenant),
        }, status=status))


class AuditEventView(TenantPageView):
    """One event with its before/after and its place in the chain."""

    capability = Cap.VIEW_AUDIT

    def get(self, request: HttpRequest, tenant_slug: str, event_id: int) -> HttpResponse:
        event = selectors.audit_event_list(self.tenant).filter(pk=event_id).first()
        if event is None:
            raise Http404("No such audit event")
        return render(request, "audit/event.html", {"event": event})


class AuditVerifyView(TenantPageView):
    """Re-verify this tenant's chain on demand."""

    capability = Cap.VIEW_AUDIT
    post_capability = Cap.VIEW_AUDIT

    def post(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        reports = list(audit_verify(tenant=self.tenant))
        return render(request, "audit/_verify_result.html", {"reports": reports})
