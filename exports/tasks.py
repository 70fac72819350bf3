"""Thin Celery tasks: one exporter run; the beat sweep that queues the due ones."""

from __future__ import annotations

from celery import shared_task

from exports import selectors, services

# A queued run older than this is dropped by the worker: the next sweep queues a fresh one, so
# a backlog of stale messages never piles up behind a slow receiver.
RUN_MESSAGE_EXPIRES = 120


@shared_task(name="governance.exports.tasks.run_exporter", acks_late=True)
def run_exporter(exporter_id: int) -> str:
    """Send what is ready; a failure is recorded and retried by the sweep after the backoff.
    Queues itself again when rows remain beyond one run's budget."""
    result = services.exporter_run(exporter_id=exporter_id)
    if result.more:
        run_exporter.apply_async(args=[exporter_id], expires=RUN_MESSAGE_EXPIRES)
    return f"{result.status} {result.sent}"


@shared_task(name="governance.exports.tasks.sweep", acks_late=True)
def sweep() -> int:
    """Beat (every 30 s): queue a run of every enabled exporter that is due."""
    ids = selectors.due_exporter_ids()
    for exporter_id in ids:
        run_exporter.apply_async(args=[exporter_id], expires=RUN_MESSAGE_EXPIRES)
    return len(ids)
