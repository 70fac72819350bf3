"""Housekeeping of the core on Celery beat: expired sessions."""

from __future__ import annotations

from celery import shared_task
from django.core.management import call_command

from governance.tenancy import user_sessions


@shared_task(name="governance.tenancy.tasks.clear_expired_sessions")
def clear_expired_sessions() -> None:
    """``manage.py clearsessions``: delete the sessions past their expiry, which the database
    session backend otherwise keeps for ever. Not audited: no person's access changes (an expired
    session already signs nobody in), and it runs every hour. The session registry's rows of
    those sessions go with them."""
    call_command("clearsessions")
    user_sessions.sessions_prune()
