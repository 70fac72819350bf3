"""Thin Celery task: evaluate every tenant's alert rules (beat, every minute)."""

from __future__ import annotations

from celery import shared_task

from alerts import services


@shared_task(name="governance.alerts.tasks.evaluate", acks_late=True)
def evaluate() -> dict[str, int]:
    """Raise, bump and auto-resolve alerts of every tenant; returns the counts."""
    return services.alerts_evaluate()
