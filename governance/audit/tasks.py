"""Periodic verification of every audit chain."""

from __future__ import annotations

import logging

from celery import shared_task

from governance.audit.services import audit_verify

logger = logging.getLogger(__name__)


@shared_task
def verify_audit_chains() -> list[str]:
    """Verify all chains; a broken chain is logged as an error (alerting builds on this)."""
    lines = []
    for report in audit_verify():
        line = report.line()
        lines.append(line)
        if report.ok:
            logger.info("audit chain verified: %s", line)
        else:
            logger.error("audit chain broken: %s", line)
    return lines
