"""Evidence pack pages (admins and auditors). Thin: parse the form → access helper → service →
post/redirect/get; htmx polls the status fragments while a pack is being built."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from evidence import selectors, services
from evidence.access import access_pack
from evidence.forms import EvidencePackForm, last_days, previous_quarter
from governance.tenancy.forms import add_service_errors
from governance.tenancy.mixins import TenantPageView
from governance.tenancy.roles import Cap
from governance.web import error_text, page_of, query_without_page, vary_on_htmx


class EvidencePage(TenantPageView):
    capability = Cap.EXPORT_EVIDENCE


class PackListView(EvidencePage):
    """The period form and the tenant's packs, newest first; htmx refreshes the list while a
    pack is queued or running."""

    def context(self, request: HttpRequest, form: EvidencePackForm) -> dict:
        today = services.today()
        return {
            "form": form, "page": page_of(request, selectors.packs(self.tenant)),
            "query": query_without_page(request), "any_open": selectors.any_open(self.tenant),
            "presets": [("Last 90 days", *last_days(today)),
                        ("Previous quarter", *previous_quarter(today)),
                        ("Last 12 months", *last_days(today, 365))],
        }

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        start, end = last_days(services.today())
        initial = {"period_start": start, "period_end": end}
        preset = EvidencePackForm(request.GET)
        if "period_start" in request.GET and preset.is_valid():  # a preset link
            initial = preset.cleaned_data
        form = EvidencePackForm(initial=initial)
        template = "evidence/_packs.html" if request.htmx else "evidence/packs.html"
        return vary_on_htmx(render(request, template, self.context(request, form)))

    def post(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = EvidencePackForm(request.POST)
        if form.is_valid():
            try:
                pack = services.evidence_pack_request(
                    tenant=self.tenant, actor=self.actor, requested_by=request.user,
                    **form.cleaned_data)
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Evidence pack #{pack.pk} queued; this page shows "
                                          "its progress.")
                return redirect("evidence:pack", tenant_slug, pack.pk)
        return render(request, "evidence/packs.html", self.context(request, form), status=400)


class PackView(EvidencePage):
    """One pack: its progress while it is built (htmx polls the fragment every 2 s and stops
    once it is done or failed), then its findings, files and the download link."""

    def get(self, request: HttpRequest, tenant_slug: str, pack_id: int) -> HttpResponse:
        pack = access_pack(self.tenancy, pack_id)
        template = "evidence/_pack_status.html" if request.htmx else "evidence/pack.html"
        return vary_on_htmx(render(request, template, {"pack": pack}))


class PackDownloadView(EvidencePage):
    """The zip, as an attachment; every download is audited."""

    def get(self, request: HttpRequest, tenant_slug: str, pack_id: int) -> HttpResponse:
        pack = access_pack(self.tenancy, pack_id)
        try:
            content = services.evidence_pack_download(tenant=self.tenant, actor=self.actor,
                                                      pack=pack)
        except ValidationError as exc:
            messages.error(request, error_text(exc))
            return redirect("evidence:pack", tenant_slug, pack.pk)
        return zip_response(pack, content)


def zip_response(pack, content: bytes) -> HttpResponse:
    response = HttpResponse(content, content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{pack.filename()}"'
    response["ETag"] = f'"{pack.sha256}"'
    response["Cache-Control"] = "private, no-store"
    return response
