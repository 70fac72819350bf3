"""Alerts and alert rules REST API.

Thin: the object comes through a alerts.access helper (404 outside the tenant, 403
without the capability), the input through an …In serializer, the change through one service
(which audits it), the answer through an …Out serializer.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from alerts import selectors, services
from alerts.access import access_alert, access_alert_rule
from alerts.api import serializers as s
from alerts.models import Alert, AlertRule
from governance.tenancy.api.base import TenantViewSet
from governance.tenancy.api.schema import READ, WRITE
from governance.tenancy.roles import Cap


class AlertViewSet(TenantViewSet):
    """Alerts raised by the rules, most recently seen first (open and acknowledged unless
    ``status`` says otherwise). Admins acknowledge (repeats stop notifying) and resolve."""

    model = Alert
    capabilities = {"*": Cap.VIEW_AUDIT, "acknowledge": Cap.MANAGE_ALERTS,
                    "resolve": Cap.MANAGE_ALERTS}

    @extend_schema(parameters=[s.AlertFilter], responses={200: s.AlertOut(many=True), **READ})
    def list(self, request: Request, tenant_slug: str) -> Response:
        rows = selectors.alerts(self.tenancy.tenant, **self.filters(s.AlertFilter))
        return self.page(rows, s.AlertOut)

    @extend_schema(responses={200: s.AlertOut, **READ})
    def retrieve(self, request: Request, tenant_slug: str, pk: str) -> Response:
        return Response(s.AlertOut(access_alert(self.tenancy, pk)).data)

    @extend_schema(request=s.AlertActionIn, responses={200: s.AlertOut, **WRITE},
                   description="Someone is on it: the alert stays live, repeats stop notifying. "
                               "400 when it is already acknowledged or resolved.")
    @action(detail=True, methods=["post"])
    def acknowledge(self, request: Request, tenant_slug: str, pk: str) -> Response:
        alert = access_alert(self.tenancy, pk, write=True)
        alert = services.alert_acknowledge(**self.service_kwargs(), alert=alert,
                                           user=self.tenancy.user,
                                           **self.parse(s.AlertActionIn))
        return Response(s.AlertOut(alert).data)

    @extend_schema(request=s.AlertActionIn, responses={200: s.AlertOut, **WRITE},
                   description="Close the alert; the next occurrence raises a new one.")
    @action(detail=True, methods=["post"])
    def resolve(self, request: Request, tenant_slug: str, pk: str) -> Response:
        alert = access_alert(self.tenancy, pk, write=True)
        alert = services.alert_resolve(**self.service_kwargs(), alert=alert,
                                       **self.parse(s.AlertActionIn))
        return Response(s.AlertOut(alert).data)


class AlertRuleViewSet(TenantViewSet):
    """The tenant's alert rules, one per kind, with their defaults until changed (admins)."""

    model = AlertRule
    capabilities = {"*": Cap.MANAGE_ALERTS}

    @extend_schema(responses={200: s.AlertRuleOut(many=True), **READ})
    def list(self, request: Request, tenant_slug: str) -> Response:
        services.alert_rules_for(self.tenancy.tenant)  # the defaults exist before they are read
        return self.page(selectors.rules(self.tenancy.tenant).order_by("kind"), s.AlertRuleOut)

    @extend_schema(responses={200: s.AlertRuleOut, **READ})
    def retrieve(self, request: Request, tenant_slug: str, pk: str) -> Response:
        return Response(s.AlertRuleOut(access_alert_rule(self.tenancy, pk)).data)

    @extend_schema(request=s.AlertRuleIn, responses={200: s.AlertRuleOut, **WRITE})
    def partial_update(self, request: Request, tenant_slug: str, pk: str) -> Response:
        rule = access_alert_rule(self.tenancy, pk)
        rule = services.alert_rule_update(**self.service_kwargs(), rule=rule,
                                          user=self.tenancy.user,
                                          **self.parse(s.AlertRuleIn, partial=True))
        return Response(s.AlertRuleOut(rule).data)
