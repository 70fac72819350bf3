"""Notification channels and deliveries REST API (admins only).

Thin: the object comes through a notifications.access helper (404 outside the
tenant, 403 for non-admins), the input through an …In serializer, the change through one
service (which audits it), the answer through an …Out serializer.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from governance.tenancy.api.base import TenantViewSet
from governance.tenancy.api.schema import error_responses
from governance.tenancy.roles import Cap
from notifications import selectors, services
from notifications.access import access_channel, access_delivery
from notifications.api import serializers as s
from notifications.models import Channel, Delivery

READ = error_responses(403)
WRITE = error_responses(400, 403)
NO_CONTENT = {204: OpenApiResponse(description="Deleted.")} | WRITE


class ChannelViewSet(TenantViewSet):
    """Where notifications go: e-mail, Slack incoming webhook, or signed webhook. ``url`` and
    ``secret`` are write-only; a PATCH without them keeps the stored ones."""

    model = Channel
    capabilities = {"*": Cap.MANAGE_NOTIFICATIONS}

    def out(self, channel: Channel) -> dict:
        return s.ChannelOut(channel).data

    @extend_schema(responses={200: s.ChannelOut(many=True), **READ})
    def list(self, request: Request, tenant_slug: str) -> Response:
        rows = Channel.objects.for_tenant(self.tenancy.tenant).select_related("created_by")
        return self.page(rows.order_by("name"), s.ChannelOut)

    @extend_schema(responses={200: s.ChannelOut, **READ})
    def retrieve(self, request: Request, tenant_slug: str, pk: str) -> Response:
        return Response(self.out(access_channel(self.tenancy, pk)))

    @extend_schema(request=s.ChannelIn, responses={201: s.ChannelOut, **WRITE})
    def create(self, request: Request, tenant_slug: str) -> Response:
        channel = services.channel_create(**self.service_kwargs(), created_by=self.tenancy.user,
                                          **self.parse(s.ChannelIn))
        return Response(self.out(channel), status=status.HTTP_201_CREATED)

    @extend_schema(request=s.ChannelIn(partial=True), responses={200: s.ChannelOut, **WRITE})
    def partial_update(self, request: Request, tenant_slug: str, pk: str) -> Response:
        channel = access_channel(self.tenancy, pk)
        channel = services.channel_update(**self.service_kwargs(), channel=channel,
                                          **self.parse(s.ChannelIn, partial=True))
        return Response(self.out(channel))

    @extend_schema(description="Delete the channel and its delivery log.", responses=NO_CONTENT)
    def destroy(self, request: Request, tenant_slug: str, pk: str) -> Response:
        services.channel_delete(**self.service_kwargs(), channel=access_channel(self.tenancy, pk))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, description="Queue a notification.test message to this "
                   "channel (also when disabled); follow it in notification-deliveries.",
                   responses={202: s.DeliveryOut, **WRITE})
    @action(detail=True, methods=["post"])
    def test(self, request: Request, tenant_slug: str, pk: str) -> Response:
        delivery = services.channel_test(**self.service_kwargs(),
                                         channel=access_channel(self.tenancy, pk))
        return Response(s.DeliveryOut(delivery).data, status=status.HTTP_202_ACCEPTED)


class DeliveryViewSet(TenantViewSet):
    """The delivery log, newest first: status, attempts and the last error of each message."""

    model = Delivery
    capabilities = {"*": Cap.MANAGE_NOTIFICATIONS}

    @extend_schema(parameters=[s.DeliveryFilter], responses={200: s.DeliveryOut(many=True),
                                                            **READ})
    def list(self, request: Request, tenant_slug: str) -> Response:
        rows = selectors.deliveries(self.tenancy.tenant, **self.filters(s.DeliveryFilter))
        return self.page(rows, s.DeliveryOut)

    @extend_schema(responses={200: s.DeliveryOut, **READ})
    def retrieve(self, request: Request, tenant_slug: str, pk: str) -> Response:
        return Response(s.DeliveryOut(access_delivery(self.tenancy, pk)).data)
