"""``/metrics`` (outside tenants; included at the root by governance/urls.py)."""

from __future__ import annotations

from django.urls import path

from observability import views

urlpatterns = [
    path("metrics", views.metrics_view, name="metrics"),
]
