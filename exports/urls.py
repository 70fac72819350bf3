"""Exporter pages under /t/<tenant_slug>/exports/ (object kwargs are the contract test's
names)."""

from __future__ import annotations

from django.urls import path

from exports import views

app_name = "exports"

urlpatterns = [
    path("exports/", views.ExporterListView.as_view(), name="exporters"),
    path("exports/new/", views.ExporterCreateView.as_view(), name="exporter_create"),
    path("exports/<int:exporter_id>/edit/", views.ExporterEditView.as_view(),
         name="exporter_edit"),
    path("exports/<int:exporter_id>/delete/", views.ExporterDeleteView.as_view(),
         name="exporter_delete"),
    path("exports/<int:exporter_id>/enabled/", views.ExporterToggleView.as_view(),
         name="exporter_toggle"),
    path("exports/<int:exporter_id>/run/", views.ExporterRunView.as_view(), name="exporter_run"),
    path("exports/<int:exporter_id>/test/", views.ExporterTestView.as_view(),
         name="exporter_test"),
    path("exports/<int:exporter_id>/reset/", views.ExporterResetView.as_view(),
         name="exporter_reset"),
]
