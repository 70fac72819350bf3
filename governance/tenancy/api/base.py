"""Base classes of every tenant-scoped REST endpoint (``/api/v1/t/<tenant_slug>/…``).

Authentication happens first (no or bad credentials → 401), then the tenant in the URL is
resolved against the caller (not a member, or a token of another tenant → 404), then the
capability of the action is required (→ 403). Querysets are always scoped to the tenant.
"""

from __future__ import annotations

from django.db import models
from rest_framework import serializers, viewsets
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from governance.tenancy.access import TenantContext, resolve_for_token, resolve_for_user
from governance.tenancy.models import ApiToken
from governance.tenancy.roles import Cap


class TenantAPIMixin:
    """Resolves ``self.tenancy`` once per request and checks the action's capability."""

    # Capability per HTTP method (APIView) or per action (viewsets); "*" is the fallback.
    capabilities: dict[str, Cap] = {"*": Cap.VIEW}
    tenancy: TenantContext

    def initial(self, request: Request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)  # authentication → 401 first
        slug = kwargs["tenant_slug"]
        if isinstance(request.auth, ApiToken):
            self.tenancy = resolve_for_token(request.auth, slug)
        else:
            self.tenancy = resolve_for_user(request.user, slug)
        request.tenancy = self.tenancy
        self.tenancy.require(self.required_capability(request))

    def required_capability(self, request: Request) -> Cap:
        key = getattr(self, "action", None) or request.method.lower()
        return self.capabilities.get(key, self.capabilities["*"])


class TenantAPIView(TenantAPIMixin, APIView):
    """A tenant-scoped API view."""


class TenantViewSet(TenantAPIMixin, viewsets.GenericViewSet):
    """A tenant-scoped viewset: ``get_queryset`` can only ever see the URL's tenant."""

    model: type[models.Model]
    lookup_value_regex = r"[0-9]+"

    def get_queryset(self) -> models.QuerySet:
        return self.scope_queryset(self.model.objects.for_tenant(self.tenancy.tenant))

    def scope_queryset(self, queryset: models.QuerySet) -> models.QuerySet:
        """Narrow further (e.g. to the caller's own rows); the tenant filter is already on."""
        return queryset

    def parse(self, serializer_class: type[serializers.Serializer], data=None,
              partial: bool = False) -> dict:
        """Validated body (or ``data``); references resolve inside the URL's tenant only."""
        body = data is None
        serializer = serializer_class(
            data=self.request.data if body else data,
            partial=partial,
            context={"tenant": self.tenancy.tenant, "request": self.request},
        )
        serializer.is_valid(raise_exception=True)
        if body and isinstance(self.request.data, dict):
            # A field the endpoint ignores (say a server's status in a PATCH) would look like
            # it had been changed: refuse it instead.
            unknown = sorted(set(self.request.data) - set(serializer.fields))
            if unknown:
                raise ValidationError({
                    name: [f"Unknown field; this takes {', '.join(serializer.fields)}."]
                    for name in unknown
                })
        return dict(serializer.validated_data)

    def filters(self, filter_class: type[serializers.Serializer]) -> dict:
        return self.parse(filter_class, data=self.request.query_params)

    def page(self, rows, out_class: type[serializers.Serializer], **context) -> Response:
        rows = self.paginate_queryset(rows)
        return self.get_paginated_response(out_class(rows, many=True, context=context).data)

    def service_kwargs(self) -> dict:
        """What every service takes first: the tenant and who acts (for the audit)."""
        return {"tenant": self.tenancy.tenant, "actor": self.tenancy.actor}
