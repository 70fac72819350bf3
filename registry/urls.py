"""Registry web pages under /t/<tenant_slug>/ (object kwargs are the contract test's names)."""

from __future__ import annotations

from django.urls import path

from registry import gateway_bindings
from registry.views import agents, grants, scopes, servers, simulator, tools

app_name = "registry"

urlpatterns = [
    path("servers/", servers.ServerListView.as_view(), name="servers"),
    path("servers/new/", servers.ServerCreateView.as_view(), name="server_create"),
    path("servers/import/", servers.ServerImportView.as_view(), name="server_import"),
    path("servers/<int:server_id>/", servers.ServerDetailView.as_view(), name="server"),
    path("servers/<int:server_id>/edit/", servers.ServerEditView.as_view(), name="server_edit"),
    path("servers/<int:server_id>/status/", servers.ServerTransitionView.as_view(),
         name="server_transition"),
    path("servers/<int:server_id>/sync/", servers.ServerSyncView.as_view(), name="server_sync"),
    path("servers/<int:server_id>/syncs/<int:sync_id>/", servers.SyncView.as_view(), name="sync"),
    path("gateways/<int:gateway_id>/servers/", gateway_bindings.GatewayBindView.as_view(),
         name="gateway_bind"),
    path("gateway-bindings/<int:binding_id>/remove/",
         gateway_bindings.GatewayUnbindView.as_view(), name="gateway_unbind"),
    path("tools/<int:tool_id>/", tools.ToolDetailView.as_view(), name="tool"),
    path("tools/<int:tool_id>/approve/", tools.ToolApproveView.as_view(), name="tool_approve"),
    path("tools/<int:tool_id>/block/", tools.ToolBlockView.as_view(), name="tool_block"),
    path("scopes/", scopes.ScopeListView.as_view(), name="scopes"),
    path("scopes/new/", scopes.ScopeCreateView.as_view(), name="scope_create"),
    path("scopes/<int:scope_id>/", scopes.ScopeDetailView.as_view(), name="scope"),
    path("scopes/<int:scope_id>/edit/", scopes.ScopeEditView.as_view(), name="scope_edit"),
    path("scopes/<int:scope_id>/delete/", scopes.ScopeDeleteView.as_view(), name="scope_delete"),
    path("agents/", agents.AgentListView.as_view(), name="agents"),
    path("agents/new/", agents.AgentCreateView.as_view(), name="agent_create"),
    path("agents/<int:agent_id>/", agents.AgentDetailView.as_view(), name="agent"),
    path("agents/<int:agent_id>/edit/", agents.AgentEditView.as_view(), name="agent_edit"),
    path("agents/<int:agent_id>/status/", agents.AgentTransitionView.as_view(),
         name="agent_transition"),
    path("agents/<int:agent_id>/principals/", agents.PrincipalAddView.as_view(),
         name="principal_add"),
    path("principals/<int:principal_id>/remove/", agents.PrincipalRemoveView.as_view(),
         name="principal_remove"),
    path("grants/", grants.GrantListView.as_view(), name="grants"),
    path("grants/new/", grants.GrantCreateView.as_view(), name="grant_create"),
    path("grants/<int:grant_id>/", grants.GrantDetailView.as_view(), name="grant"),
    path("grants/<int:grant_id>/edit/", grants.GrantEditView.as_view(), name="grant_edit"),
    path("grants/<int:grant_id>/revoke/", grants.GrantRevokeView.as_view(), name="grant_revoke"),
    path("policy/simulator/", simulator.SimulatorView.as_view(), name="simulator"),
]
