from __future__ import annotations

from rest_framework.routers import SimpleRouter

from alerts.api import views

router = SimpleRouter()
router.register("alerts", views.AlertViewSet, basename="alerts")
router.register("alert-rules", views.AlertRuleViewSet, basename="alert-rules")

urlpatterns = router.urls
