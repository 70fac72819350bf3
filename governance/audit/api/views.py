"""Audit trail REST API (read-only)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins
from rest_framework.exceptions import ValidationError

from governance.audit import selectors
from governance.audit.api.serializers import AuditEventOut
from governance.audit.forms import AuditFilterForm
from governance.audit.models import AuditEvent
from governance.tenancy.api.base import TenantViewSet
from governance.tenancy.roles import Cap


@extend_schema(parameters=[
    OpenApiParameter(name, str, description=desc) for name, desc in (
        ("actor", "actor label contains, or exact actor id"),
        ("action", "exact action, or a prefix ending in '.'"),
        ("object", "object repr contains, or exact object type / id"),
        ("since", "YYYY-MM-DD, inclusive"),
        ("until", "YYYY-MM-DD, inclusive"),
    )
])
class AuditEventViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantViewSet):
    """The tenant's audit events, newest first."""

    model = AuditEvent
    serializer_class = AuditEventOut
    capabilities = {"*": Cap.VIEW_AUDIT}

    def get_queryset(self):
        if self.action != "list":
            return AuditEvent.objects.filter(tenant=self.tenancy.tenant)
        form = AuditFilterForm(self.request.query_params)
        if not form.is_valid():
            raise ValidationError(form.errors)
        return selectors.audit_event_list(self.tenancy.tenant, **form.filters())
