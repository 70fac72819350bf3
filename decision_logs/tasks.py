"""Thin Celery task: the hourly decision-log retention purge (beat entry ``decisions-purge``)."""

from __future__ import annotations

from celery import shared_task

from decision_logs import services


@shared_task(name="governance.decisions.tasks.purge", acks_late=True)
def purge() -> dict[str, int]:
    """Beat: delete decisions past each tenant's retention (audited per tenant). Safe to run
    twice: a second run finds nothing older than the cutoff."""
    return services.decisions_purge_expired()
