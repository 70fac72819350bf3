from __future__ import annotations

from rest_framework.routers import SimpleRouter

from governance.audit.api import views

router = SimpleRouter()
router.register("audit-events", views.AuditEventViewSet, basename="audit-events")

urlpatterns = router.urls
