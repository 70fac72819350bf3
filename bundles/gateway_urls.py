"""The bundles' part of the gateway API (governance/gateway_urls.py): bundles, keys, status."""

from __future__ import annotations

from django.urls import path

from bundles import gateway_api

urlpatterns = [
    path("bundles/<slug:slug>", gateway_api.bundle, name="bundle"),
    path("keys/<slug:slug>", gateway_api.keys, name="keys"),
    path("status", gateway_api.status, name="status"),
    path("status/<slug:slug>", gateway_api.status, name="status_tenant"),
]
