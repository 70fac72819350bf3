"""Reads of the approvals app, tenant first: the approver's inbox (and its counter), a
requester's requests, the policies, and what a request would change in the published bundle.

The inbox is a list of ``InboxItem``s of several kinds merged by deadline. Access requests are
the first kind; runtime escalations (DESIGN.md §5) plug in as a second: a selector returning
their items, added to ``inbox_items`` and ``inbox_count``, and a row template named by the item.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.contrib.contenttypes.models import ContentType
from django.db.models import CharField, Exists, OuterRef, Prefetch, QuerySet
from django.db.models.functions import Cast
from django.utils import timezone
from guardian.models import GroupObjectPermission, UserObjectPermission

from approvals.models import (
    AccessRequest,
    ApprovalDecision,
    ApprovalPolicy,
    ApprovalStage,
    Escalation,
)
from approvals.services import ApproverProfile, approver_profile
from governance.bundles import diff
from governance.bundles.compiler import compile_data
from governance.bundles.packaging import rfc3339
from governance.tenancy.models import Tenant
from governance.tenancy.roles import Role
from registry.models import Agent, Grant, Risk, Tool

# --- The inbox ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InboxItem:
    """One thing waiting for the approver's decision; ``template`` renders its row."""

    kind: str
    deadline: datetime
    obj: Any
    template: str

    @property
    def key(self) -> str:
        """Unique among all kinds (element ids, checkboxes)."""
        return f"{self.kind}-{self.obj.pk}"


ACCESS_REQUEST = "access_request"
ACCESS_REQUEST_ROW = "approvals/_request_item.html"


def _undecidable(user: AbstractBaseUser) -> list[Exists]:
    """Subqueries marking requests ``user`` may never decide (they hold the agent's owner
    permission, django-guardian, directly or through a group: the services refuse them) or has
    already decided at the request's current stage (one approver counts once)."""
    agent_type = ContentType.objects.get_for_model(Agent)  # cached after the first call
    object_pk = Cast(OuterRef("agent_id"), CharField())
    return [
        Exists(ApprovalDecision.objects.filter(request=OuterRef("pk"),
                                               stage=OuterRef("current_stage"), approver=user)),
        Exists(UserObjectPermission.objects.filter(
            user=user, content_type=agent_type, object_pk=object_pk,
            permission__codename="manage_agent")),
        Exists(GroupObjectPermission.objects.filter(
            group__user=user, content_type=agent_type, object_pk=object_pk,
            permission__codename="manage_agent")),
    ]


def _decidable(tenant: Tenant, user: AbstractBaseUser,
               now: datetime | None = None) -> QuerySet[AccessRequest]:
    """Pending requests before their deadline that ``user`` is not barred from deciding; whether
    they are eligible for the current stage is checked on the rows (the stage is JSON)."""
    requests = AccessRequest.objects.for_tenant(tenant).filter(
        status=AccessRequest.Status.PENDING, deadline__gt=now or timezone.now(),
    ).exclude(requester=user).exclude(agent__owner=user)
    for barred in _undecidable(user):
        requests = requests.exclude(barred)
    return requests.order_by("deadline", "pk")


def _current_stage(request: AccessRequest) -> dict[str, Any] | None:
    """Who decides the request now: its current stage, or its alternate approvers once the
    first deadline passed (``on_alternates``), as services.current_stage_rule says."""
    return _deciding(request.stages, request.current_stage, request.alternates,
                     request.on_alternates)


def _deciding(stages, current: int, alternates, on_alternates: bool) -> dict[str, Any] | None:
    if on_alternates and alternates:
        return alternates
    stages = stages or []
    return stages[current] if current < len(stages) else None


def _admits(tenant: Tenant, profile: ApproverProfile, stage: dict[str, Any] | None,
            scope_id: int) -> bool:
    """``profile.admits`` (no query); a stage that also admits holders of the approve
    permission on the scope or its servers asks the services (a few queries, those stages
    only)."""
    if stage is None:
        return False
    if profile.admits(stage):
        return True
    if stage.get("object_permission") and profile.role is not None:
        from approvals.services import eligible_user_ids

        return profile.user_id in eligible_user_ids(tenant, stage, scope_id=scope_id)
    return False


def inbox_requests(tenant: Tenant, user: AbstractBaseUser, *,
                   profile: ApproverProfile | None = None) -> list[AccessRequest]:
    """Pending access requests ``user`` may decide now at their current stage, by deadline."""
    profile = profile or approver_profile(tenant, user)
    if profile.role is None:
        return []
    rows = _decidable(tenant, user).select_related("agent", "agent__owner", "scope",
                                                   "requester").prefetch_related(
        Prefetch("scope__tools", queryset=Tool.objects.select_related("server")))
    eligible = []
    for request in rows:
        if _admits(tenant, profile, _current_stage(request), request.scope_id):
            request.all_data_classes = data_classes(request)
            eligible.append(request)
    return eligible


def inbox_items(tenant: Tenant, user: AbstractBaseUser) -> list[InboxItem]:
    """Everything waiting for ``user``'s decision (access requests and held tool calls),
    soonest deadline first."""
    profile = approver_profile(tenant, user)
    items = [InboxItem(ACCESS_REQUEST, r.deadline, r, ACCESS_REQUEST_ROW)
             for r in inbox_requests(tenant, user, profile=profile)]
    items += [InboxItem(ESCALATION, e.deadline, e, ESCALATION_ROW)
              for e in inbox_escalations(tenant, user, profile=profile)]
    return sorted(items, key=lambda item: (item.deadline, item.key))


def inbox_count(tenant: Tenant, user: AbstractBaseUser) -> int:
    """How many items wait for ``user`` (the navigation's counter): three queries."""
    profile = approver_profile(tenant, user)
    if profile.role is None:
        return 0
    count = 0
    for stages, current, alternates, on_alternates, scope_id in _decidable(
            tenant, user).values_list("stages", "current_stage", "alternates", "on_alternates",
                                      "scope_id"):
        if _admits(tenant, profile, _deciding(stages, current, alternates, on_alternates),
                   scope_id):
            count += 1
    return count + escalations_waiting(tenant, user, profile)


def data_classes(request: AccessRequest) -> list[str]:
    """The scope's data classes and those of the servers of its tools (prefetched)."""
    found = set(request.scope.data_classes or [])
    for tool in request.scope.tools.all():
        found.update(tool.server.data_classes or [])
    return sorted(found)


def is_low_risk(request: AccessRequest) -> bool:
    """Only these may be approved in bulk."""
    return request.scope.risk_level == Risk.LOW


# --- Requests -----------------------------------------------------------------------------------


def request_list(tenant: Tenant, *, status: str = "", agent: Agent | int | None = None,
                 scope=None, requester: AbstractBaseUser | None = None
                 ) -> QuerySet[AccessRequest]:
    requests = AccessRequest.objects.for_tenant(tenant).select_related(
        "agent", "scope", "requester", "grant")
    if status:
        requests = requests.filter(status=status)
    if agent is not None:
        requests = requests.filter(agent=agent)
    if scope is not None:
        requests = requests.filter(scope=scope)
    if requester is not None:
        requests = requests.filter(requester=requester)
    return requests.order_by("-created_at", "-pk")


def my_requests(tenant: Tenant, user: AbstractBaseUser, *,
                status: str = "") -> QuerySet[AccessRequest]:
    """The requests ``user`` made, newest first."""
    return request_list(tenant, status=status, requester=user)


def decisions(request: AccessRequest) -> QuerySet[ApprovalDecision]:
    return request.decisions.select_related("approver").order_by("stage", "created_at")


def stage_rows(request: AccessRequest) -> list[dict[str, Any]]:
    """Each frozen stage with its decisions so far and where the request stands."""
    by_stage: dict[int, list[ApprovalDecision]] = {}
    for decision in decisions(request):
        by_stage.setdefault(decision.stage, []).append(decision)
    rows = []
    for position, stage in enumerate(request.stages or []):
        made = by_stage.get(position, [])
        approvals = sum(d.outcome == ApprovalDecision.Outcome.APPROVE for d in made)
        if request.status == AccessRequest.Status.APPROVED or position < request.current_stage:
            state = "passed"
        elif position == request.current_stage and request.status == "pending":
            state = "deciding"
        elif position == request.current_stage and request.status == "denied":
            state = "denied"
        else:
            state = "not reached"
        rows.append({"number": position + 1, "stage": stage, "who": describe_stage(stage),
                     "decisions": made, "approvals": approvals, "state": state})
    return rows


def describe_stage(stage: dict[str, Any]) -> str:
    parts = [", ".join(Role(r).label for r in stage.get("roles") or [])] if stage.get(
        "roles") else []
    if stage.get("idp_group"):
        parts.append(f"IdP group {stage['idp_group']}")
    if stage.get("object_permission"):
        parts.append("approvers of the scope or its server")
    return " or ".join(parts) or "nobody"


def may_see_request(tenant: Tenant, user: AbstractBaseUser, request: AccessRequest,
                    role: str) -> bool:
    """The requester, admins and auditors, and whoever may decide one of its stages."""
    if role in (Role.ADMIN, Role.AUDITOR) or request.requester_id == user.pk:
        return True
    profile = approver_profile(tenant, user)
    rules = [*(request.stages or []), *([request.alternates] if request.alternates else [])]
    return any(_admits(tenant, profile, rule, request.scope_id) for rule in rules)


def may_decide_now(tenant: Tenant, user: AbstractBaseUser, request: AccessRequest) -> bool:
    """Whether the decision form is worth showing (the service decides for real)."""
    if request.status != AccessRequest.Status.PENDING:
        return False
    return _decidable(tenant, user).filter(pk=request.pk).exists() and _admits(
        tenant, approver_profile(tenant, user), _current_stage(request), request.scope_id)


def agent_grants(tenant: Tenant, agent: Agent) -> QuerySet[Grant]:
    """The agent's grants in force now."""
    from registry.selectors import grant_list

    return grant_list(tenant, agent=agent, in_force=True)


# --- What approving would change ----------------------------------------------------------------

PREVIEW_GRANT_ID = "new"


def preview_grant_document(request: AccessRequest, *, at: datetime) -> dict[str, Any]:
    """The grant document approving ``request`` at ``at`` would add to ``mcp/data.json``: the
    compiler's grant shape (governance/bundles/compiler.py) with the terms the service gives an
    approved request (no limits, no window, no approval, expiring after the duration)."""
    expires = at + timedelta(minutes=request.duration_minutes)
    return {
        "id": PREVIEW_GRANT_ID,
        "agent": request.agent.name,
        "scope": request.scope.name,
        "calls_per_minute": None,
        "calls_per_day": None,
        "window": None,
        "argument_constraints": {},
        "approval_mode": Grant.ApprovalMode.NEVER.value,
        "approval_condition": {},
        "expires_at": rfc3339(expires),
    }


def bundle_preview(tenant: Tenant, request: AccessRequest, *,
                   at: datetime | None = None) -> diff.BundleDiff:
    """The bundle now vs. the bundle with the requested grant added (reads only)."""
    at = at or timezone.now()
    current = compile_data(tenant, at=at)
    would_be = {**current,
                "grants": [*current["grants"], preview_grant_document(request, at=at)]}
    return diff.diff_data(current, would_be)


# --- Policies -----------------------------------------------------------------------------------


def policy_list(tenant: Tenant) -> list[ApprovalPolicy]:
    """Tenant default first, then per risk level (low → critical), then per scope by name."""
    policies = list(ApprovalPolicy.objects.for_tenant(tenant).select_related("scope")
                    .prefetch_related(Prefetch("stages",
                                               queryset=ApprovalStage.objects.order_by(
                                                   "position"))))
    levels = {value: i for i, value in enumerate(Risk.values)}

    def order(policy: ApprovalPolicy) -> tuple:
        if policy.scope_id:
            return (2, 0, policy.scope.name)
        if policy.risk_level:
            return (1, levels.get(policy.risk_level, 99), "")
        return (0, 0, "")

    return sorted(policies, key=order)



# --- Escalations --------------------------------------------------------------------------------

ESCALATION = "escalation"
ESCALATION_ROW = "approvals/_escalation_item.html"


def _decidable_escalations(tenant: Tenant, user: AbstractBaseUser,
                           now: datetime | None = None) -> QuerySet[Escalation]:
    """Pending escalations before their deadline that ``user`` is not barred from deciding (the
    agent's owner, or already decided at the current stage)."""
    agent_type = ContentType.objects.get_for_model(Agent)
    object_pk = Cast(OuterRef("agent_id"), CharField())
    rows = Escalation.objects.for_tenant(tenant).filter(
        status=Escalation.Status.PENDING, deadline__gt=now or timezone.now(),
    ).exclude(agent__owner=user)
    for barred in (
        Exists(ApprovalDecision.objects.filter(escalation=OuterRef("pk"),
                                               stage=OuterRef("current_stage"), approver=user)),
        Exists(UserObjectPermission.objects.filter(
            user=user, content_type=agent_type, object_pk=object_pk,
            permission__codename="manage_agent")),
        Exists(GroupObjectPermission.objects.filter(
            group__user=user, content_type=agent_type, object_pk=object_pk,
            permission__codename="manage_agent")),
    ):
        rows = rows.exclude(barred)
    return rows.order_by("deadline", "pk")


def inbox_escalations(tenant: Tenant, user: AbstractBaseUser, *,
                      profile: ApproverProfile | None = None) -> list[Escalation]:
    """Held tool calls ``user`` may decide now, by deadline."""
    profile = profile or approver_profile(tenant, user)
    if profile.role is None:
        return []
    rows = _decidable_escalations(tenant, user).select_related(
        "agent", "agent__owner", "scope", "gateway")
    eligible = []
    for escalation in rows:
        if _admits(tenant, profile, _deciding(escalation.stages, escalation.current_stage,
                                              escalation.alternates, escalation.on_alternates),
                   escalation.scope_id):
            escalation.arguments_complete = arguments_complete(escalation)
            eligible.append(escalation)
    return eligible


def escalations_waiting(tenant: Tenant, user: AbstractBaseUser,
                        profile: ApproverProfile) -> int:
    """How many escalations wait for ``user`` (one query)."""
    return sum(
        _admits(tenant, profile, _deciding(stages, current, alternates, on_alternates), scope)
        for stages, current, alternates, on_alternates, scope in _decidable_escalations(
            tenant, user).values_list("stages", "current_stage", "alternates", "on_alternates",
                                      "scope_id"))


def arguments_complete(escalation: Escalation) -> bool:
    """Whether the arguments the gateway sent hash to ``arguments_sha256`` (not redacted)."""
    from approvals.services import arguments_verified

    return arguments_verified(escalation)


def escalation_list(tenant: Tenant, *, status: str = "", agent=None) -> QuerySet[Escalation]:
    rows = Escalation.objects.for_tenant(tenant).select_related("agent", "scope", "gateway")
    if status:
        rows = rows.filter(status=status)
    if agent is not None:
        rows = rows.filter(agent=agent)
    return rows.order_by("-created_at", "pk")


def escalation_stage_rows(escalation: Escalation) -> list[dict[str, Any]]:
    """Each frozen stage of the escalation with its decisions so far."""
    made = list(escalation.decisions.select_related("approver").order_by("stage", "created_at"))
    rows = []
    for position, stage in enumerate(escalation.stages or []):
        decisions_here = [d for d in made if d.stage == position]
        if escalation.status == Escalation.Status.APPROVED or position < escalation.current_stage:
            state = "passed"
        elif position == escalation.current_stage:
            state = "deciding" if escalation.status == "pending" else escalation.status
        else:
            state = "not reached"
        rows.append({"number": position + 1, "stage": stage, "who": describe_stage(stage),
                     "decisions": decisions_here, "state": state,
                     "approvals": sum(d.outcome == "approve" for d in decisions_here)})
    return rows


def may_decide_escalation(tenant: Tenant, user: AbstractBaseUser,
                          escalation: Escalation) -> bool:
    """Whether the decision form is worth showing (the service decides for real)."""
    if escalation.status != Escalation.Status.PENDING:
        return False
    return _decidable_escalations(tenant, user).filter(pk=escalation.pk).exists() and _admits(
        tenant, approver_profile(tenant, user),
        _deciding(escalation.stages, escalation.current_stage, escalation.alternates,
                  escalation.on_alternates), escalation.scope_id)


# --- Approver permissions and break-glass (admin pages) -----------------------------------------


@dataclass(frozen=True)
class ApproverHolder:
    """One person holding ``registry.approve_access`` on one scope or server of the tenant."""

    kind: str  # "scope" or "server"
    obj: Any
    user: AbstractBaseUser
    membership: Any  # None: no longer a member (then not eligible either)


def approver_holders(tenant: Tenant) -> list[ApproverHolder]:
    """Direct holders of the approve permission on the tenant's scopes and servers, by object
    then username (group-held permissions are managed in the IdP, not here)."""
    from governance.tenancy.models import Membership
    from registry.models import McpServer, ToolScope

    members = {m.user_id: m for m in Membership.objects.for_tenant(tenant)}
    rows = []
    for kind, model in (("scope", ToolScope), ("server", McpServer)):
        objects = {str(o.pk): o for o in model.objects.for_tenant(tenant)}
        perms = UserObjectPermission.objects.filter(
            content_type=ContentType.objects.get_for_model(model),
            permission__codename="approve_access", object_pk__in=list(objects),
        ).select_related("user")
        rows += [ApproverHolder(kind, objects[p.object_pk], p.user, members.get(p.user_id))
                 for p in perms]
    return sorted(rows, key=lambda r: (r.kind, r.obj.name, r.user.get_username()))


def break_glass_grants(tenant: Tenant) -> QuerySet[Grant]:
    """Break-glass grants, newest first, with who made them."""
    return (Grant.objects.for_tenant(tenant).filter(break_glass=True)
            .select_related("agent", "scope", "created_by").order_by("-created_at", "-pk"))
