"""Notification pages under /t/<tenant_slug>/notifications/ (object kwargs are the contract
test's names)."""

from __future__ import annotations

from django.urls import path

from notifications import views

app_name = "notifications"

urlpatterns = [
    path("notifications/", views.ChannelListView.as_view(), name="channels"),
    path("notifications/new/", views.ChannelCreateView.as_view(), name="channel_create"),
    path("notifications/deliveries/", views.DeliveryListView.as_view(), name="deliveries"),
    path("notifications/<int:channel_id>/edit/", views.ChannelEditView.as_view(),
         name="channel_edit"),
    path("notifications/<int:channel_id>/delete/", views.ChannelDeleteView.as_view(),
         name="channel_delete"),
    path("notifications/<int:channel_id>/test/", views.ChannelTestView.as_view(),
         name="channel_test"),
]
