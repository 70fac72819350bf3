from __future__ import annotations

from django.urls import path

from governance.tenancy import views

app_name = "tenancy"

urlpatterns = [
    path("", views.TenantHomeView.as_view(), name="tenant_home"),
    path("members/", views.MemberListView.as_view(), name="members"),
    path("members/<int:membership_id>/", views.MemberEditView.as_view(), name="member_edit"),
    path("members/<int:membership_id>/remove/", views.MemberRemoveView.as_view(),
         name="member_remove"),
    path("invitations/<int:invitation_id>/revoke/", views.InvitationRevokeView.as_view(),
         name="invitation_revoke"),
    path("group-mappings/", views.GroupMappingListView.as_view(), name="group_mappings"),
    path("group-mappings/<int:mapping_id>/", views.GroupMappingEditView.as_view(),
         name="group_mapping_edit"),
    path("group-mappings/<int:mapping_id>/delete/", views.GroupMappingDeleteView.as_view(),
         name="group_mapping_delete"),
    path("settings/", views.TenantSettingsView.as_view(), name="settings"),
    path("tokens/", views.TokenListView.as_view(), name="tokens"),
    path("tokens/<int:token_id>/revoke/", views.TokenRevokeView.as_view(), name="token_revoke"),
]
