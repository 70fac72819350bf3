"""The approvals' part of the gateway API (governance/gateway_urls.py): escalations."""

from __future__ import annotations

from django.urls import path

from approvals import gateway_api as escalations

urlpatterns = [
    path("escalations", escalations.escalations, name="escalations"),
    path("escalations/<uuid:escalation_id>", escalations.escalation, name="escalation"),
    path("escalations/<uuid:escalation_id>/consume", escalations.consume,
         name="escalation_consume"),
]
