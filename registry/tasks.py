"""Celery entry points of the registry: thin wrappers that load ids and call one service."""

from __future__ import annotations

import logging

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from governance.audit.services import Actor
from registry import sync
from registry.models import ServerSync

logger = logging.getLogger(__name__)


@shared_task(
    name="registry.tasks.sync_server",
    acks_late=True,
    soft_time_limit=settings.REGISTRY_SYNC_SOFT_TIME_LIMIT,
    time_limit=settings.REGISTRY_SYNC_TIME_LIMIT,
)
def sync_server(run_id: int) -> str:
    """Run one queued tool sync (a redelivered message finds it claimed and does nothing)."""
    run = sync.server_sync_claim(run_id)
    if run is None:
        return "already claimed"
    try:
        run = sync.server_sync_execute(run)
    except SoftTimeLimitExceeded:
        run = sync.server_sync_fail(
            run=run,
            code="time_limit",
            message=f"The sync did not finish within {settings.REGISTRY_SYNC_SOFT_TIME_LIMIT} s "
            "on the worker; nothing was recorded.",
        )
    return run.status


@shared_task(name="registry.tasks.resync_servers")
def resync_servers() -> int:
    """Beat: fail stuck runs, then queue a sync for every active server that is due (fan-out)."""
    stale = sync.syncs_fail_stale()
    if stale:
        logger.warning("marked %d stuck tool syncs as failed", stale)
    queued = 0
    for server in sync.servers_due_for_resync():
        try:
            _, created = sync.server_sync_request(
                tenant=server.tenant,
                actor=Actor.system("scheduled re-sync"),
                server=server,
                trigger=ServerSync.Trigger.SCHEDULED,
            )
        except Exception:  # one bad server must not stop the others
            logger.exception("could not queue the scheduled sync of server %s", server.pk)
            continue
        queued += int(created)
    return queued
