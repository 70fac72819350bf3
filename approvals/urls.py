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
    path("approvals/policies/", views.PolicyListView.as_view(), name="policies"),
    path("approvals/policies/new/", views.PolicyCreateView.as_view(), name="policy_create"),
    path("approvals/policies/<int:policy_id>/edit/", views.PolicyEditView.as_view(),
         name="policy_edit"),
    path("approvals/policies/<int:policy_id>/delete/", views.PolicyDeleteView.as_view(),
         name="policy_delete"),
]
