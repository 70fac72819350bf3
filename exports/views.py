"""SIEM exporter pages under /t/<tenant_slug>/exports/ (admins only). Thin: parse the form →
access helper → service → post/redirect/get."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from exports import selectors, services
from exports.access import access_exporter
from exports.forms import ExporterForm, ResetCursorForm
from exports.models import Exporter
from exports.senders import export_dir
from governance.tenancy.forms import add_service_errors
from governance.tenancy.mixins import TenantPageView
from governance.tenancy.roles import Cap
from governance.web import error_text, vary_on_htmx


def age_text(seconds: float | None) -> str:
    """A lag for people: "12 s", "4 min", "3 h 20 min", "2 d 5 h"."""
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 3600:
        return f"{minutes} min"
    if seconds < 86400:
        return f"{hours} h {minutes % 60} min"
    return f"{days} d {hours % 24} h"


class ExportPage(TenantPageView):
    capability = Cap.MANAGE_EXPORTS


class ExporterListView(ExportPage):
    """Every exporter with its target, status, lag and last error; htmx refreshes the table."""

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        rows = []
        for exporter in selectors.exporters(self.tenant):
            lag = selectors.exporter_lag(exporter)
            rows.append({"exporter": exporter, "lag": lag,
                         "age": age_text(lag["seconds_behind"])})
        template = "exports/_table.html" if request.htmx else "exports/exporters.html"
        return vary_on_htmx(render(request, template, {
            "rows": rows, "export_dir": export_dir(self.tenant),
        }))


class ExporterFormView(ExportPage):
    def render_form(self, request, form, exporter=None, status=200):
        return render(request, "exports/exporter_form.html", {
            "form": form, "exporter": exporter, "export_dir": export_dir(self.tenant),
        }, status=status)


class ExporterCreateView(ExporterFormView):
    """Add an exporter: kind, stream, target, and whether it starts with stored events."""

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        return self.render_form(request, ExporterForm())

    def post(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = ExporterForm(request.POST)
        if form.is_valid():
            try:
                exporter = services.exporter_create(tenant=self.tenant, actor=self.actor,
                                                    created_by=request.user, **form.cleaned_data)
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Added exporter {exporter.name}. Use “Test "
                                          "connection” to check the receiver.")
                return redirect("exports:exporters", tenant_slug)
        return self.render_form(request, form, status=400)


class ExporterEditView(ExporterFormView):
    """Change an exporter; the HEC token is never shown, only replaced."""

    def get(self, request: HttpRequest, tenant_slug: str, exporter_id: int) -> HttpResponse:
        exporter = access_exporter(self.tenancy, exporter_id)
        form = ExporterForm(initial=ExporterForm.initial_for(exporter), exporter=exporter)
        return self.render_form(request, form, exporter)

    def post(self, request: HttpRequest, tenant_slug: str, exporter_id: int) -> HttpResponse:
        exporter = access_exporter(self.tenancy, exporter_id)
        form = ExporterForm(request.POST, initial=ExporterForm.initial_for(exporter),
                            exporter=exporter)
        if form.is_valid():
            try:
                exporter = services.exporter_update(tenant=self.tenant, actor=self.actor,
                                                    exporter=exporter, **form.cleaned_data)
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Saved exporter {exporter.name}.")
                return redirect("exports:exporters", tenant_slug)
        return self.render_form(request, form, exporter, status=400)


class ExporterDeleteView(ExportPage):
    """Confirm, then delete an exporter."""

    def get(self, request: HttpRequest, tenant_slug: str, exporter_id: int) -> HttpResponse:
        exporter = access_exporter(self.tenancy, exporter_id)
        return render(request, "confirm.html", {
            "title": f"Delete exporter {exporter.name}?",
            "body": f"Nothing more is sent to {exporter.target}; what it already received "
                    f"({exporter.exported_total} events) stays there. The audit trail keeps "
                    "the record of the exporter.",
            "action": "Delete exporter", "danger": True,
            "cancel_url": reverse("exports:exporters", args=[tenant_slug]),
        })

    def post(self, request: HttpRequest, tenant_slug: str, exporter_id: int) -> HttpResponse:
        exporter = access_exporter(self.tenancy, exporter_id)
        services.exporter_delete(tenant=self.tenant, actor=self.actor, exporter=exporter)
        messages.success(request, f"Deleted exporter {exporter.name}.")
        return redirect("exports:exporters", tenant_slug)


class ExporterToggleView(ExportPage):
    """Enable or disable an exporter (POST ``enabled`` = on/off)."""

    def post(self, request: HttpRequest, tenant_slug: str, exporter_id: int) -> HttpResponse:
        exporter = access_exporter(self.tenancy, exporter_id)
        enabled = request.POST.get("enabled") == "on"
        services.exporter_update(tenant=self.tenant, actor=self.actor, exporter=exporter,
                                 enabled=enabled)
        messages.success(request, f"{'Enabled' if enabled else 'Disabled'} exporter "
                                  f"{exporter.name}.")
        return redirect("exports:exporters", tenant_slug)


class ExporterRunView(ExportPage):
    """Send now: queue a run (also cutting a failing exporter's backoff short)."""

    def post(self, request: HttpRequest, tenant_slug: str, exporter_id: int) -> HttpResponse:
        exporter = access_exporter(self.tenancy, exporter_id)
        try:
            services.exporter_request_run(tenant=self.tenant, actor=self.actor,
                                          exporter=exporter)
        except ValidationError as exc:
            messages.error(request, error_text(exc))
        else:
            messages.success(request, f"Queued a run of {exporter.name}; its lag and last "
                                      "success below update within seconds.")
        return redirect("exports:exporters", tenant_slug)


class ExporterTestView(ExportPage):
    """Test connection: one test message now, with a short timeout; the result is shown."""

    def post(self, request: HttpRequest, tenant_slug: str, exporter_id: int) -> HttpResponse:
        exporter = access_exporter(self.tenancy, exporter_id)
        result = services.exporter_test(tenant=self.tenant, actor=self.actor, exporter=exporter)
        if result.ok:
            messages.success(request, f"Test of {exporter.name} succeeded: {result.message}")
        else:
            messages.error(request, f"Test of {exporter.name} failed: {result.message}")
        return redirect("exports:exporters", tenant_slug)


class ExporterResetView(ExportPage):
    """Confirm, then move the cursor to the beginning or to now."""

    def render_confirm(self, request, exporter: Exporter, form, status=200) -> HttpResponse:
        return render(request, "confirm.html", {
            "title": f"Reset the cursor of {exporter.name}?",
            "body": f"It has sent up to row {exporter.cursor} of the "
                    f"{exporter.get_stream_display().lower()}. From the beginning sends every "
                    "stored event again (the receiver gets duplicates); from now skips what is "
                    "stored (the receiver never gets it).",
            "action": "Reset cursor", "danger": True, "form": form,
            "cancel_url": reverse("exports:exporters", args=[self.tenant.slug]),
        }, status=status)

    def get(self, request: HttpRequest, tenant_slug: str, exporter_id: int) -> HttpResponse:
        exporter = access_exporter(self.tenancy, exporter_id)
        return self.render_confirm(request, exporter, ResetCursorForm())

    def post(self, request: HttpRequest, tenant_slug: str, exporter_id: int) -> HttpResponse:
        exporter = access_exporter(self.tenancy, exporter_id)
        form = ResetCursorForm(request.POST)
        if not form.is_valid():
            return self.render_confirm(request, exporter, form, status=400)
        exporter = services.exporter_reset_cursor(tenant=self.tenant, actor=self.actor,
                                                  exporter=exporter,
                                                  start=form.cleaned_data["start"])
        messages.success(request, f"Cursor of {exporter.name} is now at row {exporter.cursor}.")
        return redirect("exports:exporters", tenant_slug)
