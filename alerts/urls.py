"""Alert pages under /t/<tenant_slug>/ (object kwargs are the contract test's names)."""

from __future__ import annotations

from django.urls import path

from alerts import views

app_name = "alerts"

urlpatterns = [
    path("alerts/", views.AlertListView.as_view(), name="list"),
    path("alerts/rules/", views.AlertRulesView.as_view(), name="rules"),
    path("alerts/<int:alert_id>/", views.AlertDetailView.as_view(), name="detail"),
]
