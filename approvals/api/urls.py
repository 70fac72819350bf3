from __future__ import annotations

from rest_framework.routers import SimpleRouter

from approvals.api import views

router = SimpleRouter()
router.register("access-requests", views.AccessRequestViewSet, basename="access-requests")
router.register("approval-policies", views.ApprovalPolicyViewSet, basename="approval-policies")

urlpatterns = router.urls
