"""Thin Celery tasks: build one evidence pack (retried as a fresh attempt, a bounded number of
times); the sweep for lost work."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from evidence import services
from evidence.models import EvidencePack


@shared_task(name="governance.evidence.tasks.build_pack", bind=True, acks_late=True,
             max_retries=None, soft_time_limit=settings.EVIDENCE_TIME_LIMIT - 30,
             time_limit=settings.EVIDENCE_TIME_LIMIT)
def build_pack(self, pack_id: int) -> str:
    """Build one queued pack. A failed attempt leaves it queued until EVIDENCE_BUILD_ATTEMPTS
    (then failed), and is retried here after 30 s, 60 s, …; a redelivered message finds the pack
    claimed or finished and does nothing."""
    pack = services.evidence_pack_build(pack_id=pack_id)
    if pack is None:
        return "gone"
    if pack.status == EvidencePack.Status.QUEUED and pack.attempts:
        raise self.retry(countdown=services.retry_delay(pack.attempts))
    return pack.status


@shared_task(name="governance.evidence.tasks.sweep")
def sweep() -> int:
    """Beat: fail attempts whose worker died, and send again packs whose message was lost."""
    services.evidence_packs_fail_stale()
    ids = services.evidence_packs_claim_lost()
    for pack_id in ids:
        build_pack.delay(pack_id)
    return len(ids)
