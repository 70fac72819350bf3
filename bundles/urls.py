"""Gateway fleet, signing key and bundle pages under /t/<tenant_slug>/ (object kwargs are the
contract test's names)."""

from __future__ import annotations

from django.urls import path

from bundles import views

app_name = "bundles"

urlpatterns = [
    path("gateways/", views.GatewayListView.as_view(), name="gateways"),
    path("gateways/new/", views.GatewayCreateView.as_view(), name="gateway_create"),
    path("gateways/<int:gateway_id>/", views.GatewayDetailView.as_view(), name="gateway"),
    path("gateways/<int:gateway_id>/edit/", views.GatewayEditView.as_view(),
         name="gateway_edit"),
    path("gateways/<int:gateway_id>/status/", views.GatewayStatusView.as_view(),
         name="gateway_status"),
    path("gateways/<int:gateway_id>/tokens/", views.GatewayTokenIssueView.as_view(),
         name="gateway_token_issue"),
    path("gateway-tokens/<int:gateway_token_id>/revoke/", views.GatewayTokenRevokeView.as_view(),
         name="gateway_token_revoke"),
    path("signing-keys/", views.SigningKeyListView.as_view(), name="signing_keys"),
    path("signing-keys/rotate/", views.SigningKeyRotateView.as_view(),
         name="signing_key_rotate"),
    path("signing-keys/<int:key_id>/activate/", views.SigningKeyActivateView.as_view(),
         name="signing_key_activate"),
    path("signing-keys/<int:key_id>/revoke/", views.SigningKeyRevokeView.as_view(),
         name="signing_key_revoke"),
    path("bundles/", views.BundleListView.as_view(), name="bundles"),
    path("bundles/publish/", views.BundlePublishView.as_view(), name="bundle_publish"),
    path("bundles/compare/", views.BundleCompareView.as_view(), name="bundle_compare"),
    path("bundles/<int:bundle_id>/download/", views.BundleDownloadView.as_view(),
         name="bundle_download"),
    path("bundles/export/agentgateway/",
         views.BundlePolicyExportView.as_view(kind="agentgateway"),
         name="bundle_export_agentgateway"),
    path("bundles/export/cedar/", views.BundlePolicyExportView.as_view(kind="cedar"),
         name="bundle_export_cedar"),
]
