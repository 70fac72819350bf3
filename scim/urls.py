"""SCIM provisioning pages under /t/<tenant_slug>/identity/scim/ (object kwargs are the
contract test's names)."""

from __future__ import annotations

from django.urls import path

from scim import views

app_name = "scim"

urlpatterns = [
    path("identity/scim/", views.ScimTokenListView.as_view(), name="tokens"),
    path("identity/scim/tokens/<int:scim_token_id>/revoke/", views.ScimTokenRevokeView.as_view(),
         name="token_revoke"),
]
