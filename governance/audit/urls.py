from __future__ import annotations

from django.urls import path

from governance.audit import views

app_name = "audit"

urlpatterns = [
    path("audit/", views.AuditLogView.as_view(), name="log"),
    path("audit/verify/", views.AuditVerifyView.as_view(), name="verify"),
    path("audit/<int:event_id>/", views.AuditEventView.as_view(), name="event"),
]
