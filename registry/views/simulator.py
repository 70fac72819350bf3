"""The policy simulator page (admins and auditors): a GET form, so a filled-in simulation is a
link (the approver's view of a held call links here prefilled). Thin: form → simulator →
render."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from governance.tenancy.forms import add_service_errors
from governance.tenancy.mixins import TenantPageView
from governance.tenancy.roles import Cap
from registry import simulator
from registry.forms import SimulatorForm
from registry.models import Agent, Tool
from registry.views.common import pretty_json


class SimulatorView(TenantPageView):
    """"Agent X calls tool T with arguments A at time t": the decision function's answer."""

    capability = Cap.VIEW_AUDIT

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = SimulatorForm(request.GET if "agent" in request.GET else None)
        result = None
        if form.is_bound and form.is_valid():
            try:
                result = simulator.simulate(self.tenant, **form.cleaned_data)
            except ValidationError as exc:
                add_service_errors(form, exc)
        return render(request, "registry/simulator.html", {
            "form": form, "result": result,
            "arguments_json": pretty_json(result.arguments) if result else "",
            "agent_names": Agent.objects.for_tenant(self.tenant).order_by("name")
            .values_list("name", flat=True)[:500],
            "tool_names": Tool.objects.for_tenant(self.tenant).order_by("server__name", "name")
            .values_list("server__name", "name")[:1000],
        }, status=400 if form.errors else 200)
