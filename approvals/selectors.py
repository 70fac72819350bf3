"""Reads of the approvals app, tenant first: which policy applies and who may decide, the
approver's inbox (and its counter), a requester's requests, the policies, and what a request
would change in the published bundle.

The inbox is a list of ``InboxItem``s of several kinds merged by deadline. Access requests are
the first kind; runtime escalations (DESIGN.md §5) plug in as a second: a selector returning
their items, added to ``inbox_items`` and ``inbox_count``, and a row template named by the item.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.contenttypes.models import ContentType
from django.db.models import CharField, Exists, OuterRef, Prefetch, Q, QuerySet
from django.db.models.functions import Cast
from django.utils import timezone
from guardian.models import GroupObjectPermission, UserObjectPermission
from guardian.shortcuts import get_users_with_perms

from approvals.models import (
    AccessRequest,
    ApprovalDecision,
    ApprovalPolicy,
    ApprovalStage,
    Decidable,
    Escalation,
    describe_rule,
)
from bundles import diff
from bundles.packaging import rfc3339
from gateway.receipts import arguments_sha256
from governance.tenancy.models import ExternalIdentity, Membership, Tenant
from governance.tenancy.roles import Cap, roles_with
from registry.compiler import compile_data
from registry.models import Agent, Grant, McpServer, Risk, Tool, ToolScope

# Without any policy of the tenant: one member of a role that may decide approvals (approver or
# admin; weakest first, the order items have carried from the start), within a day.
BUILT_IN_STAGES = [{"approvals_required": 1,
                    "roles": [str(r) for r in reversed(roles_with(Cap.DECIDE_APPROVALS))],
                    "idp_group": "", "object_permission": False}]
BUILT_IN_DECISION_HOURS = 24
# The guardian object permission (on a scope, or on a server) that a stage can name.
APPROVE_PERMISSION = "approve_access"


# --- Which policy applies, who may decide ---------------------------------------------------------

@dataclass(frozen=True)
class Rules:
    """The applicable policy, as frozen into a new item."""

    stages: list[dict[str, Any]]
    decision_hours: int
    alternates: dict[str, Any] | None


def policy_rules(tenant: Tenant, scope: ToolScope) -> Rules:
    """The most specific policy for ``scope``: its own, else its risk level's, else the tenant
    default, else the built-in one (one approver or admin within a day)."""
    candidates = list(ApprovalPolicy.objects.for_tenant(tenant).filter(
        Q(scope__isnull=True) | Q(scope=scope)).prefetch_related("stages"))
    for match in (lambda p: p.scope_id == scope.pk,
                  lambda p: p.scope_id is None and p.risk_level == scope.risk_level,
                  lambda p: p.scope_id is None and p.risk_level == ""):
        found = next((p for p in candidates if match(p)), None)
        if found is not None:
            stages = [s.rule() for s in sorted(found.stages.all(), key=lambda s: s.position)]
            return Rules(stages, found.decision_hours, found.alternates_rule())
    return Rules([dict(s) for s in BUILT_IN_STAGES], BUILT_IN_DECISION_HOURS, None)


def policy_for(tenant: Tenant, scope: ToolScope) -> tuple[list[dict[str, Any]], int]:
    """(stages, decision hours) of the most specific policy for ``scope``."""
    rules = policy_rules(tenant, scope)
    return rules.stages, rules.decision_hours


def _members(tenant: Tenant) -> set[int]:
    return set(Membership.objects.for_tenant(tenant).values_list("user_id", flat=True))


def member_users(tenant: Tenant, **filters) -> list[AbstractBaseUser]:
    """The tenant's members (as users) matching ``filters`` on the user, e.g. ``pk__in``."""
    return list(get_user_model().objects.filter(memberships__tenant=tenant, **filters))


def _permission_holders(objects) -> set[int]:
    users: set[int] = set()
    for obj in objects:
        users.update(u.pk for u in get_users_with_perms(
            obj, with_group_users=True, only_with_perms_in=[APPROVE_PERMISSION]))
    return users


def object_approvers(tenant: Tenant, scope_id: int | None) -> set[int]:
    """Members holding ``registry.approve_access`` on the scope or on a server whose tools it
    contains; without a scope (a default policy), on any scope or server of the tenant."""
    if scope_id is None:
        objects = [*ToolScope.objects.for_tenant(tenant), *McpServer.objects.for_tenant(tenant)]
    else:
        objects = [*ToolScope.objects.for_tenant(tenant).filter(pk=scope_id),
                   *McpServer.objects.for_tenant(tenant).filter(tools__scopes=scope_id)
                   .distinct()]
    return _permission_holders(objects) & _members(tenant)


def eligible_user_ids(tenant: Tenant, stage: dict[str, Any], *,
                      scope_id: int | None = None) -> set[int]:
    """Who may decide ``stage`` now: members with one of its roles, members in its IdP group,
    and (when the stage says so) holders of the approve permission on the scope or server."""
    users = set(Membership.objects.for_tenant(tenant).filter(role__in=stage["roles"])
                .values_list("user_id", flat=True)) if stage["roles"] else set()
    if stage["idp_group"]:
        for user_id, groups in ExternalIdentity.objects.filter(
                user_id__in=_members(tenant)).values_list("user_id", "last_groups"):
            if stage["idp_group"] in (groups or []):
                users.add(user_id)
    if stage.get("object_permission"):
        users |= object_approvers(tenant, scope_id)
    return users


def current_stage_rule(item: Decidable) -> dict[str, Any] | None:
    """The rule the next decision is checked against: the current stage, or the alternates
    once the first deadline has passed (``on_alternates``)."""
    return _deciding(item.stages, item.current_stage, item.alternates, item.on_alternates)


def _deciding(stages, current: int, alternates, on_alternates: bool) -> dict[str, Any] | None:
    if on_alternates and alternates:
        return alternates
    stages = stages or []
    return stages[current] if current < len(stages) else None


def eligible_for(tenant: Tenant, item: Decidable) -> set[int]:
    """Who may decide ``item`` now (before the self-approval rules)."""
    rule = current_stage_rule(item)
    return eligible_user_ids(tenant, rule, scope_id=item.scope_id) if rule else set()


def excluded_approvers(item: Decidable) -> set[int]:
    """The people who may not decide this item now: its requester, the agent's owner and
    whoever already decided one of its stages (one approver counts once)."""
    people = {item.agent.owner_id, *item.decisions.values_list("approver_id", flat=True)}
    if isinstance(item, AccessRequest):
        people.add(item.requester_id)
    return {p for p in people if p is not None}


@dataclass(frozen=True)
class ApproverProfile:
    """What makes one person eligible for a stage in one tenant: their role and IdP groups."""

    user_id: int
    role: str | None
    groups: frozenset[str]

    def admits(self, stage: dict[str, Any]) -> bool:
        """The rule of ``eligible_user_ids``, for one person: a member whose role the stage names,
        or (when it names one) a member in the stage's IdP group."""
        if self.role is None:
            return False
        if self.role in (stage.get("roles") or []):
            return True
        group = stage.get("idp_group") or ""
        return bool(group) and group in self.groups


def approver_profile(tenant: Tenant, user: AbstractBaseUser) -> ApproverProfile:
    """``user``'s role and IdP groups in ``tenant``, in one query (no membership: no role)."""
    role, groups = None, set()
    for member_role, last_groups in Membership.objects.for_tenant(tenant).filter(
            user=user).values_list("role", "user__external_identities__last_groups"):
        role = member_role
        groups.update(last_groups or [])
    return ApproverProfile(user.pk, role, frozenset(groups))


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


def _subject(model: type[Decidable]) -> str:
    """The field of ApprovalDecision that points at an item of ``model``."""
    return "request" if model is AccessRequest else "escalation"


def _undecidable(user: AbstractBaseUser, model: type[Decidable]) -> list[Exists]:
    """Subqueries marking items ``user`` may never decide (they hold the agent's owner
    permission, django-guardian, directly or through a group: the services refuse them) or has
    already decided one of the item's stages (one approver counts once, across the stages)."""
    agent_type = ContentType.objects.get_for_model(Agent)  # cached after the first call
    object_pk = Cast(OuterRef("agent_id"), CharField())
    return [
        Exists(ApprovalDecision.objects.filter(**{_subject(model): OuterRef("pk")},
                                               approver=user)),
        Exists(UserObjectPermission.objects.filter(
            user=user, content_type=agent_type, object_pk=object_pk,
            permission__codename="manage_agent")),
        Exists(GroupObjectPermission.objects.filter(
            group__user=user, content_type=agent_type, object_pk=object_pk,
            permission__codename="manage_agent")),
    ]


def _decidable(tenant: Tenant, user: AbstractBaseUser, model: type[Decidable] = AccessRequest,
               now: datetime | None = None) -> QuerySet:
    """Pending items of ``model`` before their deadline that ``user`` is not barred from
    deciding (their requester, the agent's owner); whether they are eligible for the current
    stage is checked on the rows (the stage is JSON)."""
    rows = model.objects.for_tenant(tenant).filter(
        status=Decidable.Status.PENDING, deadline__gt=now or timezone.now(),
    ).exclude(agent__owner=user)
    if model is AccessRequest:
        rows = rows.exclude(requester=user)
    for barred in _undecidable(user, model):
        rows = rows.exclude(barred)
    return rows.order_by("deadline", "pk")


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
        if _admits(tenant, profile, current_stage_rule(request), request.scope_id):
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
    for model in (AccessRequest, Escalation):
        for stages, current, alternates, on_alternates, scope_id in _decidable(
                tenant, user, model).values_list("stages", "current_stage", "alternates",
                                                 "on_alternates", "scope_id"):
            if _admits(tenant, profile, _deciding(stages, current, alternates, on_alternates),
                       scope_id):
                count += 1
    return count


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


def stage_rows(item: Decidable) -> list[dict[str, Any]]:
    """Each frozen stage of a request or escalation with its decisions so far and where the item
    stands."""
    by_stage: dict[int, list[ApprovalDecision]] = {}
    for decision in item.decisions.select_related("approver").order_by("stage", "created_at"):
        by_stage.setdefault(decision.stage, []).append(decision)
    rows = []
    for position, stage in enumerate(item.stages or []):
        made = by_stage.get(position, [])
        approvals = sum(d.outcome == ApprovalDecision.Outcome.APPROVE for d in made)
        if item.status == Decidable.Status.APPROVED or position < item.current_stage:
            state = "passed"
        elif position == item.current_stage and item.status == Decidable.Status.PENDING:
            state = "deciding"
        elif position == item.current_stage and item.status == Decidable.Status.DENIED:
            state = "denied"
        else:
            state = "not reached"
        rows.append({"number": position + 1, "stage": stage, "who": describe_rule(stage),
                     "decisions": made, "approvals": approvals, "state": state})
    return rows


def may_see_request(tenant: Tenant, user: AbstractBaseUser, request: AccessRequest) -> bool:
    """The requester, and whoever may decide one of its stages (admins and auditors see every
    request: ``approvals.access.sees_every_request``)."""
    if request.requester_id == user.pk:
        return True
    profile = approver_profile(tenant, user)
    rules = [*(request.stages or []), *([request.alternates] if request.alternates else [])]
    return any(_admits(tenant, profile, rule, request.scope_id) for rule in rules)


def may_decide_now(tenant: Tenant, user: AbstractBaseUser, item: Decidable) -> bool:
    """Whether the decision form for a request or escalation is worth showing (the service
    decides for real)."""
    if item.status != Decidable.Status.PENDING:
        return False
    return _decidable(tenant, user, type(item)).filter(pk=item.pk).exists() and _admits(
        tenant, approver_profile(tenant, user), current_stage_rule(item), item.scope_id)


def agent_grants(tenant: Tenant, agent: Agent) -> QuerySet[Grant]:
    """The agent's grants in force now."""
    from registry.selectors import grant_list

    return grant_list(tenant, agent=agent, in_force=True)


# --- What approving would change ----------------------------------------------------------------

PREVIEW_GRANT_ID = "new"


def preview_grant_document(request: AccessRequest, *, at: datetime) -> dict[str, Any]:
    """The grant document approving ``request`` at ``at`` would add to ``mcp/data.json``: the
    compiler's grant shape (registry/compiler.py) with the terms the service gives an
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


def inbox_escalations(tenant: Tenant, user: AbstractBaseUser, *,
                      profile: ApproverProfile | None = None) -> list[Escalation]:
    """Held tool calls ``user`` may decide now, by deadline."""
    profile = profile or approver_profile(tenant, user)
    if profile.role is None:
        return []
    rows = _decidable(tenant, user, Escalation).select_related(
        "agent", "agent__owner", "scope", "gateway")
    eligible = []
    for escalation in rows:
        if _admits(tenant, profile, current_stage_rule(escalation), escalation.scope_id):
            escalation.arguments_complete = arguments_complete(escalation)
            eligible.append(escalation)
    return eligible


def arguments_complete(escalation: Escalation) -> bool:
    """Whether the arguments the gateway sent hash to ``arguments_sha256`` (not redacted)."""
    if escalation.arguments is None:
        return False
    return arguments_sha256(escalation.arguments) == escalation.arguments_sha256


def simulator_query(escalation: Escalation) -> str:
    """The policy simulator's query string for this held call (registry/simulator.py): the
    agent, tool, arguments (when the gateway sent them) and time, against the current bundle."""
    query = {"policy": "bundle", "agent": escalation.agent.name, "server": escalation.server,
             "tool": escalation.tool,
             "at": escalation.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")}
    if escalation.arguments is not None:
        query["arguments"] = json.dumps(escalation.arguments, sort_keys=True,
                                        ensure_ascii=False)
    return urlencode(query)


def escalation_list(tenant: Tenant, *, status: str = "", agent=None) -> QuerySet[Escalation]:
    rows = Escalation.objects.for_tenant(tenant).select_related("agent", "scope", "gateway")
    if status:
        rows = rows.filter(status=status)
    if agent is not None:
        rows = rows.filter(agent=agent)
    return rows.order_by("-created_at", "pk")


def prepared_item(tenant: Tenant, item: Decidable) -> InboxItem:
    """``item`` re-read as its inbox row shows it (after a decision)."""
    if isinstance(item, AccessRequest):
        request = request_list(tenant).prefetch_related("scope__tools__server").get(pk=item.pk)
        request.all_data_classes = data_classes(request)
        return InboxItem(ACCESS_REQUEST, request.deadline, request, ACCESS_REQUEST_ROW)
    escalation = escalation_list(tenant).get(pk=item.pk)
    escalation.arguments_complete = arguments_complete(escalation)
    return InboxItem(ESCALATION, escalation.deadline, escalation, ESCALATION_ROW)


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
    members = {m.user_id: m for m in Membership.objects.for_tenant(tenant)}
    rows = []
    for kind, model in (("scope", ToolScope), ("server", McpServer)):
        objects = {str(o.pk): o for o in model.objects.for_tenant(tenant)}
        perms = UserObjectPermission.objects.filter(
            content_type=ContentType.objects.get_for_model(model),
            permission__codename=APPROVE_PERMISSION, object_pk__in=list(objects),
        ).select_related("user")
        rows += [ApproverHolder(kind, objects[p.object_pk], p.user, members.get(p.user_id))
                 for p in perms]
    return sorted(rows, key=lambda r: (r.kind, r.obj.name, r.user.get_username()))


def break_glass_grants(tenant: Tenant) -> QuerySet[Grant]:
    """Break-glass grants, newest first, with who made them."""
    return (Grant.objects.for_tenant(tenant).filter(break_glass=True)
            .select_related("agent", "scope", "created_by").order_by("-created_at", "-pk"))
