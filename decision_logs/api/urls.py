from __future__ import annotations

from rest_framework.routers import SimpleRouter

from decision_logs.api import views

router = SimpleRouter()
router.register("decision-logs", views.DecisionLogViewSet, basename="decision-logs")

urlpatterns = router.urls
