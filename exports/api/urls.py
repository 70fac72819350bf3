from __future__ import annotations

from rest_framework.routers import SimpleRouter

from exports.api import views

router = SimpleRouter()
router.register("exporters", views.ExporterViewSet, basename="exporters")

urlpatterns = router.urls
