"""Every write of evidence packs: request (audited, queued on commit), the build the worker runs
(progress in short separate transactions, the zip and its SHA-256 stored at the end), failures
and retries, the sweep for lost work, and the audited download."""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from evidence.archive import Built, PackWriter
from evidence.models import EvidencePack
from evidence.sections import Evidence, Period, timestamp
from governance.audit.services import Actor, audit_record
from governance.tasking import enqueue_on_commit
from governance.tenancy.models import Tenant

log = logging.getLogger(__name__)

OPEN = (EvidencePack.Status.QUEUED, EvidencePack.Status.RUNNING)
# A failed attempt is retried after this many seconds times the attempts so far.
RETRY_BASE_SECONDS = 30
# A queued pack no worker picked up for this long had its message lost: the sweep re-sends it.
QUEUE_GRACE_SECONDS = 600


class Superseded(Exception):
    """The attempt lost its pack (swept as stale and started again): stop without writing."""


def today() -> date:
    return timezone.now().date()


def validate_period(period_start: Any, period_end: Any) -> tuple[date, date]:
    """Both dates given, in order, not after today (UTC), at most EVIDENCE_MAX_PERIOD_DAYS."""
    errors: dict[str, str] = {}
    for name, value in (("period_start", period_start), ("period_end", period_end)):
        if not isinstance(value, date) or isinstance(value, datetime):
            errors[name] = "Give a date (YYYY-MM-DD)."
    if errors:
        raise ValidationError(errors)
    now = today()
    if period_end < period_start:
        raise ValidationError({"period_end": f"The period must end on or after its start "
                                             f"({period_start.isoformat()})."})
    if period_end > now:
        raise ValidationError({"period_end": f"The period cannot end after today "
                                             f"({now.isoformat()}, UTC)."})
    days = (period_end - period_start).days + 1
    limit = settings.EVIDENCE_MAX_PERIOD_DAYS
    if days > limit:
        raise ValidationError({"period_start": f"A pack covers at most {limit} days; this period "
                                               f"has {days}. Split it into several packs."})
    return period_start, period_end


@transaction.atomic
def evidence_pack_request(*, tenant: Tenant, actor: Actor, period_start: date, period_end: date,
                          requested_by: AbstractBaseUser | None = None) -> EvidencePack:
    """Queue a pack for the period (UTC days, both included); a worker builds it after the
    commit."""
    period_start, period_end = validate_period(period_start, period_end)
    limit = settings.EVIDENCE_MAX_OPEN_PER_TENANT
    if EvidencePack.objects.for_tenant(tenant).filter(status__in=OPEN).count() >= limit:
        raise ValidationError(f"{limit} evidence packs are already being generated for this "
                              "tenant; wait until one of them is done.")
    now = timezone.now()
    pack = EvidencePack.objects.create(
        tenant=tenant, period_start=period_start, period_end=period_end,
        requested_by=requested_by, requested_by_label=actor.label[:200],
        step="Waiting for a worker", created_at=now, queued_at=now,
    )
    audit_record(tenant=tenant, actor=actor, action="evidence.requested", obj=pack,
                 after=pack.audit_snapshot())
    enqueue_on_commit("evidence.tasks.build_pack", pack.pk)
    return pack


# --- The build (the Celery task's body) --------------------------------------------------------

def _claim(pack_id: int) -> EvidencePack | None:
    """queued → running for a fresh attempt that starts from nothing; None when the pack is
    not queued (done, failed, or another worker has it)."""
    claimed = EvidencePack.objects.filter(pk=pack_id, status=EvidencePack.Status.QUEUED).update(
        status=EvidencePack.Status.RUNNING, attempts=F("attempts") + 1,
        started_at=timezone.now(), finished_at=None, progress=0,
        step="Starting", error="", content=None, size=None, sha256="", files=[], summary={},
    )
    if not claimed:
        return None
    return (EvidencePack.objects.select_related("tenant", "requested_by").defer("content")
            .get(pk=pack_id))


def _progress(pack: EvidencePack, step: str, fraction: float) -> None:
    """Its own short transaction (autocommit), so the page sees it while the build goes on."""
    updated = EvidencePack.objects.filter(
        pk=pack.pk, status=EvidencePack.Status.RUNNING, attempts=pack.attempts,
    ).update(step=step[:200], progress=min(99, int(fraction * 100)))
    if not updated:
        raise Superseded(pack.pk)


def _meta(pack: EvidencePack, period: Period, generated_at: datetime) -> dict[str, Any]:
    return {
        "pack_id": pack.pk,
        "tenant": {"slug": pack.tenant.slug, "name": pack.tenant.name},
        "period": period.as_dict(),
        "generated_at": timestamp(generated_at),
        "generated_by": {
            "requested_by": pack.requested_by_label or (
                pack.requested_by.get_username() if pack.requested_by else ""),
            "requested_at": timestamp(pack.created_at),
            "software": "Tollgate",
        },
    }


def build(pack: EvidencePack) -> Built:
    """Read every section and write the zip (no transaction: each read is its own)."""
    period = Period(pack.tenant, pack.period_start, pack.period_end)
    generated_at = timezone.now()  # the pack's statuses are as of this moment
    evidence = Evidence(period, generated_at=generated_at)
    writer = PackWriter(meta=_meta(pack, period, generated_at), sections=evidence.sections(),
                        progress=lambda step, fraction: _progress(pack, step, fraction),
                        report_rows=settings.EVIDENCE_REPORT_MAX_ROWS)
    return writer.write()


def evidence_pack_build(*, pack_id: int) -> EvidencePack | None:
    """Build a queued pack: running, every section with its progress, then done with the zip
    and its SHA-256 (audited ``evidence.generated``). A failure is retried as a fresh attempt
    (status back to queued) until EVIDENCE_BUILD_ATTEMPTS, then the pack is failed with the
    error. A pack that is not queued is left alone (returned as it is, None when gone)."""
    pack = _claim(pack_id)
    if pack is None:
        return EvidencePack.objects.defer("content").filter(pk=pack_id).first()
    attempt = pack.attempts
    try:
        built = build(pack)
    except Superseded:
        return EvidencePack.objects.defer("content").filter(pk=pack_id).first()
    except Exception as exc:
        log.exception("evidence pack %s: attempt %s failed", pack_id, attempt)
        if isinstance(exc, SoftTimeLimitExceeded):
            error = (f"The build did not finish within {settings.EVIDENCE_TIME_LIMIT} s; try a "
                     "shorter period.")
        else:
            error = f"{type(exc).__name__}: {exc}"
        return _attempt_failed(pack_id=pack_id, attempt=attempt, error=error,
                               final=isinstance(exc, SoftTimeLimitExceeded))
    return _done(pack_id=pack_id, attempt=attempt, built=built)


@transaction.atomic
def _done(*, pack_id: int, attempt: int, built: Built) -> EvidencePack:
    pack = EvidencePack.objects.select_for_update(of=("self",)).select_related("tenant").defer(
        "content").get(pk=pack_id)
    if pack.status != EvidencePack.Status.RUNNING or pack.attempts != attempt:
        return pack  # superseded meanwhile: the newer attempt writes its own result
    pack.content = built.content
    pack.size = len(built.content)
    pack.sha256 = built.sha256
    pack.files = built.files
    pack.summary = built.summary
    pack.status = EvidencePack.Status.DONE
    pack.progress = 100
    pack.step = "Done"
    pack.finished_at = timezone.now()
    pack.save(update_fields=["content", "size", "sha256", "files", "summary", "status",
                             "progress", "step", "finished_at"])
    summary = built.summary
    audit_record(tenant=pack.tenant, actor=Actor.system(f"evidence pack #{pack.pk}"),
                 action="evidence.generated", obj=pack,
                 after=pack.audit_snapshot() | {
                     "sha256": pack.sha256, "size": pack.size, "files": len(pack.files),
                     "requested_by": pack.requested_by_label, "attempts": pack.attempts,
                     "audit_chain": summary.get("audit_chain"),
                     "audit_head_hash": summary.get("audit_head_hash"),
                     "sod_failed": summary.get("sod_failed"),
                 })
    return pack


@transaction.atomic
def _attempt_failed(*, pack_id: int, attempt: int, error: str, final: bool = False,
                    now: datetime | None = None) -> EvidencePack:
    """Record a failed attempt: queued again for a retry, or failed for good (audited)."""
    pack = EvidencePack.objects.select_for_update(of=("self",)).select_related("tenant").defer(
        "content").get(pk=pack_id)
    if pack.status != EvidencePack.Status.RUNNING or pack.attempts != attempt:
        return pack
    limit = settings.EVIDENCE_BUILD_ATTEMPTS
    now = now or timezone.now()
    pack.error = error[:4000]
    pack.progress = 0
    if final or pack.attempts >= limit:
        pack.status = EvidencePack.Status.FAILED
        pack.step = "Failed"
        pack.finished_at = now
        pack.save(update_fields=["status", "step", "error", "progress", "finished_at"])
        audit_record(tenant=pack.tenant, actor=Actor.system(f"evidence pack #{pack.pk}"),
                     action="evidence.failed", obj=pack,
                     after=pack.audit_snapshot() | {"attempts": pack.attempts, "error": pack.error})
        return pack
    pack.status = EvidencePack.Status.QUEUED
    pack.step = (f"Attempt {pack.attempts} of {limit} failed; retrying in "
                 f"{retry_delay(pack.attempts)} s")
    pack.queued_at = now
    pack.save(update_fields=["status", "step", "error", "progress", "queued_at"])
    return pack


def retry_delay(attempts: int) -> int:
    """Seconds before the next attempt after ``attempts`` failed ones."""
    return RETRY_BASE_SECONDS * max(1, attempts)


# --- Lost work ---------------------------------------------------------------------------------

def evidence_packs_fail_stale(*, now: datetime | None = None) -> int:
    """A pack running past the task's hard time limit lost its worker (killed, machine gone):
    that attempt fails, and is retried or failed for good like any other (Celery beat)."""
    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.EVIDENCE_TIME_LIMIT + 60)
    count = 0
    for pack_id, attempt in EvidencePack.objects.filter(
            status=EvidencePack.Status.RUNNING, started_at__lt=stale).values_list(
            "pk", "attempts"):
        _attempt_failed(pack_id=pack_id, attempt=attempt,
                        error="The worker building this pack stopped without finishing "
                              "(killed or lost).", now=now)
        count += 1
    return count


@transaction.atomic
def evidence_packs_claim_lost(*, now: datetime | None = None) -> list[int]:
    """Queued packs whose message was sent over QUEUE_GRACE_SECONDS ago and never picked up
    (broker down at request time, message lost), marked as sent now: the caller sends them
    again. A duplicate message finds the pack already claimed and does nothing."""
    now = now or timezone.now()
    ids = list(EvidencePack.objects.filter(
        status=EvidencePack.Status.QUEUED,
        queued_at__lte=now - timedelta(seconds=QUEUE_GRACE_SECONDS),
    ).order_by("queued_at").values_list("pk", flat=True)[:100])
    EvidencePack.objects.filter(pk__in=ids, status=EvidencePack.Status.QUEUED).update(
        queued_at=now)
    return ids


# --- Download ----------------------------------------------------------------------------------

@transaction.atomic
def evidence_pack_download(*, tenant: Tenant, actor: Actor, pack: EvidencePack) -> bytes:
    """The zip of a done pack; every download is audited (``evidence.downloaded``): who read
    the evidence is evidence too."""
    row = (EvidencePack.objects.for_tenant(tenant).filter(pk=pack.pk)
           .values("status", "content", "sha256", "size").first())
    if row is None or row["status"] != EvidencePack.Status.DONE or row["content"] is None:
        status = row["status"] if row else "gone"
        raise ValidationError(f"This evidence pack is {status}: there is nothing to download "
                              "yet.")
    audit_record(tenant=tenant, actor=actor, action="evidence.downloaded", obj=pack,
                 after=pack.audit_snapshot() | {"sha256": row["sha256"], "size": row["size"]})
    return bytes(row["content"])
