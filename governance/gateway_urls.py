"""The gateway API under /api/v1/gateway/ (DESIGN.md §5), namespace ``gateway``.

Each app serves its own part (its ``gateway_urls``: bundles and keys, registry discovery reports,
approvals escalations, decision logs), included by dotted path so the core imports none of them.
"""

from __future__ import annotations

from django.urls import include, path

app_name = "gateway"

urlpatterns = [
    path("", include("bundles.gateway_urls")),
    path("", include("approvals.gateway_urls")),
    path("", include("decision_logs.gateway_urls")),
    path("", include("registry.gateway_urls")),
]
