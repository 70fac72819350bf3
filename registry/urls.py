"""Registry web pages under /t/<tenant_slug>/ (object kwargs are the contract test's names)."""

from __future__ import annotations

from django.urls import path

from registry import gateway_bindings, views

app_name = "registry"

urlpatterns = [
    path("servers/", views.ServerListView.as_view(), name="servers"),
    path("servers/new/", views.ServerCreateView.as_view(), name="server_create"),
    path("servers/import/", views.ServerImportView.as_view(), name="server_import"),
    path("servers/<int:server_id>/", views.ServerDetailView.as_view(), name="server"),
    path("servers/<int:server_id>/edit/", views.ServerEditView.as_view(), name="server_edit"),
    path("servers/<int:server_id>/status/", views.ServerTransitionView.as_view(),
         name="server_transition"),
    path("servers/<int:server_id>/sync/", views.ServerSyncView.as_view(), name="server_sync"),
    path("servers/<int:server_id>/syncs/<int:sync_id>/", views.SyncView.as_view(), name="sync"),
    path("gateways/<int:gateway_id>/servers/", gateway_bindings.GatewayBindView.as_view(),
         name="gateway_bind"),
    path("gateway-bindings/<int:binding_id>/remove/",
         gateway_bindings.GatewayUnbindView.as_view(), name="gateway_unbind"),
    path("tools/<int:tool_id>/", views.ToolDetailView.as_view(), name="tool"),
    path("tools/<int:tool_id>/approve/", views.ToolApproveView.as_view(), name="tool_approve"),
    path("tools/<int:tool_id>/block/", views.ToolBlockView.as_view(), name="tool_block"),
    path("scopes/", views.ScopeListView.as_view(), name="scopes"),
    path("scopes/new/", views.ScopeCreateView.as_view(), name="scope_create"),
    path("scopes/<int:scope_id>/", views.ScopeDetailView.as_view(), name="scope"),
    path("scopes/<int:scope_id>/edit/", views.ScopeEditView.as_view(), name="scope_edit"),
    path("scopes/<int:scope_id>/delete/", views.ScopeDeleteView.as_view(), name="scope_delete"),
    path("agents/", views.AgentListView.as_view(), name="agents"),
    path("agents/new/", views.AgentCreateView.as_view(), name="agent_create"),
    path("agents/<int:agent_id>/", views.AgentDetailView.as_view(), name="agent"),
    path("agents/<int:agent_id>/edit/", views.AgentEditView.as_view(), name="agent_edit"),
    path("agents/<int:agent_id>/status/", views.AgentTransitionView.as_view(),
         name="agent_transition"),
    path("agents/<int:agent_id>/principals/", views.PrincipalAddView.as_view(),
         name="principal_add"),
    path("principals/<int:principal_id>/remove/", views.PrincipalRemoveView.as_view(),
         name="principal_remove"),
    path("grants/", views.GrantListView.as_view(), name="grants"),
    path("grants/new/", views.GrantCreateView.as_view(), name="grant_create"),
    path("grants/<int:grant_id>/", views.GrantDetailView.as_view(), name="grant"),
    path("grants/<int:grant_id>/edit/", views.GrantEditView.as_view(), name="grant_edit"),
    path("grants/<int:grant_id>/revoke/", views.GrantRevokeView.as_view(), name="grant_revoke"),
]
