from __future__ import annotations

from rest_framework.routers import SimpleRouter

from approvals.api import views

router = SimpleRouter()
router.register("access-requests", views.AccessRequestViewSet, basename="access-requests")
router.register("approval-policies", views.ApprovalPolicyViewSet, basename="approval-policies")
router.register("escalations", views.EscalationViewSet, basename="escalations")
router.register("break-glass", views.BreakGlassViewSet, basename="break-glass")

urlpatterns = router.urls
