"""What an evidence pack contains: the reads of one tenant's history for one period, as tables
of plain rows (each becomes a CSV and a JSON file). Rows are produced lazily and every large
query is streamed with ``.iterator()``, so a period with millions of audit events never sits in
memory.

The period is a range of UTC calendar days, both ends included:
``[period_start 00:00, period_end + 1 day 00:00)``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property
from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.db import connection, transaction
from django.db.models import Count, Max, Min, Q
from django.utils import timezone
from guardian.shortcuts import get_users_with_perms

from approvals.models import AccessRequest, ApprovalDecision, Decidable, Escalation, describe_rule
from bundles.models import Bundle, SigningKey
from evidence.controls import controls_for
from governance.audit.models import AuditChain, AuditEvent
from governance.audit.services import audit_verify
from governance.tenancy.models import Membership, Tenant
from registry.models import Grant
from registry.services import AGENT_PERMISSION

Row = dict[str, Any]


def timestamp(value: datetime | None) -> str | None:
    """UTC, ISO 8601 with microseconds, as the audit chain writes its times."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Period:
    tenant: Tenant
    start: date
    end: date  # included

    @property
    def start_at(self) -> datetime:
        return datetime.combine(self.start, time.min, tzinfo=UTC)

    @property
    def end_before(self) -> datetime:
        return datetime.combine(self.end + timedelta(days=1), time.min, tzinfo=UTC)

    def within(self, field_name: str) -> Q:
        return Q(**{f"{field_name}__gte": self.start_at, f"{field_name}__lt": self.end_before})

    def as_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(),
                "from": timestamp(self.start_at), "until_before": timestamp(self.end_before),
                "timezone": "UTC", "ends_included": "both"}


@dataclass(frozen=True)
class Table:
    """One CSV + JSON pair: ``rows()`` gives a fresh, streamed iterator of dicts."""

    name: str
    title: str
    columns: tuple[str, ...]
    rows: Callable[[], Iterator[Row]]
    # The column whose values are counted in the summary (e.g. pass/fail).
    tally: str | None = None
    # Shown as rows in report.html (the audit events are summarised there instead).
    in_report: bool = True
    # How many rows to expect (for progress on big tables), when cheap to know.
    expected: Callable[[], int] | None = None
    large: bool = False


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    description: str
    tables: tuple[Table, ...]
    # Extra facts for report.html and the manifest (computed once, after the tables): lines of
    # (label, text), and a breakdown table of (name, count).
    facts: Callable[[], list[tuple[str, str]]] = field(default=lambda: [])
    breakdown: Callable[[], list[tuple[str, int]]] = field(default=lambda: [])

    @property
    def controls(self) -> list[dict[str, str]]:
        return controls_for(self.key)


def _user(user) -> str:
    return user.get_username() if user is not None else ""


def _timeline(tenant: Tenant, object_type: str, object_id: str) -> list[str]:
    """The object's audit events, oldest first, as "<time> <action> by <actor>"."""
    events = AuditEvent.objects.filter(tenant=tenant, object_type=object_type,
                                       object_id=object_id).order_by("seq")
    return [f"{timestamp(at)} {action} by {_actor(kind, label)}" for at, action, label, kind
            in events.values_list("created_at", "action", "actor_label", "actor_type")]


def _actor(kind: str, label: str) -> str:
    """An audit actor for people: users and tokens by their label, machines with their kind."""
    if kind in (AuditEvent.ActorType.GATEWAY, AuditEvent.ActorType.SYSTEM):
        return f"{kind} {label}".strip()
    return label or kind


class Evidence:
    """The tables of one pack. Built once per pack build; caches what several tables share."""

    def __init__(self, period: Period, *, generated_at: datetime | None = None) -> None:
        self.period = period
        self.tenant = period.tenant
        # Statuses are as of this moment (a grant past its expiry is expired, swept or not).
        self.generated_at = generated_at or timezone.now()
        self._co_owners: dict[int, set[int]] = {}

    # --- shared lookups ---------------------------------------------------------------------

    @cached_property
    def roles(self) -> dict[int, str]:
        """Each member's role when the pack is generated (roles at decision time are not
        stored; the frozen stage rule in the same row says who was eligible then)."""
        return dict(Membership.objects.for_tenant(self.tenant).values_list("user_id", "role"))

    def role(self, user_id: int | None) -> str:
        return self.roles.get(user_id, "not a member") if user_id else ""

    def co_owners(self, agent) -> set[int]:
        """Users holding the agent-owner object permission (they may not decide for it)."""
        if agent.pk not in self._co_owners:
            users = get_users_with_perms(agent, only_with_perms_in=[
                AGENT_PERMISSION.split(".", 1)[1]], with_group_users=True)
            self._co_owners[agent.pk] = {u.pk for u in users}
        return self._co_owners[agent.pk]

    def _recorded_by(self, grant: Grant) -> str:
        event = (AuditEvent.objects.filter(tenant=self.tenant, object_type="registry.grant",
                                           object_id=str(grant.pk), action="grant.created")
                 .values_list("actor_label", "actor_type").order_by("seq").first())
        return _actor(event[1], event[0]) if event else ""

    @staticmethod
    def _decision_text(decision: ApprovalDecision, role: str) -> str:
        return (f"stage {decision.stage + 1}: {_user(decision.approver)} ({role}) "
                f"{decision.outcome} at {timestamp(decision.created_at)}")

    @staticmethod
    def _stage_rule(item: Decidable, stage: int) -> str:
        rule = item.stages[stage] if stage < len(item.stages) else {}
        text = describe_rule(rule, labels=False) if rule else "unknown stage"
        if item.on_alternates and item.alternates and stage == item.current_stage:
            text += f"; or the alternates ({describe_rule(item.alternates, labels=False)})"
        return text

    # --- grants -------------------------------------------------------------------------------

    GRANT_COLUMNS = (
        "grant_id", "agent", "agent_owner", "scope", "origin", "created_at", "created_by",
        "recorded_by", "expires_at", "status", "revoked_at", "access_request_id", "requester",
        "requested_at", "justification", "ticket", "approvals", "last_approval_at",
        "approved_before_access",
    )

    def grant_rows(self) -> Iterator[Row]:
        grants = (Grant.objects.for_tenant(self.tenant).filter(self.period.within("created_at"))
                  .select_related("agent__owner", "scope", "created_by",
                                  "access_request__requester")
                  .prefetch_related("access_request__decisions__approver")
                  .order_by("created_at", "pk"))
        for grant in grants.iterator(chunk_size=500):
            try:
                request = grant.access_request
            except ObjectDoesNotExist:
                request = None
            approvals: list[ApprovalDecision] = []
            if grant.break_glass:
                origin = "break-glass"
            elif request is not None:
                origin = "request"
                approvals = sorted((d for d in request.decisions.all()
                                    if d.outcome == ApprovalDecision.Outcome.APPROVE),
                                   key=lambda d: (d.created_at, d.pk))
            else:
                origin = "direct"
            last = approvals[-1].created_at if approvals else None
            if origin == "request":
                before: bool | str = last is not None and last <= grant.created_at
            else:
                before = origin
            yield {
                "grant_id": grant.pk, "agent": grant.agent.name,
                "agent_owner": _user(grant.agent.owner), "scope": grant.scope.name,
                "origin": origin, "created_at": timestamp(grant.created_at),
                "created_by": _user(grant.created_by), "recorded_by": self._recorded_by(grant),
                "expires_at": timestamp(grant.expires_at),
                "status": grant.status_at(self.generated_at),
                "revoked_at": timestamp(grant.revoked_at),
                "access_request_id": request.pk if request else None,
                "requester": _user(request.requester) if request else "",
                "requested_at": timestamp(request.created_at) if request else None,
                "justification": request.justification if request else grant.justification,
                "ticket": request.ticket if request else "",
                "approvals": [self._decision_text(d, self.role(d.approver_id))
                              for d in approvals],
                "last_approval_at": timestamp(last),
                "approved_before_access": before,
            }

    DECISION_COLUMNS = (
        "decision_id", "subject", "subject_id", "agent", "scope", "stage", "stage_rule",
        "approver", "approver_role", "outcome", "reason", "decided_at", "grant_id",
        "grant_created_at", "before_grant",
    )

    def decision_rows(self) -> Iterator[Row]:
        decisions = (ApprovalDecision.objects.for_tenant(self.tenant)
                     .filter(self.period.within("created_at"))
                     .select_related("approver", "request__agent", "request__scope",
                                     "request__grant", "escalation__agent", "escalation__scope")
                     .order_by("created_at", "pk"))
        for decision in decisions.iterator(chunk_size=1000):
            item = decision.request or decision.escalation
            grant = decision.request.grant if decision.request else None
            yield {
                "decision_id": decision.pk,
                "subject": "access_request" if decision.request_id else "escalation",
                "subject_id": str(item.pk), "agent": item.agent.name, "scope": item.scope.name,
                "stage": decision.stage + 1, "stage_rule": self._stage_rule(item, decision.stage),
                "approver": _user(decision.approver),
                "approver_role": self.role(decision.approver_id), "outcome": decision.outcome,
                "reason": decision.reason, "decided_at": timestamp(decision.created_at),
                "grant_id": grant.pk if grant else None,
                "grant_created_at": timestamp(grant.created_at) if grant else None,
                "before_grant": (decision.created_at <= grant.created_at) if grant else None,
            }

    # --- separation of duties -----------------------------------------------------------------

    SOD_COLUMNS = (
        "subject", "subject_id", "agent", "agent_owner", "requester", "status", "created_at",
        "decided_at", "stages_required", "approvers", "decisions", "result", "reasons",
    )

    def sod_check(self, item: Decidable, decisions: list[ApprovalDecision]) -> list[str]:
        """Problems found on the stored data (empty: the item passes)."""
        problems: list[str] = []
        requester_id = getattr(item, "requester_id", None)
        owner_id = item.agent.owner_id
        co_owners = self.co_owners(item.agent)
        for d in decisions:
            who, stage = _user(d.approver), d.stage + 1
            if requester_id is not None and d.approver_id == requester_id:
                problems.append(f"{who} decided stage {stage} ({d.outcome}) of their own request")
            if owner_id is not None and d.approver_id == owner_id:
                problems.append(f"{who} decided stage {stage} ({d.outcome}) but owns the agent")
            elif d.approver_id in co_owners:
                problems.append(f"{who} decided stage {stage} ({d.outcome}) but holds the "
                                "agent-owner permission")
        stages_by_approver: dict[int, list[int]] = defaultdict(list)
        for d in decisions:
            stages_by_approver[d.approver_id].append(d.stage + 1)
        for d in decisions:
            seen = stages_by_approver.pop(d.approver_id, [])
            if len(seen) > 1:
                problems.append(f"{_user(d.approver)} counted {len(seen)} times "
                                f"(stages {', '.join(map(str, seen))})")
        if item.status == Decidable.Status.APPROVED:
            approvers_by_stage: dict[int, set[int]] = defaultdict(set)
            for d in decisions:
                if d.outcome == ApprovalDecision.Outcome.APPROVE:
                    approvers_by_stage[d.stage].add(d.approver_id)
            for index, rule in enumerate(item.stages):
                needed = int(rule.get("approvals_required", 1))
                if item.on_alternates and index == item.current_stage:
                    needed = 1  # one alternate decides for the stage it was handed
                got = len(approvers_by_stage.get(index, ()))
                if got < needed:
                    problems.append(f"stage {index + 1} was passed with {got} of {needed} "
                                    "required approvals")
        return problems

    def sod_rows(self) -> Iterator[Row]:
        decided = [Decidable.Status.APPROVED, Decidable.Status.DENIED, Decidable.Status.EXPIRED]
        requests = (AccessRequest.objects.for_tenant(self.tenant)
                    .filter(self.period.within("decided_at"), status__in=decided)
                    .select_related("agent__owner", "requester")
                    .prefetch_related("decisions__approver").order_by("decided_at", "pk"))
        escalations = (Escalation.objects.for_tenant(self.tenant)
                       .filter(self.period.within("decided_at"), status__in=decided)
                       .select_related("agent__owner", "gateway")
                       .prefetch_related("decisions__approver").order_by("decided_at", "pk"))
        for subject, items in (("access_request", requests), ("escalation", escalations)):
            for item in items.iterator(chunk_size=500):
                decisions = sorted(item.decisions.all(), key=lambda d: (d.created_at, d.pk))
                problems = self.sod_check(item, decisions)
                approvers = sorted({_user(d.approver) for d in decisions})
                if problems:
                    reasons = problems
                elif decisions:
                    reasons = ["no decision by the requester or the agent's owner; each approver "
                               "counted once" + ("; every stage had its approvals"
                                                 if item.status == "approved" else "")]
                else:
                    reasons = ["no human decision (expired at its deadline)"]
                yield {
                    "subject": subject, "subject_id": str(item.pk), "agent": item.agent.name,
                    "agent_owner": _user(item.agent.owner),
                    "requester": (_user(item.requester) if subject == "access_request"
                                  else f"gateway {item.gateway.name}"),
                    "status": item.status, "created_at": timestamp(item.created_at),
                    "decided_at": timestamp(item.decided_at),
                    "stages_required": ", ".join(str(s.get("approvals_required", 1))
                                                 for s in item.stages),
                    "approvers": approvers, "decisions": len(decisions),
                    "result": "fail" if problems else "pass", "reasons": reasons,
                }

    # --- break-glass --------------------------------------------------------------------------

    BREAK_GLASS_COLUMNS = (
        "grant_id", "admin", "agent", "scope", "justification", "created_at", "expires_at",
        "minutes", "status", "revoked_at", "audit_seq",
    )

    def break_glass_rows(self) -> Iterator[Row]:
        grants = (Grant.objects.for_tenant(self.tenant)
                  .filter(self.period.within("created_at"), break_glass=True)
                  .select_related("agent", "scope", "created_by").order_by("created_at", "pk"))
        for grant in grants.iterator(chunk_size=500):
            seq = (AuditEvent.objects.filter(tenant=self.tenant, action="grant.break_glass",
                                             object_type="registry.grant",
                                             object_id=str(grant.pk))
                   .values_list("seq", flat=True).first())
            minutes = (round((grant.expires_at - grant.created_at).total_seconds() / 60)
                       if grant.expires_at else None)
            yield {
                "grant_id": grant.pk, "admin": _user(grant.created_by) or self._recorded_by(grant),
                "agent": grant.agent.name, "scope": grant.scope.name,
                "justification": grant.justification, "created_at": timestamp(grant.created_at),
                "expires_at": timestamp(grant.expires_at), "minutes": minutes,
                "status": grant.status_at(self.generated_at),
                "revoked_at": timestamp(grant.revoked_at),
                "audit_seq": seq,
            }

    # --- requests and escalations -------------------------------------------------------------

    REQUEST_COLUMNS = (
        "request_id", "agent", "scope", "requester", "justification", "ticket",
        "duration_minutes", "status", "created_at", "deadline", "on_alternates", "decided_at",
        "deny_reason", "decisions", "grant_id", "grant_created_at", "timeline",
    )

    def _in_period(self) -> Q:
        return self.period.within("created_at") | self.period.within("decided_at")

    def _decisions(self, item: Decidable) -> list[str]:
        return [self._decision_text(d, self.role(d.approver_id)) + (
            f" ({d.reason})" if d.reason else "")
            for d in sorted(item.decisions.all(), key=lambda d: (d.created_at, d.pk))]

    def request_rows(self) -> Iterator[Row]:
        requests = (AccessRequest.objects.for_tenant(self.tenant).filter(self._in_period())
                    .select_related("agent", "scope", "requester", "grant")
                    .prefetch_related("decisions__approver").order_by("created_at", "pk"))
        for r in requests.iterator(chunk_size=500):
            yield {
                "request_id": r.pk, "agent": r.agent.name, "scope": r.scope.name,
                "requester": _user(r.requester), "justification": r.justification,
                "ticket": r.ticket, "duration_minutes": r.duration_minutes, "status": r.status,
                "created_at": timestamp(r.created_at), "deadline": timestamp(r.deadline),
                "on_alternates": r.on_alternates, "decided_at": timestamp(r.decided_at),
                "deny_reason": r.deny_reason, "decisions": self._decisions(r),
                "grant_id": r.grant_id,
                "grant_created_at": timestamp(r.grant.created_at) if r.grant else None,
                "timeline": _timeline(self.tenant, "approvals.accessrequest", str(r.pk)),
            }

    ESCALATION_COLUMNS = (
        "escalation_id", "gateway", "call_id", "agent", "server", "tool", "scope",
        "arguments_sha256", "reason", "bundle_revision", "status", "created_at", "deadline",
        "on_alternates", "decided_at", "deny_reason", "consumed_at", "decisions", "timeline",
    )

    def escalation_rows(self) -> Iterator[Row]:
        escalations = (Escalation.objects.for_tenant(self.tenant).filter(self._in_period())
                       .select_related("agent", "scope", "gateway")
                       .prefetch_related("decisions__approver").order_by("created_at", "pk"))
        for e in escalations.iterator(chunk_size=500):
            yield {
                "escalation_id": str(e.pk), "gateway": e.gateway.name, "call_id": e.call_id,
                "agent": e.agent.name, "server": e.server, "tool": e.tool,
                "scope": e.scope.name, "arguments_sha256": e.arguments_sha256,
                "reason": e.reason, "bundle_revision": e.bundle_revision, "status": e.status,
                "created_at": timestamp(e.created_at), "deadline": timestamp(e.deadline),
                "on_alternates": e.on_alternates, "decided_at": timestamp(e.decided_at),
                "deny_reason": e.deny_reason, "consumed_at": timestamp(e.consumed_at),
                "decisions": self._decisions(e),
                "timeline": _timeline(self.tenant, "approvals.escalation", str(e.pk)),
            }

    # --- bundles and keys ---------------------------------------------------------------------

    BUNDLE_COLUMNS = (
        "revision", "created_at", "expires_at", "trigger", "size", "sha256", "kid",
        "content_sha256", "through_audit_seq", "build_ms", "contents",
    )

    def bundle_rows(self) -> Iterator[Row]:
        bundles = (Bundle.objects.for_tenant(self.tenant).filter(self.period.within("created_at"))
                   .select_related("key").order_by("revision_number"))
        for b in bundles.iterator(chunk_size=1000):
            yield {
                "revision": b.revision_number, "created_at": timestamp(b.created_at),
                "expires_at": timestamp(b.expires_at), "trigger": b.trigger, "size": b.size,
                "sha256": b.blob_id, "kid": b.key.kid, "content_sha256": b.content_sha256,
                "through_audit_seq": b.through_seq, "build_ms": b.build_ms,
                "contents": dict(b.summary_items),
            }

    KEY_COLUMNS = (
        "kid", "state", "created_at", "created_by", "activate_after", "activated_at",
        "retired_at", "revoked_at", "bundles_signed_in_period",
    )

    def key_rows(self) -> Iterator[Row]:
        """Keys alive at some point of the period (created before its end, not revoked before
        its start)."""
        signed = Count("bundles", filter=self.period.within("bundles__created_at"))
        keys = (SigningKey.objects.for_tenant(self.tenant)
                .filter(created_at__lt=self.period.end_before)
                .exclude(revoked_at__lt=self.period.start_at)
                .select_related("created_by").annotate(signed=signed).order_by("created_at", "pk"))
        for k in keys:
            yield {
                "kid": k.kid, "state": k.state, "created_at": timestamp(k.created_at),
                "created_by": _user(k.created_by) or "system",
                "activate_after": timestamp(k.activate_after),
                "activated_at": timestamp(k.activated_at), "retired_at": timestamp(k.retired_at),
                "revoked_at": timestamp(k.revoked_at), "bundles_signed_in_period": k.signed,
            }

    KEY_EVENT_COLUMNS = ("seq", "created_at", "action", "kid", "actor", "before", "after")

    def key_event_rows(self) -> Iterator[Row]:
        events = (AuditEvent.objects.filter(tenant=self.tenant, action__startswith="bundle_key.")
                  .filter(self.period.within("created_at")).order_by("seq"))
        for e in events.iterator(chunk_size=1000):
            yield {"seq": e.seq, "created_at": timestamp(e.created_at), "action": e.action,
                   "kid": e.object_repr.split(" ", 1)[0],
                   "actor": _actor(e.actor_type, e.actor_label),
                   "before": e.before, "after": e.after}

    # --- the audit trail ----------------------------------------------------------------------

    def _events(self):
        return AuditEvent.objects.filter(tenant=self.tenant).filter(
            self.period.within("created_at"))

    @cached_property
    def chain(self) -> dict[str, Any]:
        """``audit_verify`` of the tenant's chain now, with its head and the period's events,
        all read in one snapshot (PostgreSQL: REPEATABLE READ) so that events appended while
        it runs cannot make a sound chain look broken."""
        with transaction.atomic():
            # Only an outermost transaction can still choose its isolation level.
            if connection.vendor == "postgresql" and len(connection.atomic_blocks) == 1:
                with connection.cursor() as cursor:
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            head = AuditChain.objects.filter(tenant=self.tenant).first()
            reports = list(audit_verify(tenant=self.tenant, platform=False))
            in_period = self._events().aggregate(n=Count("id"), first=Min("seq"),
                                                 last=Max("seq"))
        report = reports[0] if reports else None
        return {
            "chain": report.chain if report else f"tenant {self.tenant.slug}",
            "result": ("ok" if report.ok else "broken") if report else "empty",
            "line": report.line() if report else "no audit events recorded yet",
            "events_verified": report.events if report else 0,
            "problem": report.problem if report else "",
            "broken_event_id": report.event_id if report else None,
            "broken_seq": report.seq if report else None,
            "head_seq": head.last_seq if head else 0,
            "head_hash": head.last_hash if head else "",
            "events_in_period": in_period["n"],
            "first_seq_in_period": in_period["first"],
            "last_seq_in_period": in_period["last"],
            "verified_at": timestamp(timezone.now()),
        }

    CHAIN_COLUMNS = (
        "chain", "result", "line", "events_verified", "problem", "broken_event_id",
        "broken_seq", "head_seq", "head_hash", "events_in_period", "first_seq_in_period",
        "last_seq_in_period", "verified_at",
    )

    def chain_rows(self) -> Iterator[Row]:
        yield dict(self.chain)

    EVENT_COLUMNS = (
        "seq", "created_at", "actor_type", "actor_id", "actor_label", "action", "object_type",
        "object_id", "object_repr", "before", "after", "request_id", "ip", "prev_hash", "hash",
    )

    def event_rows(self) -> Iterator[Row]:
        for e in self._events().order_by("seq").iterator(chunk_size=2000):
            yield {
                "seq": e.seq, "created_at": timestamp(e.created_at), "actor_type": e.actor_type,
                "actor_id": e.actor_id, "actor_label": e.actor_label, "action": e.action,
                "object_type": e.object_type, "object_id": e.object_id,
                "object_repr": e.object_repr, "before": e.before, "after": e.after,
                "request_id": e.request_id, "ip": e.ip, "prev_hash": e.prev_hash,
                "hash": e.hash,
            }

    def event_count(self) -> int:
        return self._events().count()

    def actions(self) -> list[tuple[str, int]]:
        rows = self._events().values("action").annotate(n=Count("id")).order_by("action")
        return [(r["action"], r["n"]) for r in rows]

    # --- the sections, in pack order ----------------------------------------------------------

    def sections(self) -> list[Section]:
        def chain_facts() -> list[tuple[str, str]]:
            c = self.chain
            return [("Result", c["line"]), ("Head", f"#{c['head_seq']} {c['head_hash']}"),
                    ("Events in the period", str(c["events_in_period"]))]

        return [
            Section("grants", "Grants and their approvals",
                    "Every grant created in the period, joined to its access request and the "
                    "approval decisions (who, their role, when). approved_before_access is true "
                    "when the last approval precedes the grant's creation; grants an admin made "
                    "directly are marked direct, emergency grants break-glass. The decisions "
                    "table lists every approval decision of the period.",
                    (Table("grants", "Grants", self.GRANT_COLUMNS, self.grant_rows,
                           tally="approved_before_access"),
                     Table("approval_decisions", "Approval decisions", self.DECISION_COLUMNS,
                           self.decision_rows, tally="outcome"))),
            Section("separation_of_duties", "Separation-of-duties checks",
                    "Recomputed from the stored decisions for every access request and "
                    "escalation decided in the period: no decision by the requester or by the "
                    "agent's owner (or a holder of the agent-owner permission), no approver "
                    "counted twice, and every stage of an approved item had its required "
                    "approvals.",
                    (Table("separation_of_duties", "Separation-of-duties checks",
                           self.SOD_COLUMNS, self.sod_rows, tally="result"),)),
            Section("break_glass", "Break-glass uses",
                    "Emergency self-grants by admins in the period: no prior approval, short "
                    "lived, alerted to every admin when used.",
                    (Table("break_glass", "Break-glass grants", self.BREAK_GLASS_COLUMNS,
                           self.break_glass_rows),)),
            Section("access_requests", "Access requests and escalations",
                    "Requests and escalations created or decided in the period, with their "
                    "decisions and the timeline from the audit trail.",
                    (Table("access_requests", "Access requests", self.REQUEST_COLUMNS,
                           self.request_rows, tally="status"),
                     Table("escalations", "Escalations", self.ESCALATION_COLUMNS,
                           self.escalation_rows, tally="status"))),
            Section("bundles", "Bundle history",
                    "Every signed policy bundle published in the period: revision, trigger, "
                    "size, SHA-256 of the tarball and the signing key.",
                    (Table("bundles", "Bundles", self.BUNDLE_COLUMNS, self.bundle_rows,
                           tally="trigger"),)),
            Section("signing_keys", "Signing keys and rotations",
                    "The tenant's bundle signing keys alive in the period with their states, and "
                    "every key event (bundle_key.created, rotated, activated, retired, revoked) "
                    "of the period.",
                    (Table("signing_keys", "Signing keys", self.KEY_COLUMNS, self.key_rows,
                           tally="state"),
                     Table("key_events", "Key events", self.KEY_EVENT_COLUMNS,
                           self.key_event_rows, tally="action"))),
            Section("audit_chain", "Audit chain verification",
                    "The tenant's hash chain recomputed from its first event when the pack was "
                    "generated (any edited, deleted or reordered event breaks it), the chain "
                    "head, and how many events fall in the period.",
                    (Table("audit_chain", "Audit chain verification", self.CHAIN_COLUMNS,
                           self.chain_rows, tally="result"),),
                    facts=chain_facts),
            Section("audit_events", "Audit events of the period",
                    "Every audit event of the tenant in the period, in chain order, with the "
                    "hashes that link them (the CSV and JSON hold them all; this report counts "
                    "them per action).",
                    (Table("audit_events", "Audit events", self.EVENT_COLUMNS, self.event_rows,
                           in_report=False, expected=self.event_count, large=True),),
                    breakdown=self.actions),
        ]
