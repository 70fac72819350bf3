from __future__ import annotations

from rest_framework.routers import SimpleRouter

from decision_logs.api import replays, views

router = SimpleRouter()
router.register("decision-logs", views.DecisionLogViewSet, basename="decision-logs")
router.register("decision-replays", replays.ReplayViewSet, basename="decision-replays")

urlpatterns = router.urls
