"""Decision-log pages under /t/<tenant_slug>/decisions/ (object kwargs are the contract test's
names)."""

from __future__ import annotations

from django.urls import path

from decision_logs import views

app_name = "decisions"

urlpatterns = [
    path("decisions/", views.DecisionListView.as_view(), name="list"),
    path("decisions/<int:decision_pk>/", views.DecisionDetailView.as_view(), name="detail"),
    path("decisions/replays/", views.ReplayListView.as_view(), name="replays"),
    path("decisions/replays/<int:replay_id>/", views.ReplayView.as_view(), name="replay"),
]
