"""The tenant dashboard (every member) and the Prometheus scrape endpoint (token or network)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client.exposition import choose_encoder

from governance.tenancy.mixins import TenantPageView
from governance.tenancy.roles import Cap
from observability import dashboard, metrics, selectors


class DashboardView(TenantPageView):
    """Charts of the tenant's decisions, approvals, fleet and drifted tools; ``?range=7d``
    widens the decisions chart to a week."""

    capability = Cap.VIEW

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        range_key = request.GET.get("range", selectors.DEFAULT_RANGE)
        if range_key not in selectors.RANGES:
            range_key = selectors.DEFAULT_RANGE
        context = dashboard.build(self.tenant, range_key=range_key, now=timezone.now())
        context["ranges"] = selectors.RANGES.values()
        context["range_key"] = range_key
        return render(request, "observability/dashboard.html", context)


@never_cache
@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition (text, or OpenMetrics when the scraper asks for it)."""
    refused = metrics.refusal(request)
    if refused is not None:
        return refused
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(metrics.registry()), content_type=content_type)
