from __future__ import annotations

from django.urls import path
from rest_framework.routers import SimpleRouter

from governance.tenancy.api import views

router = SimpleRouter()
router.register("members", views.MembershipViewSet, basename="members")
router.register("invitations", views.InvitationViewSet, basename="invitations")
router.register("group-mappings", views.GroupMappingViewSet, basename="group-mappings")
router.register("tokens", views.ApiTokenViewSet, basename="tokens")

urlpatterns = [
    path("settings/", views.TenantSettingsViewSet.as_view({"get": "show", "patch": "change"}),
         name="tenant-settings"),
    *router.urls,
]
