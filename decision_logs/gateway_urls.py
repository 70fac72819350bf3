"""The decision logs' part of the gateway API (governance/gateway_urls.py): POST logs."""

from __future__ import annotations

from django.urls import path

from decision_logs import gateway_api as decision_logs

urlpatterns = [
    path("logs", decision_logs.logs, name="logs"),
]
