"""``/api/v1/t/<slug>/gateway-bindings/``: which gateways front which servers (the gateways
that report a server's tools, and are asked to by "Sync tools"). Managed by admins
(MANAGE_GATEWAYS), read by every member; services in ``registry/gateway_discovery.py``."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from bundles.models import Gateway
from governance.tenancy.api.base import TenantViewSet
from governance.tenancy.api.schema import NO_CONTENT, READ, WRITE
from governance.tenancy.api.serializers import object_id, username_out
from governance.tenancy.roles import Cap
from registry import gateway_discovery
from registry.api.serializers import TenantObjectField
from registry.gateway_bindings import access_binding
from registry.models import GatewayBinding, McpServer


class BindingFilter(serializers.Serializer):
    gateway = object_id(required=False)
    server = object_id(required=False)


class BindingIn(serializers.Serializer):
    gateway = TenantObjectField(Gateway, help_text="the gateway that runs the server")
    server = TenantObjectField(McpServer, help_text="the server it fronts (not retired)")


class BindingOut(serializers.ModelSerializer):
    gateway_name = serializers.CharField(source="gateway.name", read_only=True)
    server_name = serializers.CharField(source="server.name", read_only=True)
    created_by = username_out(source="created_by.username")
    requested_at = serializers.DateTimeField(
        read_only=True, allow_null=True,
        help_text="a sync asked the gateway to report (named in its status answers) since then")
    last_reported_at = serializers.DateTimeField(
        read_only=True, allow_null=True, help_text="its last report of the server's tools")

    class Meta:
        model = GatewayBinding
        fields = ["id", "gateway", "gateway_name", "server", "server_name", "created_by",
                  "created_at", "requested_at", "last_reported_at"]


def binding_list(tenant, *, gateway=None, server=None):
    rows = GatewayBinding.objects.for_tenant(tenant).select_related("gateway", "server",
                                                                    "created_by")
    if gateway is not None:
        rows = rows.filter(gateway=gateway)
    if server is not None:
        rows = rows.filter(server=server)
    return rows.order_by("gateway__name", "server__name", "id")


class GatewayBindingViewSet(TenantViewSet):
    """Gateway ↔ server bindings: a gateway reports the tools of the servers it fronts
    (``POST /api/v1/gateway/discovery``); stdio servers are discovered only this way."""

    model = GatewayBinding
    capabilities = {"*": Cap.VIEW, "create": Cap.MANAGE_GATEWAYS,
                    "destroy": Cap.MANAGE_GATEWAYS}

    @extend_schema(parameters=[BindingFilter], responses={200: BindingOut(many=True), **READ})
    def list(self, request: Request, tenant_slug: str) -> Response:
        return self.page(binding_list(self.tenancy.tenant, **self.filters(BindingFilter)),
                         BindingOut)

    @extend_schema(responses={200: BindingOut, **READ})
    def retrieve(self, request: Request, tenant_slug: str, pk: str) -> Response:
        binding = access_binding(self.tenancy, pk)
        return Response(BindingOut(binding_list(self.tenancy.tenant).get(pk=binding.pk)).data)

    @extend_schema(request=BindingIn, responses={201: BindingOut, **WRITE})
    def create(self, request: Request, tenant_slug: str) -> Response:
        values = self.parse(BindingIn)
        binding = gateway_discovery.gateway_server_bind(
            **self.service_kwargs(), created_by=self.tenancy.user, **values)
        return Response(BindingOut(binding_list(self.tenancy.tenant).get(pk=binding.pk)).data,
                        status=status.HTTP_201_CREATED)

    @extend_schema(description="The gateway's reports of the server are refused from now on; "
                   "the tools it reported stay.", responses=NO_CONTENT)
    def destroy(self, request: Request, tenant_slug: str, pk: str) -> Response:
        binding = access_binding(self.tenancy, pk, write=True)
        gateway_discovery.gateway_server_unbind(**self.service_kwargs(), binding=binding)
        return Response(status=status.HTTP_204_NO_CONTENT)
