from __future__ import annotations

from rest_framework.routers import SimpleRouter

from scim.api import views

router = SimpleRouter()
router.register("scim-tokens", views.ScimTokenViewSet, basename="scim-tokens")

urlpatterns = router.urls
