"""Housekeeping of the core on Celery beat: expired sessions."""

from __future__ import annotations

from celery import shared_task
from django.core.management import call_command


@shared_task(name="governance.tenancy.tasks.clear_expired_sessions")
def clear_expired_sessions() -> None:
    """``manage.py clearsessions``: delete the sessions past their expiry, which the database
    session backend otherwise keeps for ever. Not audited: no person's access changes (an expired
    session already signs nobody in), and it runs every hour."""
    call_command("clearsessions")
