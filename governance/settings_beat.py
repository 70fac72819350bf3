"""The Celery beat schedule: every periodic task of Tollgate and how often beat queues it.

Plain data (no Django), read by governance/settings.py into ``CELERY_BEAT_SCHEDULE``; the one
interval an operator sets (``AUDIT_VERIFY_MINUTES``) is read there and passed in.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any


def beat_schedule(*, audit_verify: timedelta) -> dict[str, dict[str, Any]]:
    """Beat's entries: name → the task's dotted path and its interval."""
    return {
        "verify-audit-chains": {
            "task": "governance.audit.tasks.verify_audit_chains",
            "schedule": audit_verify,
        },
        # Looks every minute for servers whose tenant re-sync interval has passed.
        "resync-servers": {
            "task": "registry.tasks.resync_servers",
            "schedule": timedelta(minutes=1),
        },
        # Builds bundles whose content is due (missed edits, expiring grants, re-issue before half
        # the lifetime), activates rotated-in keys that are due, records gateway contact times.
        "bundles-sweep": {
            "task": "governance.bundles.tasks.sweep",
            "schedule": timedelta(seconds=30),
        },
        # Requests and escalations past their deadline go to alternates or expire (system actor);
        # reminders go out; expired grants are marked so (and published away).
        "expire-access-requests": {
            "task": "approvals.tasks.expire_requests",
            "schedule": timedelta(minutes=1),
        },
        # Re-sends notification deliveries whose Celery message was lost (broker down, worker gone).
        "notifications-sweep": {
            "task": "governance.notifications.tasks.sweep",
            "schedule": timedelta(minutes=1),
        },
        # Queues a run of every enabled SIEM exporter that is due (not backing off after a failure).
        "exports-sweep": {
            "task": "governance.exports.tasks.sweep",
            "schedule": timedelta(seconds=30),
        },
        # Deletes decision logs (and their hourly roll-up) older than each tenant's retention.
        "decisions-purge": {
            "task": "governance.decisions.tasks.purge",
            "schedule": timedelta(hours=1),
        },
        # Evaluates every tenant's alert rules (stale gateways, tool drift, denial bursts, failing
        # exporters): raises, bumps and auto-resolves alerts.
        "alerts-evaluate": {
            "task": "governance.alerts.tasks.evaluate",
            "schedule": timedelta(minutes=1),
        },
        # Deletes expired sessions (`manage.py clearsessions`): the database keeps them otherwise.
        "clear-expired-sessions": {
            "task": "governance.tenancy.tasks.clear_expired_sessions",
            "schedule": timedelta(hours=1),
        },
        # Evidence packs: fails attempts whose worker died, re-sends packs whose message was lost.
        "evidence-sweep": {
            "task": "governance.evidence.tasks.sweep",
            "schedule": timedelta(minutes=5),
        },
        # Shadow replays: fails runs whose worker died (past the task's hard time limit).
        "replay-sweep": {
            "task": "decision_logs.tasks.replay_sweep",
            "schedule": timedelta(minutes=5),
        },
    }
