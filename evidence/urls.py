"""Evidence pack pages under /t/<tenant_slug>/evidence/ (object kwargs are the contract test's
names)."""

from __future__ import annotations

from django.urls import path

from evidence import views

app_name = "evidence"

urlpatterns = [
    path("evidence/", views.PackListView.as_view(), name="packs"),
    path("evidence/<int:pack_id>/", views.PackView.as_view(), name="pack"),
    path("evidence/<int:pack_id>/download/", views.PackDownloadView.as_view(),
         name="download"),
]
