"""Thin Celery tasks: one delivery attempt (retried with backoff); the sweep for lost ones."""

from __future__ import annotations

from celery import shared_task

from notifications import services
from notifications.models import Delivery


@shared_task(name="governance.notifications.tasks.deliver", bind=True, acks_late=True,
             max_retries=None)
def deliver(self, delivery_id: int) -> str:
    """Send one delivery; a failed attempt is recorded and retried after 30 s, 1, 2, 4 … min,
    until NOTIFICATION_MAX_ATTEMPTS. A sent (or gone) delivery is a no-op."""
    delivery = services.delivery_attempt(delivery_id=delivery_id)
    if delivery is None:
        return "gone or busy"
    if delivery.status == Delivery.Status.PENDING:
        raise self.retry(countdown=services.retry_delay(delivery.attempts))
    return delivery.status


@shared_task(name="governance.notifications.tasks.sweep")
def sweep() -> int:
    """Beat: re-enqueue pending deliveries whose task message was lost."""
    ids = services.deliveries_claim_lost()
    for delivery_id in ids:
        deliver.delay(delivery_id)
    return len(ids)
