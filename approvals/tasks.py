"""Thin Celery tasks of the approvals app."""

from __future__ import annotations

from celery import shared_task

from approvals import services


@shared_task
def expire_requests() -> int:
    """Pending access requests past their decision deadline become expired (a denial)."""
    return services.access_requests_expire_due()
