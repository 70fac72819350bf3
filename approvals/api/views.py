"""Access requests and approval policies REST API.

Thin like the other apps: the object through an approvals.access helper (404 outside the
tenant, 403 for a member with no business with it), the input through an …In serializer, the
change through one approvals service (which audits it), the answer through an …Out serializer.
A decision the service refuses (self-approval, an ineligible approver, a deny without a reason)
is a 400 ``invalid`` carrying the service's message, as every service refusal of the API is;
403 is kept for what the caller's role or token cannot do at all.
"""

from __future__ import annotations

from django.db.models import Prefetch, Q, QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from approvals import selectors
from approvals.access import (
    access_escalation,
    access_escalations,
    access_policy,
    access_request,
    sees_every_request,
)
from approvals.api import serializers as s
from approvals.models import AccessRequest, ApprovalDecision, ApprovalPolicy, Escalation
from approvals.services.break_glass import break_glass_grant
from approvals.services.escalations import escalation_decide
from approvals.services.policies import approval_policy_delete, approval_policy_save
from approvals.services.requests import (
    access_request_cancel,
    access_request_create,
    access_request_decide,
)
from governance.tenancy.access import access_object
from governance.tenancy.api.base import TenantViewSet
from governance.tenancy.api.schema import NO_CONTENT, READ, WRITE, error_responses
from governance.tenancy.roles import Cap
from registry.models import Grant


def _person(viewset: TenantViewSet, what: str):
    """The user behind the call: decisions and requests are made by people, not by service
    tokens."""
    user = viewset.tenancy.user
    if user is None:
        raise PermissionDenied(f"{what} needs a person: use a personal token or a session.")
    return user


class AccessRequestViewSet(TenantViewSet):
    """Access requests: a developer (for an agent they own) or an admin asks for a scope; the
    policy's approvers decide stage by stage; approval creates a time-bound grant.

    Lists show admins and auditors every request; everyone else the requests they made and
    those waiting for their decision. A single request is visible to its requester, anyone
    eligible for one of its stages, admins and auditors."""

    model = AccessRequest
    capabilities = {
        "*": Cap.VIEW,
        "create": Cap.REQUEST_ACCESS,
        "decide": Cap.DECIDE_APPROVALS,
        "cancel": Cap.REQUEST_ACCESS,
    }

    def rows(self) -> QuerySet[AccessRequest]:
        return selectors.request_list(self.tenancy.tenant).prefetch_related(
            Prefetch("decisions", queryset=ApprovalDecision.objects.select_related("approver")
                     .order_by("stage", "created_at")))

    def out(self, request: AccessRequest) -> dict:
        return s.AccessRequestOut(self.rows().get(pk=request.pk)).data

    def visible(self, rows: QuerySet[AccessRequest]) -> QuerySet[AccessRequest]:
        ctx = self.tenancy
        if sees_every_request(ctx) or ctx.user is None:
            return rows
        waiting = [r.pk for r in selectors.inbox_requests(ctx.tenant, ctx.user)]
        return rows.filter(Q(requester=ctx.user) | Q(pk__in=waiting))

    @extend_schema(parameters=[s.AccessRequestFilter],
                   responses={200: s.AccessRequestOut(many=True), **READ})
    def list(self, request: Request, tenant_slug: str) -> Response:
        filters = self.filters(s.AccessRequestFilter)
        rows = self.visible(self.rows())
        if filters.get("status"):
            rows = rows.filter(status=filters["status"])
        if filters.get("agent") is not None:
            rows = rows.filter(agent_id=filters["agent"])
        if filters.get("scope") is not None:
            rows = rows.filter(scope_id=filters["scope"])
        if filters.get("mine"):
            rows = rows.filter(requester=self.tenancy.user) if self.tenancy.user else rows.none()
        return self.page(rows, s.AccessRequestOut)

    @extend_schema(responses={200: s.AccessRequestOut, **READ, **error_responses(403)})
    def retrieve(self, request: Request, tenant_slug: str, pk: str) -> Response:
        return Response(self.out(access_request(self.tenancy, pk)))

    @extend_schema(
        request=s.AccessRequestIn,
        description="The applicable policy (scope → risk level → tenant default) is frozen into "
        "the request and its decision deadline starts now. 400 when the caller does not own the "
        "agent, the justification is empty, or a request for the same agent and scope is "
        "already pending.",
        responses={201: s.AccessRequestOut, **WRITE},
    )
    def create(self, request: Request, tenant_slug: str) -> Response:
        requester = _person(self, "Requesting access")
        values = self.parse(s.AccessRequestIn)
        created = access_request_create(**self.service_kwargs(), requester=requester,
                                        **values)
        return Response(self.out(created), status=status.HTTP_201_CREATED)

    @extend_schema(
        request=s.DecideIn,
        description="Approve or deny the request's current stage as the caller. Refused with "
        "400 (code invalid, the service's message): the caller requested the access or owns "
        "the agent, is not eligible for the current stage, already decided an earlier stage "
        "(one approver counts once across the stages), or denies without a reason. A "
        "duplicate or late decision is not an error: 200 with changed false and a message "
        "(\"Nothing to do: …\").",
        responses={200: s.DecideOut, **WRITE},
    )
    @action(detail=True, methods=["post"])
    def decide(self, request: Request, tenant_slug: str, pk: str) -> Response:
        approver = _person(self, "Deciding")
        target = access_object(self.tenancy.tenant, AccessRequest, pk)
        values = self.parse(s.DecideIn)
        outcome = access_request_decide(**self.service_kwargs(), request=target,
                                        approver=approver, **values)
        return Response({"request": self.out(outcome.request), "message": outcome.message,
                         "changed": outcome.changed})

    @extend_schema(
        request=None,
        description="Withdraw a pending request (its requester or an admin). A request that is "
        "no longer pending: 200 with changed false.",
        responses={200: s.DecideOut, **WRITE},
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, tenant_slug: str, pk: str) -> Response:
        by = _person(self, "Cancelling")
        target = access_request(self.tenancy, pk)
        outcome = access_request_cancel(**self.service_kwargs(), request=target, by=by)
        return Response({"request": self.out(outcome.request), "message": outcome.message,
                         "changed": outcome.changed})


class ApprovalPolicyViewSet(TenantViewSet):
    """Who must approve access: per scope, per risk level, or the tenant default (the most
    specific applies). A policy with a stage nobody could pass today is refused (400)."""

    model = ApprovalPolicy
    capabilities = {
        "*": Cap.VIEW,
        "create": Cap.MANAGE_REGISTRY,
        "partial_update": Cap.MANAGE_REGISTRY,
        "destroy": Cap.MANAGE_REGISTRY,
    }

    def out(self, policy: ApprovalPolicy) -> dict:
        return s.PolicyOut(self.rows().get(pk=policy.pk)).data

    def rows(self) -> QuerySet[ApprovalPolicy]:
        return ApprovalPolicy.objects.for_tenant(self.tenancy.tenant).select_related(
            "scope").prefetch_related("stages").order_by("pk")

    @extend_schema(responses={200: s.PolicyOut(many=True), **READ})
    def list(self, request: Request, tenant_slug: str) -> Response:
        return self.page(self.rows(), s.PolicyOut)

    @extend_schema(responses={200: s.PolicyOut, **READ})
    def retrieve(self, request: Request, tenant_slug: str, pk: str) -> Response:
        return Response(self.out(access_policy(self.tenancy, pk)))

    @extend_schema(
        request=s.PolicyIn,
        description="Create the policy of a scope, of a risk level, or the tenant default; one "
        "that exists for the same target is replaced (its stages too). 400 when a stage could "
        "not be passed today, or alternates are named that nobody is.",
        responses={201: s.PolicyOut, **WRITE},
    )
    def create(self, request: Request, tenant_slug: str) -> Response:
        values = self.parse(s.PolicyIn)
        values["risk_level"] = values.get("risk_level") or ""
        policy = approval_policy_save(**self.service_kwargs(), **values)
        return Response(self.out(policy), status=status.HTTP_201_CREATED)

    @extend_schema(
        request=s.PolicyUpdateIn,
        description="Change the deadline, replace the stages or the alternate approvers (what "
        "the policy applies to stays; what is left out is kept). Pending requests keep the "
        "stages they were made with.",
        responses={200: s.PolicyOut, **WRITE},
    )
    def partial_update(self, request: Request, tenant_slug: str, pk: str) -> Response:
        policy = access_policy(self.tenancy, pk, write=True)
        values = self.parse(s.PolicyUpdateIn, partial=True)
        current = [{"approvals_required": st.approvals_required, "roles": st.roles,
                    "idp_group": st.idp_group, "object_permission": st.object_permission}
                   for st in policy.stages.order_by("position")]
        policy = approval_policy_save(
            **self.service_kwargs(), scope=policy.scope, risk_level=policy.risk_level,
            decision_hours=values.get("decision_hours", policy.decision_hours),
            stages=values.get("stages", current),
            alternate_roles=values.get("alternate_roles", policy.alternate_roles),
            alternate_idp_group=values.get("alternate_idp_group", policy.alternate_idp_group))
        return Response(self.out(policy))

    @extend_schema(description="Delete the policy: new requests follow the next less specific "
                               "one.", responses=NO_CONTENT)
    def destroy(self, request: Request, tenant_slug: str, pk: str) -> Response:
        policy = access_policy(self.tenancy, pk, write=True)
        approval_policy_delete(**self.service_kwargs(), policy=policy)
        return Response(status=status.HTTP_204_NO_CONTENT)


class EscalationViewSet(TenantViewSet):
    """Held tool calls (created by gateways through /api/v1/gateway/escalations): approvers,
    admins and auditors read them; approvers decide them."""

    model = Escalation
    capabilities = {"*": Cap.VIEW, "decide": Cap.DECIDE_APPROVALS}
    # A UUID, as in the gateway API (<uuid:…>): anything else is no such escalation (404).
    lookup_value_regex = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

    def rows(self) -> QuerySet[Escalation]:
        return selectors.escalation_list(self.tenancy.tenant).prefetch_related(
            Prefetch("decisions", queryset=ApprovalDecision.objects.select_related("approver")
                     .order_by("stage", "created_at")))

    def out(self, escalation: Escalation) -> dict:
        return s.EscalationOut(self.rows().get(pk=escalation.pk)).data

    @extend_schema(parameters=[s.EscalationFilter],
                   responses={200: s.EscalationOut(many=True), **READ, **error_responses(403)})
    def list(self, request: Request, tenant_slug: str) -> Response:
        access_escalations(self.tenancy)
        filters = self.filters(s.EscalationFilter)
        rows = self.rows()
        if filters.get("status"):
            rows = rows.filter(status=filters["status"])
        if filters.get("agent") is not None:
            rows = rows.filter(agent_id=filters["agent"])
        if filters.get("waiting"):
            waiting = [e.pk for e in selectors.inbox_escalations(
                self.tenancy.tenant, self.tenancy.user)] if self.tenancy.user else []
            rows = rows.filter(pk__in=waiting)
        return self.page(rows, s.EscalationOut)

    @extend_schema(responses={200: s.EscalationOut, **READ, **error_responses(403)})
    def retrieve(self, request: Request, tenant_slug: str, pk: str) -> Response:
        return Response(self.out(access_escalation(self.tenancy, pk)))

    @extend_schema(
        request=s.DecideIn,
        description="Approve or deny the held call as the caller (same rules as access "
        "requests: never the agent's owner, eligible now, once across the stages, deny with a "
        "reason: 400 otherwise). The gateway long-polling it is woken at once.",
        responses={200: s.EscalationDecideOut, **WRITE},
    )
    @action(detail=True, methods=["post"])
    def decide(self, request: Request, tenant_slug: str, pk: str) -> Response:
        approver = _person(self, "Deciding")
        target = access_escalation(self.tenancy, pk)
        values = self.parse(s.DecideIn)
        outcome = escalation_decide(**self.service_kwargs(), escalation=target,
                                    approver=approver, **values)
        return Response({"escalation": self.out(outcome.item), "message": outcome.message,
                         "changed": outcome.changed})


class BreakGlassViewSet(TenantViewSet):
    """Break-glass: an admin grants a scope to an agent at once, without approval, for a short
    time (at most BREAK_GLASS_MAX_MINUTES). Every admin is alerted (event ``break_glass.used``)
    and the grant is flagged in the audit trail (``grant.break_glass``) and the bundle."""

    model = Grant
    capabilities = {"*": Cap.BREAK_GLASS}

    @extend_schema(responses={200: s.BreakGlassOut(many=True), **READ, **error_responses(403)})
    def list(self, request: Request, tenant_slug: str) -> Response:
        return self.page(selectors.break_glass_grants(self.tenancy.tenant), s.BreakGlassOut)

    @extend_schema(
        request=s.BreakGlassIn,
        description="Grant the scope to the agent now, as the calling admin (a person: a "
        "personal token or a session). 400 without a justification or beyond the limit.",
        responses={201: s.BreakGlassOut, **WRITE},
    )
    def create(self, request: Request, tenant_slug: str) -> Response:
        admin = _person(self, "Breaking the glass")
        values = self.parse(s.BreakGlassIn)
        grant = break_glass_grant(**self.service_kwargs(), admin=admin, **values)
        grant = selectors.break_glass_grants(self.tenancy.tenant).get(pk=grant.pk)
        return Response(s.BreakGlassOut(grant).data, status=status.HTTP_201_CREATED)
