"""Shadow replays over REST (admins and auditors): start one (queued for a worker, 202), poll
its status and progress, read the decisions that would change once it is done."""

from __future__ import annotations

from django.conf import settings
from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from decision_logs import selectors
from decision_logs.access import access_replay
from decision_logs.models import ReplayRun
from decision_logs.replay import replay_request
from governance.tenancy.api.base import TenantViewSet
from governance.tenancy.api.schema import WRITE, error_responses
from governance.tenancy.roles import Cap

READ = error_responses(403)


class ReplayIn(serializers.Serializer):
    days = serializers.IntegerField(
        min_value=1, max_value=settings.REPLAY_MAX_DAYS,
        help_text="replay the decisions logged in the last N days (1 to REPLAY_MAX_DAYS, 90 "
                  "unless configured)")


class ReplayOut(serializers.ModelSerializer):
    requested_by = serializers.CharField(source="requested_by_label", read_only=True)

    class Meta:
        model = ReplayRun
        fields = ["id", "days", "status", "progress", "step", "error", "since", "until",
                  "summary", "requested_by", "created_at", "started_at", "finished_at"]


class ReplayDetailOut(ReplayOut):
    class Meta(ReplayOut.Meta):
        fields = [*ReplayOut.Meta.fields, "changes"]


class ReplayViewSet(TenantViewSet):
    """Shadow replays: the decision log of the last N days decided again against the registry
    as it stands. ``summary`` counts the decisions that would change per transition and per
    agent and tool, and names the checks that could not be replayed; ``changes`` lists them."""

    model = ReplayRun
    capabilities = {"*": Cap.VIEW_AUDIT}

    @extend_schema(responses={200: ReplayOut(many=True), **READ})
    def list(self, request: Request, tenant_slug: str) -> Response:
        return self.page(selectors.replay_runs(self.tenancy.tenant), ReplayOut)

    @extend_schema(responses={200: ReplayDetailOut, **READ})
    def retrieve(self, request: Request, tenant_slug: str, pk: str) -> Response:
        return Response(ReplayDetailOut(access_replay(self.tenancy, pk)).data)

    @extend_schema(request=ReplayIn, responses={202: ReplayDetailOut, **WRITE},
                   description="Queue a replay; poll the answer's URL for progress.")
    def create(self, request: Request, tenant_slug: str) -> Response:
        run = replay_request(**self.service_kwargs(), **self.parse(ReplayIn))
        url = reverse("decision-replays-detail", kwargs={"tenant_slug": tenant_slug,
                                                         "pk": run.pk})
        return Response(ReplayDetailOut(run).data, status=status.HTTP_202_ACCEPTED,
                        headers={"Location": url})
