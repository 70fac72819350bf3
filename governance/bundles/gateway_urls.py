"""The gateway API under /api/v1/gateway/ (DESIGN.md §5)."""

from __future__ import annotations

from django.urls import path

from governance.bundles import gateway_api

app_name = "gateway"

urlpatterns = [
    path("bundles/<slug:slug>", gateway_api.bundle, name="bundle"),
    path("keys/<slug:slug>", gateway_api.keys, name="keys"),
    path("status", gateway_api.status, name="status"),
    path("status/<slug:slug>", gateway_api.status, name="status_tenant"),
]
