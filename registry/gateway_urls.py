"""The registry's part of the gateway API (governance/gateway_urls.py): discovery reports."""

from __future__ import annotations

from django.urls import path

from registry import gateway_api as discovery

urlpatterns = [
    path("discovery", discovery.discovery_report, name="discovery"),
]
