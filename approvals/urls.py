"""Approvals web pages under /t/<tenant_slug>/approvals/ (object kwargs are the contract test's
names)."""

from __future__ import annotations

from django.urls import path

from approvals import views

app_name = "approvals"

urlpatterns = [
    path("approvals/", views.InboxView.as_view(), name="inbox"),
    path("approvals/approve-low-risk/", views.BulkApproveView.as_view(), name="bulk_approve"),
    path("approvals/requests/", views.MyRequestsView.as_view(), name="my_requests"),
    path("approvals/requests/new/", views.RequestCreateView.as_view(), name="request_create"),
    path("approvals/requests/<int:request_id>/", views.RequestDetailView.as_view(),
         name="request"),
    path("approvals/requests/<int:request_id>/decide/", views.RequestDecideView.as_view(),
         name="request_decide"),
    path("approvals/requests/<int:request_id>/cancel/", views.RequestCancelView.as_view(),
         name="request_cancel"),
    path("approvals/escalations/", views.EscalationListView.as_view(), name="escalations"),
    path("approvals/escalations/<uuid:escalation_id>/", views.EscalationDetailView.as_view(),
         name="escalation"),
    path("approvals/escalations/<uuid:escalation_id>/decide/",
         views.EscalationDecideView.as_view(), name="escalation_decide"),
    path("approvals/policies/", views.PolicyListView.as_view(), name="policies"),
    path("approvals/policies/new/", views.PolicyCreateView.as_view(), name="policy_create"),
    path("approvals/policies/<int:policy_id>/edit/", views.PolicyEditView.as_view(),
         name="policy_edit"),
    path("approvals/policies/<int:policy_id>/delete/", views.PolicyDeleteView.as_view(),
         name="policy_delete"),
    path("approvals/approvers/", views.ApproversView.as_view(), name="approvers"),
    path("approvals/approvers/scopes/<int:scope_id>/members/<int:membership_id>/remove/",
         views.ApproverRemoveView.as_view(), name="approver_remove_scope"),
    path("approvals/approvers/servers/<int:server_id>/members/<int:membership_id>/remove/",
         views.ApproverRemoveView.as_view(), name="approver_remove_server"),
    path("approvals/break-glass/", views.BreakGlassView.as_view(), name="break_glass"),
]
