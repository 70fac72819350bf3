from __future__ import annotations

from rest_framework.routers import SimpleRouter

from evidence.api import views

router = SimpleRouter()
router.register("evidence-packs", views.EvidencePackViewSet, basename="evidence-packs")

urlpatterns = router.urls
