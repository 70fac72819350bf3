"""Observability pages under /t/<tenant_slug>/ (``/metrics`` is outside tenants: see
governance/urls.py)."""

from __future__ import annotations

from django.urls import path

from observability import views

app_name = "observability"

urlpatterns = [
    path("dashboard/", views.DashboardView.as_view(), name="dashboard"),
]
