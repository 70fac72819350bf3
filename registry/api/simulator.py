"""The policy simulator over REST (admins and auditors): one call in, the decision function's
outcome and reason out. Reads only; nothing is stored."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from governance.tenancy.api.base import TenantViewSet
from governance.tenancy.api.schema import WRITE
from governance.tenancy.roles import Cap
from registry import simulator


class SimulationIn(serializers.Serializer):
    policy = serializers.ChoiceField(
        choices=list(simulator.POLICIES), default=simulator.DRAFT,
        help_text="draft: the registry as it stands (what the next bundle would hold); "
                  "bundle: the published bundle gateways enforce now")
    agent = serializers.CharField(max_length=200, help_text="the agent's name")
    server = serializers.CharField(max_length=200, help_text="the MCP server's name")
    tool = serializers.CharField(max_length=200, help_text="the tool's name on that server")
    arguments = serializers.JSONField(required=False, default=dict,
                                      help_text="the call's arguments: a JSON object")
    at = serializers.DateTimeField(required=False, allow_null=True, default=None,
                                   help_text="the call's time (RFC 3339); default now")


class SimulationOut(serializers.Serializer):
    outcome = serializers.ChoiceField(choices=["allow", "deny", "escalate"])
    reason = serializers.CharField(help_text="the decision function's reason")
    grant = serializers.CharField(allow_null=True, help_text="the grant that decided, if any")
    policy = serializers.CharField()
    bundle_revision = serializers.IntegerField(allow_null=True)
    agent = serializers.CharField()
    principal = serializers.ListField(child=serializers.CharField(), allow_null=True,
                                      help_text="[issuer, subject] the call was made as")
    server = serializers.CharField()
    tool = serializers.CharField()
    arguments = serializers.JSONField()
    at = serializers.DateTimeField()
    notes = serializers.ListField(child=serializers.CharField(),
                                  help_text="what the simulation could not check, and why")


class SimulationViewSet(TenantViewSet):
    """Simulate one call: "agent X calls tool T of server S with arguments A at time t" →
    allow, escalate or deny with the reason, against the draft or the published bundle.
    Unknown agents, servers and tools are errors on their field."""

    capabilities = {"*": Cap.VIEW_AUDIT}

    @extend_schema(request=SimulationIn, responses={200: SimulationOut, **WRITE})
    def create(self, request: Request, tenant_slug: str) -> Response:
        result = simulator.simulate(self.tenancy.tenant, **self.parse(SimulationIn))
        return Response(SimulationOut(result.as_dict()).data)
