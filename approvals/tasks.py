"""Thin Celery tasks of the approvals app. Each is idempotent (it acts on what is due under row
locks), so a worker killed mid-run loses nothing: the message is acknowledged late and redone."""

from __future__ import annotations

from celery import shared_task

from approvals.services.break_glass import grants_expire_due
from approvals.services.decisions import deadlines_due, reminders_due


@shared_task(name="approvals.tasks.expire_requests", acks_late=True)
def expire_requests() -> dict[str, int]:
    """Requests and escalations past their deadline go to alternates or expire (a denial by
    the system actor), reminders go out, and grants past their expiry are marked expired."""
    return {"deadlines": deadlines_due(), "reminders": reminders_due(),
            "grants_expired": grants_expire_due()}
