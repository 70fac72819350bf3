"""Every write of the alerts app: rules (with their defaults), raising, acknowledging and
resolving alerts, and the evaluation of the rules (Celery beat, every minute).

Rules exist for every tenant without anyone creating them: ``alert_rules_for`` adds the default
row of any kind a tenant does not have yet, the first time anything asks (a page, the API, the
evaluator, a break-glass grant). That covers tenants made before this app, by any code path
(admin, fixtures, management commands), and a kind added later, with no signal and no edit to
the tenancy services.

Stateful kinds (gateway stale, tool drift, export failing, audit chain broken) describe a
condition: each evaluation that still finds it bumps the live alert (``occurrences``,
``last_seen_at``) without notifying again, and the alert resolves itself once the condition
clears. Event kinds (burst of denials, break-glass) notify at every new occurrence while the
alert is open; acknowledging it silences them until it is resolved.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from alerts import selectors
from alerts.models import KIND_SPECS, Alert, AlertRule, Kind, Severity
from governance.audit.models import AuditEvent
from governance.audit.services import Actor, audit_record, to_json
from governance.tenancy.models import Tenant
from notifications.services import notify

log = logging.getLogger(__name__)

SYSTEM = Actor.system("alerts")
NOTIFY_EVENT = "alert.raised"
MAX_THRESHOLD = 100_000
MAX_WINDOW_MINUTES = 7 * 24 * 60
MAX_NOTE = 1000

CLEARED = {
    Kind.GATEWAY_STALE: "Condition cleared: the gateway is in contact and on the newest revision "
                        "again (or it was disabled or deleted).",
    Kind.TOOL_DRIFT: "Condition cleared: the tool is no longer quarantined (its new definition "
                     "was approved, or it was blocked).",
    Kind.EXPORT_FAILING: "Condition cleared: the exporter delivered again (or it was disabled "
                         "or deleted).",
    Kind.AUDIT_CHAIN_BROKEN: "Condition cleared: a later verification of the audit chain "
                             "passed.",
    Kind.BUNDLE_BUILD_FAILING: "Condition cleared: a later build published a new revision.",
    Kind.REVISION_CONFLICT: "Condition cleared: the gateway runs a revision this control plane "
                            "issued (or it was disabled or deleted).",
}


# --- Rules ------------------------------------------------------------------------------------


def _default_rule(tenant: Tenant, kind: str) -> AlertRule:
    spec = KIND_SPECS[kind]
    return AlertRule(tenant=tenant, kind=kind, enabled=True, threshold=spec.threshold,
                     window_minutes=spec.window_minutes, severity=spec.severity)


def alert_rules_for(tenant: Tenant) -> dict[str, AlertRule]:
    """Every rule of the tenant by kind (in the order of ``Kind``); a kind it has no row for
    yet gets its default row now (idempotent, safe against a concurrent caller)."""
    rows = {rule.kind: rule for rule in selectors.rules(tenant)}
    missing = [kind for kind in Kind.values if kind not in rows]
    if missing:
        AlertRule.objects.bulk_create([_default_rule(tenant, kind) for kind in missing],
                                      ignore_conflicts=True)
        rows = {rule.kind: rule for rule in selectors.rules(tenant)}
    return {kind: rows[kind] for kind in Kind.values}


def _bounded(value: Any, field: str, label: str, maximum: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValidationError({field: f"Give the {label} as a whole number."}) from None
    if not 1 <= number <= maximum:
        raise ValidationError({field: f"The {label} must be between 1 and {maximum}."})
    return number


RULE_FIELDS = ("enabled", "threshold", "window_minutes", "severity")


@transaction.atomic
def alert_rule_update(*, tenant: Tenant, actor: Actor, rule: AlertRule,
                      user: AbstractBaseUser | None = None, **changes: Any) -> AlertRule:
    """Switch a rule on or off, or change its threshold, window or severity (only those the
    kind takes)."""
    rule = AlertRule.objects.for_tenant(tenant).select_for_update().get(pk=rule.pk)
    unknown = set(changes) - set(RULE_FIELDS)
    if unknown:
        raise ValidationError(f"Cannot change {', '.join(sorted(unknown))} of a rule.")
    spec = rule.spec
    before = rule.audit_snapshot()
    if "enabled" in changes:
        rule.enabled = bool(changes["enabled"])
    if "severity" in changes:
        if changes["severity"] not in Severity.values:
            raise ValidationError({"severity": f"Use one of {', '.join(Severity.values)}."})
        rule.severity = changes["severity"]
    for field, default, label, maximum in (
            ("threshold", spec.threshold, spec.threshold_label or "threshold", MAX_THRESHOLD),
            ("window_minutes", spec.window_minutes, "window (minutes)", MAX_WINDOW_MINUTES)):
        if field not in changes:
            continue
        value = changes[field]
        if default is None:
            if value not in (None, ""):
                raise ValidationError({field: f"The rule “{rule.get_kind_display()}” takes no "
                                              f"{field.replace('_', ' ')}."})
            continue
        if value in (None, ""):
            raise ValidationError({field: f"Give the {label} (default {default})."})
        setattr(rule, field, _bounded(value, field, label, maximum))
    after = rule.audit_snapshot()
    if after == before:
        return rule
    rule.updated_by = user
    rule.updated_at = timezone.now()
    rule.save()
    audit_record(tenant=tenant, actor=actor, action="alert_rule.updated", obj=rule,
                 before=before, after=after)
    return rule


# --- Alerts -----------------------------------------------------------------------------------


def _notify(alert: Alert, *, again: bool) -> None:
    spec = KIND_SPECS[alert.rule_kind]
    label = alert.get_rule_kind_display()
    subject = f"[{alert.severity}] {alert.subject}"
    if again:
        subject = f"[{alert.severity}] Again ({alert.occurrences}×): {alert.subject}"
    text = (f"{label}: {alert.subject}.\n{spec.description}\n"
            f"Severity {alert.severity}; first seen {alert.first_seen_at:%Y-%m-%d %H:%M} UTC, "
            f"{alert.occurrences} occurrence{'s' if alert.occurrences != 1 else ''}. "
            "Acknowledge it in Tollgate to stop repeats.")
    notify(tenant=alert.tenant, event=NOTIFY_EVENT, subject=subject, text=text,
           link=reverse("alerts:detail", args=[alert.tenant.slug, alert.pk]),
           facts=[("Alert", label), ("Severity", alert.severity), ("Status", alert.status),
                  ("First seen", f"{alert.first_seen_at:%Y-%m-%d %H:%M} UTC"),
                  ("Occurrences", alert.occurrences)],
           data={"alert": alert.pk, "kind": alert.rule_kind, "key": alert.key,
                 "severity": alert.severity, "status": alert.status,
                 "occurrences": alert.occurrences, "first_seen_at": alert.first_seen_at,
                 "last_seen_at": alert.last_seen_at, "detail": alert.detail})


@transaction.atomic
def alert_raise(*, tenant: Tenant, kind: str, key: str, subject: str,
                detail: dict[str, Any] | None, actor: Actor,
                now: datetime | None = None) -> Alert | None:
    """Raise an alert of ``kind`` about ``key`` — or, while one is open or acknowledged, count
    one more occurrence on it. A new alert is audited (``alert.raised``) and notified; a new
    occurrence of an event kind re-notifies only while the alert is open. None when the
    tenant's rule of that kind is switched off."""
    if kind not in KIND_SPECS:
        raise ValueError(f"unknown alert kind {kind!r}")
    rule = alert_rules_for(tenant)[kind]
    if not rule.enabled:
        return None
    now = now or timezone.now()
    subject, detail = subject[:300], to_json(detail or {})
    alert = selectors.live_alert(tenant, kind, key, lock=True)
    if alert is None:
        try:
            with transaction.atomic():
                alert = Alert.objects.create(
                    tenant=tenant, rule_kind=kind, key=key[:250], subject=subject, detail=detail,
                    severity=rule.severity, first_seen_at=now, last_seen_at=now)
        except IntegrityError:  # a concurrent evaluator raised it first: bump theirs
            alert = selectors.live_alert(tenant, kind, key, lock=True)
            if alert is None:
                raise
        else:
            audit_record(tenant=tenant, actor=actor, action="alert.raised", obj=alert,
                         after=alert.audit_snapshot() | {"detail": detail})
            _notify(alert, again=False)
            return alert
    alert.occurrences += 1
    alert.last_seen_at = max(alert.last_seen_at, now)
    alert.subject, alert.detail, alert.severity = subject, detail, rule.severity
    alert.save(update_fields=["occurrences", "last_seen_at", "subject", "detail", "severity"])
    if alert.status == Alert.Status.OPEN and not KIND_SPECS[kind].stateful:
        _notify(alert, again=True)
    return alert


def _user_of(actor: Actor) -> AbstractBaseUser | None:
    if actor.type != AuditEvent.ActorType.USER or not actor.id:
        return None
    return get_user_model().objects.filter(pk=actor.id).first()


def _clean_note(note: str) -> str:
    note = (note or "").strip()
    if len(note) > MAX_NOTE:
        raise ValidationError({"note": f"Keep the note under {MAX_NOTE} characters."})
    return note


@transaction.atomic
def alert_acknowledge(*, tenant: Tenant, actor: Actor, alert: Alert, note: str = "",
                      user: AbstractBaseUser | None = None) -> Alert:
    """Someone is on it: the alert stays listed until resolved, but repeats stop notifying."""
    alert = Alert.objects.for_tenant(tenant).select_for_update().get(pk=alert.pk)
    note = _clean_note(note)
    if alert.status == Alert.Status.ACKNOWLEDGED:
        who = alert.acknowledged_by.get_username() if alert.acknowledged_by else "someone"
        raise ValidationError(f"{who} already acknowledged this alert "
                              f"({alert.acknowledged_at:%Y-%m-%d %H:%M} UTC).")
    if alert.status == Alert.Status.RESOLVED:
        raise ValidationError("This alert is resolved; there is nothing to acknowledge.")
    alert.status = Alert.Status.ACKNOWLEDGED
    alert.acknowledged_by = user or _user_of(actor)
    alert.acknowledged_at = timezone.now()
    alert.ack_note = note
    alert.save(update_fields=["status", "acknowledged_by", "acknowledged_at", "ack_note"])
    audit_record(tenant=tenant, actor=actor, action="alert.acknowledged", obj=alert,
                 before={"status": Alert.Status.OPEN},
                 after={"status": alert.status, "note": note})
    return alert


@transaction.atomic
def alert_resolve(*, tenant: Tenant, actor: Actor, alert: Alert, note: str = "") -> Alert:
    """Close the alert (by hand, or by the evaluator when its condition cleared); the next
    occurrence raises a new one."""
    alert = Alert.objects.for_tenant(tenant).select_for_update().get(pk=alert.pk)
    note = _clean_note(note)
    if alert.status == Alert.Status.RESOLVED:
        raise ValidationError("This alert is already resolved.")
    before = alert.status
    alert.status = Alert.Status.RESOLVED
    alert.resolved_at = timezone.now()
    if actor.type == AuditEvent.ActorType.SYSTEM:
        alert.resolution = (note or "Resolved.")[:500]
    else:
        alert.resolution = (f"{actor.label}: {note}" if note else
                            f"Resolved by {actor.label}.")[:500]
    alert.save(update_fields=["status", "resolved_at", "resolution"])
    audit_record(tenant=tenant, actor=actor, action="alert.resolved", obj=alert,
                 before={"status": before}, after={"status": alert.status, "note": note})
    return alert


def _resolve_cleared(tenant: Tenant, kind: str, still: set[str]) -> int:
    """Resolve the live alerts of a stateful ``kind`` whose key no longer has the condition."""
    count = 0
    for alert in selectors.live_alerts(tenant, kind):
        if alert.key not in still:
            alert_resolve(tenant=tenant, actor=SYSTEM, alert=alert, note=CLEARED[kind])
            count += 1
    return count


# --- Evaluation -------------------------------------------------------------------------------


def _stateful(tenant: Tenant, rule: AlertRule, conditions: list[selectors.Condition],
              now: datetime) -> Counter:
    """Raise (or bump) one alert per condition, resolve those whose condition cleared. A rule
    switched off raises nothing, but what it raised before still resolves when fixed."""
    counts: Counter = Counter()
    with transaction.atomic():
        if rule.enabled:
            for condition in conditions:
                alert_raise(tenant=tenant, kind=rule.kind, key=condition.key,
                            subject=condition.subject, detail=condition.detail, actor=SYSTEM,
                            now=now)
                counts["raised"] += 1
        counts["resolved"] += _resolve_cleared(tenant, rule.kind,
                                               {c.key for c in conditions})
    return counts


def _denial_bursts(tenant: Tenant, rule: AlertRule, now: datetime) -> Counter:
    """One occurrence per burst: the denials a burst counted do not count again."""
    counts: Counter = Counter()
    if not rule.enabled:
        return counts
    # Gateways upload decision logs in batches, minutes late: look back further than the
    # window so a late batch still forms its burst.
    since = now - rule.window - timedelta(minutes=settings.ALERTS_DECISION_LOG_DELAY_MINUTES)
    for agent in selectors.denial_candidates(tenant, threshold=rule.threshold, since=since):
        latest = selectors.latest_alert(tenant, Kind.DENIAL_BURST, f"agent:{agent}")
        through = (latest.detail or {}).get("through") if latest else None
        burst = selectors.denial_burst(
            tenant, agent, threshold=rule.threshold, window=rule.window, since=since,
            after=datetime.fromisoformat(through) if through else None)
        if burst is None:
            continue
        name = burst.agent or "(no agent)"
        alert_raise(
            tenant=tenant, kind=Kind.DENIAL_BURST, key=f"agent:{burst.agent}",
            subject=f"Agent {name}: {burst.count} calls denied within {rule.window_minutes} min",
            detail={"agent": burst.agent, "denials": burst.count, "threshold": rule.threshold,
                    "window_minutes": rule.window_minutes, "first": burst.first,
                    "last": burst.last,
                    # Full precision (the JSON encoder would cut microseconds off).
                    "through": burst.through.isoformat()},
            actor=SYSTEM, now=now)
        counts["raised"] += 1
    return counts


def alerts_evaluate_tenant(*, tenant: Tenant, now: datetime | None = None) -> Counter:
    """Evaluate the tenant's rules that look at state (gateways, tools, denials, exporters,
    bundle builds);
    break-glass and the audit chain raise theirs where they happen."""
    now = now or timezone.now()
    rules = alert_rules_for(tenant)
    counts: Counter = Counter()
    stale = rules[Kind.GATEWAY_STALE]
    counts += _stateful(tenant, stale, selectors.stale_gateways(
        tenant, window=stale.window, now=now), now)
    counts += _stateful(tenant, rules[Kind.TOOL_DRIFT], selectors.drifted_tools(tenant), now)
    counts += _denial_bursts(tenant, rules[Kind.DENIAL_BURST], now)
    exports = rules[Kind.EXPORT_FAILING]
    counts += _stateful(tenant, exports, selectors.failing_exporters(
        tenant, threshold=exports.threshold), now)
    counts += _stateful(tenant, rules[Kind.BUNDLE_BUILD_FAILING],
                        selectors.failing_builds(tenant), now)
    counts += _stateful(tenant, rules[Kind.REVISION_CONFLICT],
                        selectors.revision_conflicts(tenant, now=now), now)
    return counts


def alerts_evaluate(*, now: datetime | None = None) -> dict[str, int]:
    """Evaluate every enabled rule of every tenant (one tenant's failure is logged and does
    not stop the others): ``{"tenants": n, "raised": n, "resolved": n, "failed": n}``."""
    now = now or timezone.now()
    counts: Counter = Counter()
    for tenant in Tenant.objects.order_by("pk"):
        try:
            counts += alerts_evaluate_tenant(tenant=tenant, now=now)
        except Exception:
            log.exception("alert evaluation failed for tenant %s", tenant.slug)
            counts["failed"] += 1
        counts["tenants"] += 1
    return {key: counts[key] for key in ("tenants", "raised", "resolved", "failed")}


def alerts_audit_chain_checked(*, tenant: Tenant, report: Any) -> Alert | None:
    """After a verification of the tenant's audit chain (``governance.audit.services.
    ChainReport``): raise (or bump) the chain alert when it is broken, resolve it when it
    passes."""
    with transaction.atomic():
        if report.ok:
            _resolve_cleared(tenant, Kind.AUDIT_CHAIN_BROKEN, set())
            return None
        where = f"event #{report.seq}" if report.seq is not None else "its head"
        return alert_raise(
            tenant=tenant, kind=Kind.AUDIT_CHAIN_BROKEN, key="chain",
            subject=f"Audit chain of {tenant.slug} broken at {where}: {report.problem}",
            detail={"chain": report.chain, "problem": report.problem,
                    "event_id": report.event_id, "seq": report.seq, "events": report.events,
                    "report": report.line()},
            actor=Actor.system("audit verification"))
