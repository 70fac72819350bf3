"""Approvals web pages: the approver's inbox (inline and bulk decisions), a request with what
approving it would change, the requester's pages, and the approval policies. Thin: parse the
form → access helper → service → post/redirect/get (htmx gets the row instead)."""

from __future__ import annotations

import json

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

from approvals import selectors
from approvals.access import (
    access_escalation,
    access_escalations,
    access_policy,
    access_request,
)
from approvals.forms import (
    POLICY_STAGE_ROWS,
    ApproverPermissionForm,
    BreakGlassForm,
    DecideForm,
    PolicyForm,
    RequestFilterForm,
    RequestForm,
)
from approvals.models import AccessRequest, Decidable, Escalation, describe_rule
from approvals.services.approvers import approver_permission_grant, approver_permission_revoke
from approvals.services.break_glass import break_glass_grant
from approvals.services.decisions import Outcome
from approvals.services.escalations import escalation_decide, escalation_refresh
from approvals.services.policies import approval_policy_delete, approval_policy_save
from approvals.services.requests import (
    access_request_cancel,
    access_request_create,
    access_request_decide,
)
from governance.tenancy.access import access_object
from governance.tenancy.forms import add_service_errors
from governance.tenancy.mixins import TenantPageView
from governance.tenancy.models import Membership
from governance.tenancy.roles import Cap
from governance.web import error_text, page_of, query_without_page, vary_on_htmx
from registry.models import McpServer, ToolScope


def _back(request: HttpRequest, default: str) -> HttpResponse:
    """Redirect to the page the form came from (``next``), if it is one of ours."""
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect(target)
    return redirect(default)


# --- Inbox ----------------------------------------------------------------------------------------


class InboxView(TenantPageView):
    """What waits for the caller's decision, soonest deadline first; htmx polls the list."""

    capability = Cap.DECIDE_APPROVALS

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        items = selectors.inbox_items(self.tenant, request.user)
        template = "approvals/_inbox.html" if request.htmx else "approvals/inbox.html"
        return vary_on_htmx(render(request, template, {
            "items": items,
            "low_risk": [i for i in items if i.kind == selectors.ACCESS_REQUEST
                         and selectors.is_low_risk(i.obj)],
        }))


def _item_row(request: HttpRequest, item: Decidable, *, message: str = "", error: str = "",
              form: DecideForm | None = None) -> HttpResponse:
    """The inbox row of one request or escalation after a decision (htmx), with what
    happened."""
    tenant = request.tenancy.tenant
    row = selectors.prepared_item(tenant, item)
    return vary_on_htmx(render(request, row.template, {
        "item": row, "row_message": message, "row_error": error,
        "row_open": selectors.may_decide_now(tenant, request.user, row.obj),
        "reason_value": form["reason"].value() if form is not None and error else "",
    }))


class DecideView(TenantPageView):
    """One approver's decision on an item's current stage (the service enforces every rule:
    not the requester or the agent's owner, eligible now, once across the stages, deny with
    a reason). htmx gets the inbox row back; a form post goes back where it came from."""

    capability = Cap.DECIDE_APPROVALS
    detail: str  # URL name of the item's page

    def load(self, pk) -> Decidable:
        raise NotImplementedError

    def decide(self, item: Decidable, **values) -> Outcome:
        raise NotImplementedError

    def post(self, request: HttpRequest, tenant_slug: str, **kwargs) -> HttpResponse:
        item = self.load(*kwargs.values())
        form = DecideForm(request.POST)
        detail = reverse(self.detail, args=[tenant_slug, item.pk])
        if not form.is_valid():
            text = "Choose approve or deny."
            if request.htmx:
                return _item_row(request, item, error=text, form=form)
            messages.error(request, text)
            return _back(request, detail)
        try:
            outcome = self.decide(item, outcome=form.cleaned_data["outcome"],
                                  reason=form.cleaned_data["reason"])
        except ValidationError as exc:
            if request.htmx:
                return _item_row(request, item, error=error_text(exc), form=form)
            messages.error(request, error_text(exc))
            return _back(request, detail)
        if request.htmx:
            return _item_row(request, outcome.item, message=outcome.message)
        (messages.success if outcome.changed else messages.info)(request, outcome.message)
        return _back(request, detail)


class RequestDecideView(DecideView):
    detail = "approvals:request"

    def load(self, pk) -> AccessRequest:
        return access_object(self.tenant, AccessRequest, pk)

    def decide(self, item: AccessRequest, **values) -> Outcome:
        return access_request_decide(tenant=self.tenant, actor=self.actor,
                                     request=item, approver=self.request.user,
                                     **values)


class BulkApproveView(TenantPageView):
    """Approve the ticked low-risk requests, each through the service on its own (one decision
    and one audit event each); anything else ticked is skipped and said so."""

    capability = Cap.DECIDE_APPROVALS

    def post(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        approved, skipped, refused = [], [], []
        for pk in dict.fromkeys(request.POST.getlist("request")):
            try:
                access = access_object(self.tenant, AccessRequest, pk)
            except Http404:  # a stale or foreign id: say so, go on with the others
                skipped.append(f"#{pk} (not found)")
                continue
            label = f"{access.scope.name} for {access.agent.name}"
            if not selectors.is_low_risk(access):
                skipped.append(f"{label} (not low risk: decide it on its own)")
                continue
            try:
                outcome = access_request_decide(
                    tenant=self.tenant, actor=self.actor, request=access,
                    approver=request.user, outcome="approve")
            except ValidationError as exc:
                refused.append(f"{label}: {error_text(exc)}")
            else:
                (approved if outcome.changed else skipped).append(
                    label if outcome.changed else f"{label} ({outcome.message})")
        if not (approved or skipped or refused):
            messages.info(request, "Nothing was ticked: choose low-risk requests to approve.")
        if approved:
            messages.success(request, f"Approved {len(approved)}: {', '.join(approved)}.")
        if skipped:
            messages.warning(request, f"Skipped {len(skipped)}: {'; '.join(skipped)}.")
        if refused:
            messages.error(request, f"Refused {len(refused)}: {'; '.join(refused)}")
        return redirect("approvals:inbox", tenant_slug)


# --- Requests -----------------------------------------------------------------------------------


class RequestDetailView(TenantPageView):
    """A request: its stages and decisions, what approving it would change in the bundle, the
    agent's grants today, and the decision or cancel controls that apply to the caller."""

    def get(self, request: HttpRequest, tenant_slug: str, request_id: int) -> HttpResponse:
        access = access_request(self.tenancy, request_id)
        pending = access.status == AccessRequest.Status.PENDING
        may_cancel = pending and (access.requester_id == request.user.pk
                                  or self.tenancy.can(Cap.MANAGE_REGISTRY))
        return render(request, "approvals/request.html", {
            "req": access,
            "stages": selectors.stage_rows(access),
            "diff": selectors.bundle_preview(self.tenant, access) if pending else None,
            "grants": selectors.agent_grants(self.tenant, access.agent),
            "decide_form": DecideForm() if self.tenancy.can(Cap.DECIDE_APPROVALS)
            and selectors.may_decide_now(self.tenant, request.user, access) else None,
            "may_cancel": may_cancel and self.tenancy.can(Cap.REQUEST_ACCESS),
        })


class RequestCancelView(TenantPageView):
    """Confirm, then withdraw a pending request (its requester or an admin)."""

    capability = Cap.REQUEST_ACCESS

    def get(self, request: HttpRequest, tenant_slug: str, request_id: int) -> HttpResponse:
        access = access_request(self.tenancy, request_id)
        return render(request, "confirm.html", {
            "title": f"Cancel the request for {access.scope.name} for {access.agent.name}?",
            "body": "Approvers no longer see it and nothing is granted. You can ask again "
                    "later with a new request.",
            "action": "Cancel request",
            "cancel_url": reverse("approvals:request", args=[tenant_slug, access.pk]),
        })

    def post(self, request: HttpRequest, tenant_slug: str, request_id: int) -> HttpResponse:
        access = access_request(self.tenancy, request_id)
        try:
            outcome = access_request_cancel(tenant=self.tenant, actor=self.actor,
                                            request=access, by=request.user)
        except ValidationError as exc:
            messages.error(request, error_text(exc))
        else:
            (messages.success if outcome.changed else messages.info)(request, outcome.message)
        return redirect("approvals:request", tenant_slug, access.pk)


class RequestCreateView(TenantPageView):
    """Ask for a scope for an agent the caller owns (admins: any agent)."""

    capability = Cap.REQUEST_ACCESS

    def form(self, data=None, initial=None) -> RequestForm:
        return RequestForm(data, initial=initial, ctx=self.tenancy)

    def render_form(self, request, form, status=200):
        return render(request, "approvals/request_form.html", {"form": form}, status=status)

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        initial = {key: request.GET[key] for key in ("agent", "scope") if request.GET.get(key)}
        return self.render_form(request, self.form(initial=initial))

    def post(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = self.form(request.POST)
        if form.is_valid():
            try:
                access = access_request_create(
                    tenant=self.tenant, actor=self.actor, requester=request.user,
                    **form.service_values())
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Requested {access.scope.name} for "
                                          f"{access.agent.name}; approvers have until "
                                          f"{access.deadline:%Y-%m-%d %H:%M} UTC to decide.")
                return redirect("approvals:request", tenant_slug, access.pk)
        return self.render_form(request, form, status=400)


class MyRequestsView(TenantPageView):
    """The caller's requests, newest first, filtered by status."""

    capability = Cap.REQUEST_ACCESS

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = RequestFilterForm(request.GET or None)
        status = form.cleaned_data.get("status", "") if form.is_valid() else ""
        return render(request, "approvals/my_requests.html", {
            "form": form, "status": status,
            "page": page_of(request, selectors.my_requests(self.tenant, request.user,
                                                           status=status)),
            "query": query_without_page(request),
        })


# --- Policies -----------------------------------------------------------------------------------


class PolicyListView(TenantPageView):
    """Who must approve what: the tenant default, per risk level and per scope."""

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        return render(request, "approvals/policies.html", {
            "policies": selectors.policy_list(self.tenant),
            "built_in": [{"who": describe_rule(s), **s}
                         for s in selectors.BUILT_IN_STAGES],
            "built_in_hours": selectors.BUILT_IN_DECISION_HOURS,
        })


class PolicyFormMixin:
    def render_form(self, request, form, policy=None, status=200):
        return render(request, "approvals/policy_form.html", {"form": form, "policy": policy},
                      status=status)

    def save(self, request, form, policy=None) -> HttpResponse | None:
        if not form.is_valid():
            return None
        try:
            saved = approval_policy_save(tenant=self.tenant, actor=self.actor,
                                         **form.service_values())
        except ValidationError as exc:
            add_service_errors(form, exc)
            return None
        messages.success(request, f"Saved the {saved}.")
        return redirect("approvals:policies", self.tenant.slug)


class PolicyCreateView(PolicyFormMixin, TenantPageView):
    """A new policy (saving one for a target that has one replaces it)."""

    capability = Cap.MANAGE_REGISTRY

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        return self.render_form(request, PolicyForm(tenant=self.tenant, initial={
            "applies_to": "default", "stage0_approvals": 1}))

    def post(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = PolicyForm(request.POST, tenant=self.tenant)
        return self.save(request, form) or self.render_form(request, form, status=400)


class PolicyEditView(PolicyFormMixin, TenantPageView):
    """Change a policy's deadline and stages (running requests keep the stages they had)."""

    capability = Cap.MANAGE_REGISTRY

    @staticmethod
    def rows(policy) -> int:
        return max(POLICY_STAGE_ROWS, policy.stages.count())

    def get(self, request: HttpRequest, tenant_slug: str, policy_id: int) -> HttpResponse:
        policy = access_policy(self.tenancy, policy_id, write=True)
        form = PolicyForm(tenant=self.tenant, rows=self.rows(policy),
                          initial=PolicyForm.initial_for(policy))
        return self.render_form(request, form, policy)

    def post(self, request: HttpRequest, tenant_slug: str, policy_id: int) -> HttpResponse:
        policy = access_policy(self.tenancy, policy_id, write=True)
        data = request.POST.copy()
        # What the policy applies to is fixed once made (a different target is a new policy).
        data.update(PolicyForm.target_of(policy))
        form = PolicyForm(data, tenant=self.tenant, rows=self.rows(policy))
        return self.save(request, form, policy) or self.render_form(request, form, policy,
                                                                     status=400)


class PolicyDeleteView(TenantPageView):
    """Confirm, then delete a policy (new requests fall back to a less specific one)."""

    capability = Cap.MANAGE_REGISTRY

    def get(self, request: HttpRequest, tenant_slug: str, policy_id: int) -> HttpResponse:
        policy = access_policy(self.tenancy, policy_id, write=True)
        return render(request, "confirm.html", {
            "title": f"Delete the {policy}?",
            "body": "Requests made from now on follow the next less specific policy (scope → "
                    "risk level → tenant default → one approver or admin within 24 hours). "
                    "Pending requests keep the stages they were made with.",
            "action": "Delete policy",
            "cancel_url": reverse("approvals:policies", args=[tenant_slug]),
        })

    def post(self, request: HttpRequest, tenant_slug: str, policy_id: int) -> HttpResponse:
        policy = access_policy(self.tenancy, policy_id, write=True)
        label = str(policy)
        approval_policy_delete(tenant=self.tenant, actor=self.actor, policy=policy)
        messages.success(request, f"Deleted the {label}.")
        return redirect("approvals:policies", tenant_slug)


# --- Escalations (held tool calls) ----------------------------------------------------------------


class EscalationListView(TenantPageView):
    """Every held tool call of the tenant, newest first (approvers, admins, auditors)."""

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        access_escalations(self.tenancy)
        status = request.GET.get("status", "")
        if status not in Escalation.Status.values:
            status = ""
        return render(request, "approvals/escalations.html", {
            "page": page_of(request, selectors.escalation_list(self.tenant, status=status)),
            "status": status, "statuses": Escalation.Status.choices,
            "query": query_without_page(request),
        })


class EscalationDetailView(TenantPageView):
    """One held call: what the gateway sent (and whether it is the whole of the arguments),
    the grant that asked for approval, the stages and decisions, the receipt's fate."""

    def get(self, request: HttpRequest, tenant_slug: str, escalation_id) -> HttpResponse:
        escalation = access_escalation(self.tenancy, escalation_id)
        escalation = escalation_refresh(tenant=self.tenant, escalation=escalation)
        return render(request, "approvals/escalation.html", {
            "esc": escalation,
            "arguments_json": json.dumps(escalation.arguments, indent=2, sort_keys=True,
                                         ensure_ascii=False)
            if escalation.arguments is not None else None,
            "arguments_complete": selectors.arguments_complete(escalation),
            "stages": selectors.stage_rows(escalation),
            "grants": selectors.agent_grants(self.tenant, escalation.agent),
            "simulate_query": selectors.simulator_query(escalation),
            "decide_form": DecideForm() if self.tenancy.can(Cap.DECIDE_APPROVALS)
            and selectors.may_decide_now(self.tenant, request.user, escalation) else None,
        })


class EscalationDecideView(DecideView):
    detail = "approvals:escalation"

    def load(self, pk) -> Escalation:
        return access_escalation(self.tenancy, pk)

    def decide(self, item: Escalation, **values) -> Outcome:
        return escalation_decide(tenant=self.tenant, actor=self.actor, escalation=item,
                                 approver=self.request.user, **values)


# --- Approver permissions and break-glass (admins) ---------------------------------------------


def _kind_of(obj: ToolScope | McpServer) -> str:
    return "scope" if isinstance(obj, ToolScope) else "server"


class ApproversView(TenantPageView):
    """Who holds the approve permission on which scope or server (the approvers a stage with
    "holders of the approve permission" counts), and giving it to a member."""

    capability = Cap.MANAGE_REGISTRY

    def render_page(self, request, form, status=200):
        return render(request, "approvals/approvers.html", {
            "form": form, "holders": selectors.approver_holders(self.tenant),
        }, status=status)

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        initial = {key: request.GET[key] for key in ("scope", "server") if request.GET.get(key)}
        return self.render_page(request, ApproverPermissionForm(tenant=self.tenant,
                                                                initial=initial))

    def post(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = ApproverPermissionForm(request.POST, tenant=self.tenant)
        if form.is_valid():
            user, obj = form.cleaned_data["member"].user, form.cleaned_data["obj"]
            try:
                approver_permission_grant(tenant=self.tenant, actor=self.actor,
                                          user=user, obj=obj)
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"{user.get_username()} now approves for "
                                          f"{_kind_of(obj)} {obj.name}.")
                return redirect("approvals:approvers", tenant_slug)
        return self.render_page(request, form, status=400)


class ApproverRemoveView(TenantPageView):
    """Confirm, then take the approve permission on a scope or server from a member."""

    capability = Cap.MANAGE_REGISTRY

    def target(self, kwargs) -> tuple[Membership, ToolScope | McpServer]:
        membership = access_object(self.tenant, Membership, kwargs["membership_id"])
        if "scope_id" in kwargs:
            return membership, access_object(self.tenant, ToolScope, kwargs["scope_id"])
        return membership, access_object(self.tenant, McpServer, kwargs["server_id"])

    def get(self, request: HttpRequest, tenant_slug: str, **kwargs) -> HttpResponse:
        membership, obj = self.target(kwargs)
        noun = _kind_of(obj)
        return render(request, "confirm.html", {
            "title": f"Stop {membership.user.get_username()} approving for {noun} {obj.name}?",
            "body": "Stages that count holders of the approve permission no longer count them "
                    "for it, including on requests and escalations already waiting (eligibility "
                    "is checked when a decision is made). Their role and IdP groups still apply.",
            "action": "Remove approver",
            "cancel_url": reverse("approvals:approvers", args=[tenant_slug]),
        })

    def post(self, request: HttpRequest, tenant_slug: str, **kwargs) -> HttpResponse:
        membership, obj = self.target(kwargs)
        try:
            approver_permission_revoke(tenant=self.tenant, actor=self.actor,
                                       user=membership.user, obj=obj)
        except ValidationError as exc:
            messages.error(request, error_text(exc))
        else:
            messages.success(request, f"{membership.user.get_username()} no longer approves "
                                      f"for {_kind_of(obj)} {obj.name}.")
        return redirect("approvals:approvers", tenant_slug)


class BreakGlassView(TenantPageView):
    """An admin's emergency self-grant (alerted to every admin, flagged in the audit trail),
    and the recent break-glass grants."""

    capability = Cap.BREAK_GLASS

    def form(self, data=None, initial=None) -> BreakGlassForm:
        return BreakGlassForm(data, initial=initial, tenant=self.tenant,
                              max_minutes=settings.BREAK_GLASS_MAX_MINUTES)

    def render_page(self, request, form, status=200):
        return render(request, "approvals/break_glass.html", {
            "form": form, "max_minutes": settings.BREAK_GLASS_MAX_MINUTES,
            "page": page_of(request, selectors.break_glass_grants(self.tenant)),
            "query": query_without_page(request),
        }, status=status)

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        initial = {key: request.GET[key] for key in ("agent", "scope") if request.GET.get(key)}
        return self.render_page(request, self.form(initial=initial))

    def post(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = self.form(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                grant = break_glass_grant(
                    tenant=self.tenant, actor=self.actor, admin=request.user,
                    agent=data["agent"], scope=data["scope"], minutes=data["minutes"],
                    justification=data["justification"])
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.warning(request, f"Break-glass: {grant.scope.name} granted to "
                                          f"{grant.agent.name} until "
                                          f"{grant.expires_at:%Y-%m-%d %H:%M} UTC. Every admin "
                                          "has been alerted.")
                return redirect("approvals:break_glass", tenant_slug)
        return self.render_page(request, form, status=400)
