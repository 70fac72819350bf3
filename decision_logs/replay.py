"""Shadow replay: the decision log of the last N days decided again, by the one decision
function (gateway/decision.py ``decide()``), against the candidate policy — the registry as it
stands, compiled by registry/compiler.py without publishing — listing the decisions that would
change (allow → deny, deny → allow, → escalate) with counts per agent and tool.

Writes (the request, the worker's claim, progress and result) are here and audited like every
service; the task (decision_logs/tasks.py) only calls :func:`replay_run_execute`.

What a replay cannot know, it says instead of guessing:
- a logged call whose arguments were kept only as a hash (or redacted: they no longer hash to
  ``arguments_sha256``) cannot be checked against argument constraints or an approval
  condition; when the candidate's deciding grants have such checks, the decision is counted as
  *not replayable* and the checks are named;
- rates and quotas are counted by each gateway, and the live definition hash is what the
  gateway saw upstream: a logged denial for either is not replayable either.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from decision_logs.models import DecisionLog, ReplayRun
from gateway.decision import FEATURE_OF_METHOD, Decision, decide, decide_feature, tool_key
from gateway.receipts import arguments_sha256
from governance.audit.services import Actor, audit_record
from governance.tasking import enqueue_on_commit
from governance.tenancy.models import Tenant
from registry.compiler import compile_data
from registry.simulator import principal_of

log = logging.getLogger(__name__)

OPEN = (ReplayRun.Status.QUEUED, ReplayRun.Status.RUNNING)
BATCH = 2000
NOTES = [
    "Replayed against the registry as it stands (the draft the next bundle would hold).",
    "Rates and quotas are not replayed: their counters live in each gateway.",
    "A decision is replayed as the agent it was logged for, by the agent's first principal.",
]
# Logged refusals that depend on what only the gateway knew.
GATEWAY_ONLY = (("rate limit", "the rate limit (counted by the gateway)"),
                ("quota", "the daily quota (counted by the gateway)"),
                ("differs from the pinned", "the live definition hash (seen by the gateway)"))


class Superseded(Exception):
    """The run is no longer running (failed by the sweep, or gone): stop without writing."""


def validate_days(days: Any) -> int:
    limit = settings.REPLAY_MAX_DAYS
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= limit:
        raise ValidationError({"days": f"Use a whole number of days from 1 to {limit}."})
    return days


@transaction.atomic
def replay_request(*, tenant: Tenant, actor: Actor, days: int) -> ReplayRun:
    """Queue a shadow replay of the last ``days`` days; a worker runs it after the commit."""
    days = validate_days(days)
    limit = settings.REPLAY_MAX_OPEN_PER_TENANT
    if ReplayRun.objects.for_tenant(tenant).filter(status__in=OPEN).count() >= limit:
        raise ValidationError(f"{limit} shadow replays are already running for this tenant; "
                              "wait until one of them is done.")
    run = ReplayRun.objects.create(tenant=tenant, days=days, requested_by_label=actor.label[:200],
                                   step="Waiting for a worker")
    audit_record(tenant=tenant, actor=actor, action="decisions.replay_requested", obj=run,
                 after=run.audit_snapshot())
    enqueue_on_commit("decision_logs.tasks.replay", run.pk)
    return run


# --- The run (the Celery task's body) -----------------------------------------------------------

def _claim(run_id: int) -> ReplayRun | None:
    now = timezone.now()
    claimed = ReplayRun.objects.filter(pk=run_id, status=ReplayRun.Status.QUEUED).update(
        status=ReplayRun.Status.RUNNING, started_at=now, progress=0, step="Compiling the draft")
    return ReplayRun.objects.select_related("tenant").get(pk=run_id) if claimed else None


def _progress(run: ReplayRun, done: int, total: int) -> None:
    """Its own short transaction (autocommit), so the page sees it while the run goes on."""
    updated = ReplayRun.objects.filter(pk=run.pk, status=ReplayRun.Status.RUNNING).update(
        progress=min(99, done * 100 // max(total, 1)),
        step=f"Replayed {done} of {total} decisions")
    if not updated:
        raise Superseded(run.pk)


def argument_checks(data: dict[str, Any], agent: str, key: str) -> list[str]:
    """The checks of ``agent``'s grants covering ``key`` that need the call's arguments."""
    checks = []
    for grant in data.get("grants", []):
        if grant["agent"] != agent or key not in data["scopes"][grant["scope"]]["tools"]:
            continue
        if grant.get("argument_constraints"):
            checks.append(f"argument constraints of grant {grant['id']}")
        if grant.get("approval_mode") == "when":
            checks.append(f"approval condition of grant {grant['id']}")
    return checks


class Replayer:
    """Decides logged calls again against one compiled policy document."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        # Logged principals are "subject (issuer)" (decision_logs/services.py); map them back.
        self.by_principal = {f"{subject} ({issuer})": name
                             for issuer, subjects in data.get("principals", {}).items()
                             for subject, name in subjects.items()}

    def replay(self, row: dict[str, Any]) -> tuple[Decision | None, list[str]]:
        """(the candidate's decision, []) or (None, the checks that could not be replayed)."""
        if row["outcome"] == "deny":
            gateway_only = [text for needle, text in GATEWAY_ONLY if needle in row["reason"]]
            if gateway_only:
                return None, gateway_only
        agent = row["agent"] or self.by_principal.get(row["principal"], "")
        principal = principal_of(self.data, agent) if agent else None
        if principal is None:
            return Decision("deny", "unknown principal"), []
        feature = FEATURE_OF_METHOD.get(row["tool"])
        if feature is not None:  # a resources/prompts/completion request (tool = its method)
            return decide_feature(self.data, issuer=principal[0], subject=principal[1],
                                  server=row["server"], feature=feature,
                                  at=row["timestamp"]), []
        args = row["arguments"]
        complete = isinstance(args, dict) and arguments_sha256(args) == row["arguments_sha256"]
        # A delegated call is replayed as the agent acting for the same person (RFC 8693 form).
        person = row.get("on_behalf_of")
        caller = ({"subject": person, "actor": principal[1],
                   "groups": row.get("on_behalf_of_groups") or []} if person
                  else {"subject": principal[1], "client_id": principal[1]})
        decision = decide(self.data, issuer=principal[0], **caller,
                          server=row["server"], tool=row["tool"],
                          arguments=args if complete else {}, at=row["timestamp"])
        if not complete and decision.grant is not None:
            checks = argument_checks(self.data, agent, tool_key(row["server"], row["tool"]))
            if checks:
                return None, [f"{c} (the log kept only the arguments' hash)" for c in checks]
        return decision, []


class Tally:
    """The counts and the changed decisions of one run."""

    def __init__(self) -> None:
        self.total = self.changed = self.unreplayable = 0
        self.transitions: Counter[str] = Counter()
        self.per_tool: dict[tuple[str, str, str], Counter[str]] = {}
        self.checks: Counter[str] = Counter()
        self.changes: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any], decision: Decision | None, checks: list[str]) -> None:
        self.total += 1
        ident = {"decision_pk": row["id"], "decision_id": row["decision_id"],
                 "timestamp": row["timestamp"].isoformat(), "agent": row["agent"],
                 "server": row["server"], "tool": row["tool"], "logged": row["outcome"],
                 "logged_reason": row["reason"]}
        if decision is None:
            self.unreplayable += 1
            self.checks.update(checks)
            if len(self.skipped) < settings.REPLAY_MAX_CHANGES:
                self.skipped.append({**ident, "checks": checks})
            return
        if decision.outcome == row["outcome"]:
            return
        self.changed += 1
        transition = f"{row['outcome']}→{decision.outcome}"
        self.transitions[transition] += 1
        key = (row["agent"], row["server"], row["tool"])
        self.per_tool.setdefault(key, Counter())[transition] += 1
        if len(self.changes) < settings.REPLAY_MAX_CHANGES:
            self.changes.append({**ident, "replayed": decision.outcome,
                                 "replayed_reason": decision.reason})

    def summary(self) -> dict[str, Any]:
        rows = sorted(self.per_tool.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
        return {
            "total": self.total, "changed": self.changed, "not_replayable": self.unreplayable,
            "unchanged": self.total - self.changed - self.unreplayable,
            "transitions": dict(sorted(self.transitions.items())),
            "per_agent_tool": [{"agent": a, "server": s, "tool": t, "changed": sum(c.values()),
                                "transitions": dict(sorted(c.items()))}
                               for (a, s, t), c in rows],
            "not_replayable_checks": dict(self.checks.most_common()),
            "not_replayable_examples": self.skipped,
            "changes_shown": len(self.changes),
            "notes": NOTES,
        }


FIELDS = ("id", "decision_id", "timestamp", "agent", "principal", "server", "tool", "arguments",
          "arguments_sha256", "outcome", "reason", "on_behalf_of", "on_behalf_of_groups")


def run_replay(run: ReplayRun, *, now: datetime) -> Tally:
    """Replay every logged decision of the run's window, in batches, reporting progress."""
    since = now - timedelta(days=run.days)
    ReplayRun.objects.filter(pk=run.pk).update(since=since, until=now)
    replayer = Replayer(compile_data(run.tenant, at=now))
    logged = DecisionLog.objects.for_tenant(run.tenant).filter(timestamp__gte=since,
                                                                timestamp__lt=now)
    total = logged.count()
    tally = Tally()
    last = 0
    _progress(run, 0, total)
    while True:
        batch = list(logged.filter(id__gt=last).order_by("id").values(*FIELDS)[:BATCH])
        if not batch:
            break
        for row in batch:
            tally.add(row, *replayer.replay(row))
        last = batch[-1]["id"]
        _progress(run, tally.total, total)
    return tally


def replay_run_execute(*, run_id: int, now: datetime | None = None) -> ReplayRun | None:
    """Run a queued replay: running with its progress, then done with the counts and changes
    (audited ``decisions.replay_done``), or failed with the error (audited). A run that is not
    queued is left alone (returned as it is, None when gone)."""
    run = _claim(run_id)
    if run is None:
        return ReplayRun.objects.filter(pk=run_id).first()
    try:
        tally = run_replay(run, now=now or timezone.now())
    except Superseded:
        return ReplayRun.objects.filter(pk=run_id).first()
    except Exception as exc:
        log.exception("shadow replay %s failed", run_id)
        return _finish(run_id, error=f"{type(exc).__name__}: {exc}")
    return _finish(run_id, tally=tally)


@transaction.atomic
def _finish(run_id: int, *, tally: Tally | None = None, error: str = "") -> ReplayRun:
    run = ReplayRun.objects.select_for_update(of=("self",)).select_related("tenant").get(
        pk=run_id)
    if run.status != ReplayRun.Status.RUNNING:
        return run
    run.finished_at = timezone.now()
    if tally is None:
        run.status, run.step, run.error, run.progress = ReplayRun.Status.FAILED, "Failed", \
            error[:4000], 0
    else:
        run.status, run.step, run.progress = ReplayRun.Status.DONE, "Done", 100
        run.summary, run.changes = tally.summary(), tally.changes
    run.save(update_fields=["status", "step", "error", "progress", "summary", "changes",
                            "finished_at"])
    after = run.audit_snapshot() | (
        {"error": run.error} if tally is None else
        {key: run.summary[key] for key in ("total", "changed", "not_replayable", "transitions")})
    audit_record(tenant=run.tenant, actor=Actor.system(f"shadow replay #{run.pk}"),
                 action="decisions.replay_failed" if tally is None else "decisions.replay_done",
                 obj=run, after=after)
    return run


def replay_runs_fail_stale(*, now: datetime | None = None) -> int:
    """Runs started longer ago than the task's hard time limit lost their worker: failed."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.REPLAY_TIME_LIMIT + 60)
    stale = list(ReplayRun.objects.filter(status=ReplayRun.Status.RUNNING,
                                          started_at__lt=cutoff).values_list("pk", flat=True))
    for pk in stale:
        _finish(pk, error="The worker running this replay was lost; start a new one.")
    return len(stale)

