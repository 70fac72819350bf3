"""The gateway API under /api/v1/gateway/ (DESIGN.md §5)."""

from __future__ import annotations

from django.urls import path

from approvals import gateway_api as escalations
from bundles import gateway_api
from decision_logs import gateway_api as decision_logs
from registry import gateway_api as discovery

app_name = "gateway"

urlpatterns = [
    path("bundles/<slug:slug>", gateway_api.bundle, name="bundle"),
    path("keys/<slug:slug>", gateway_api.keys, name="keys"),
    path("status", gateway_api.status, name="status"),
    path("status/<slug:slug>", gateway_api.status, name="status_tenant"),
    path("escalations", escalations.escalations, name="escalations"),
    path("escalations/<uuid:escalation_id>", escalations.escalation, name="escalation"),
    path("escalations/<uuid:escalation_id>/consume", escalations.consume,
         name="escalation_consume"),
    path("logs", decision_logs.logs, name="logs"),
    path("discovery", discovery.discovery_report, name="discovery"),
]
