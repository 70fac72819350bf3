from __future__ import annotations

from rest_framework.routers import SimpleRouter

from bundles.api import views

router = SimpleRouter()
router.register("gateways", views.GatewayViewSet, basename="gateways")
router.register("gateway-tokens", views.GatewayTokenViewSet, basename="gateway-tokens")
router.register("signing-keys", views.SigningKeyViewSet, basename="signing-keys")
router.register("bundles", views.BundleViewSet, basename="bundles")

urlpatterns = router.urls
