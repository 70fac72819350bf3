"""Decision logs REST API (read-only; admins and auditors).

The list pages by keyset (``?cursor=``, newest first) rather than by page number: a page never
counts the whole log, which grows by millions of rows.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response

from decision_logs import selectors
from decision_logs.access import access_decision
from decision_logs.api import serializers as s
from decision_logs.models import DecisionLog
from governance.tenancy.api.base import TenantViewSet
from governance.tenancy.api.pagination import bounded_parameters
from governance.tenancy.api.schema import error_responses
from governance.tenancy.roles import Cap

READ = error_responses(400, 403)


class DecisionCursor(CursorPagination):
    """``next``/``previous`` links carrying an opaque cursor; ``page_size`` ≤ 200."""

    ordering = ("-timestamp", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200

    def get_schema_operation_parameters(self, view):
        return bounded_parameters(super().get_schema_operation_parameters(view),
                                  self.max_page_size)


class DecisionLogViewSet(TenantViewSet):
    """Decisions the tenant's gateways logged, newest first, filtered exactly by agent, server,
    tool, gateway, outcome, decision id and a time range."""

    model = DecisionLog
    capabilities = {"*": Cap.VIEW_AUDIT}
    pagination_class = DecisionCursor

    @extend_schema(parameters=[s.DecisionFilter], responses={200: s.DecisionLogOut(many=True),
                                                            **READ})
    def list(self, request: Request, tenant_slug: str) -> Response:
        rows = selectors.search(self.tenancy.tenant, self.filters(s.DecisionFilter))
        return self.page(rows, s.DecisionLogOut)

    @extend_schema(responses={200: s.DecisionLogOut, **error_responses(403)})
    def retrieve(self, request: Request, tenant_slug: str, pk: str) -> Response:
        decision = access_decision(self.tenancy, pk)
        return Response(s.DecisionLogOut(decision).data)
