from __future__ import annotations

from rest_framework.routers import SimpleRouter

from registry.api import bindings, simulator, views

router = SimpleRouter()
router.register("servers", views.ServerViewSet, basename="servers")
router.register("syncs", views.SyncViewSet, basename="syncs")
router.register("tools", views.ToolViewSet, basename="tools")
router.register("scopes", views.ScopeViewSet, basename="scopes")
router.register("agents", views.AgentViewSet, basename="agents")
router.register("principals", views.PrincipalViewSet, basename="principals")
router.register("grants", views.GrantViewSet, basename="grants")
router.register("gateway-bindings", bindings.GatewayBindingViewSet, basename="gateway-bindings")

router.register("policy-simulations", simulator.SimulationViewSet,
                basename="policy-simulations")

urlpatterns = router.urls
