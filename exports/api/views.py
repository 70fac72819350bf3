"""SIEM exporters REST API (admins only).

Thin: the object comes through exports.access (404 outside the tenant, 403 without
MANAGE_EXPORTS), the input through an …In serializer, the change through one service (which
audits it), the answer through ExporterOut. The HEC token is write-only.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from exports import selectors, services
from exports.access import access_exporter
from exports.api import serializers as s
from exports.models import Exporter
from governance.tenancy.api.base import TenantViewSet
from governance.tenancy.api.schema import NO_CONTENT, READ, WRITE
from governance.tenancy.roles import Cap


class ExporterViewSet(TenantViewSet):
    """Where the tenant's audit events or decision logs go: a JSON lines file, syslog CEF over
    UDP/TCP, or Splunk HEC; with cursor, lag and the last error."""

    model = Exporter
    capabilities = {"*": Cap.MANAGE_EXPORTS}

    @extend_schema(responses={200: s.ExporterOut(many=True), **READ})
    def list(self, request: Request, tenant_slug: str) -> Response:
        return self.page(selectors.exporters(self.tenancy.tenant), s.ExporterOut)

    @extend_schema(responses={200: s.ExporterOut, **READ})
    def retrieve(self, request: Request, tenant_slug: str, pk: str) -> Response:
        return Response(s.ExporterOut(access_exporter(self.tenancy, pk)).data)

    @extend_schema(request=s.ExporterIn, responses={201: s.ExporterOut, **WRITE})
    def create(self, request: Request, tenant_slug: str) -> Response:
        exporter = services.exporter_create(**self.service_kwargs(),
                                            created_by=self.tenancy.user,
                                            **self.parse(s.ExporterIn))
        return Response(s.ExporterOut(exporter).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.ExporterUpdateIn(partial=True),
                   responses={200: s.ExporterOut, **WRITE})
    def partial_update(self, request: Request, tenant_slug: str, pk: str) -> Response:
        exporter = access_exporter(self.tenancy, pk)
        exporter = services.exporter_update(**self.service_kwargs(), exporter=exporter,
                                            **self.parse(s.ExporterUpdateIn, partial=True))
        return Response(s.ExporterOut(exporter).data)

    @extend_schema(description="Delete the exporter (what it sent stays at the receiver).",
                   responses=NO_CONTENT)
    def destroy(self, request: Request, tenant_slug: str, pk: str) -> Response:
        services.exporter_delete(**self.service_kwargs(),
                                 exporter=access_exporter(self.tenancy, pk))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, description="Send now: queue a run (a failing exporter's "
                   "backoff is cut short). Follow it in the exporter's cursor, lag and "
                   "last_error.", responses={202: s.ExporterOut, **WRITE})
    @action(detail=True, methods=["post"])
    def run(self, request: Request, tenant_slug: str, pk: str) -> Response:
        exporter = services.exporter_request_run(**self.service_kwargs(),
                                                 exporter=access_exporter(self.tenancy, pk))
        return Response(s.ExporterOut(exporter).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, description="Send one test message now (short timeout); "
                   "``ok`` false with the reason when the receiver did not take it.",
                   responses={200: s.ProbeOut, **WRITE})
    @action(detail=True, methods=["post"])
    def test(self, request: Request, tenant_slug: str, pk: str) -> Response:
        result = services.exporter_test(**self.service_kwargs(),
                                        exporter=access_exporter(self.tenancy, pk))
        return Response(s.ProbeOut({"ok": result.ok, "message": result.message}).data)

    @extend_schema(request=s.ResetCursorIn, responses={200: s.ExporterOut, **WRITE})
    @action(detail=True, methods=["post"], url_path="reset-cursor")
    def reset_cursor(self, request: Request, tenant_slug: str, pk: str) -> Response:
        exporter = access_exporter(self.tenancy, pk)
        exporter = services.exporter_reset_cursor(**self.service_kwargs(), exporter=exporter,
                                                  **self.parse(s.ResetCursorIn))
        return Response(s.ExporterOut(exporter).data)
