"""Thin Celery tasks: the hourly decision-log retention purge (beat entry ``decisions-purge``),
shadow replays and their sweep (``replay-sweep``)."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from decision_logs import replay as replay_service
from decision_logs import services


@shared_task(name="governance.decisions.tasks.purge", acks_late=True)
def purge() -> dict[str, int]:
    """Beat: delete decisions past each tenant's retention (audited per tenant). Safe to run
    twice: a second run finds nothing older than the cutoff."""
    return services.decisions_purge_expired()


@shared_task(name="decision_logs.tasks.replay", acks_late=True,
             soft_time_limit=settings.REPLAY_TIME_LIMIT - 30,
             time_limit=settings.REPLAY_TIME_LIMIT)
def replay(run_id: int) -> str:
    """Run one queued shadow replay; a redelivered message finds it claimed or finished."""
    run = replay_service.replay_run_execute(run_id=run_id)
    return run.status if run is not None else "gone"


@shared_task(name="decision_logs.tasks.replay_sweep")
def replay_sweep() -> int:
    """Beat: fail replays whose worker died."""
    return replay_service.replay_runs_fail_stale()
