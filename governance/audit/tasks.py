"""Periodic verification of every audit chain."""

from __future__ import annotations

import logging

from celery import shared_task

from governance.alerting import audit_chain_checked
from governance.audit.models import AuditChain
from governance.audit.services import audit_verify_chain

logger = logging.getLogger(__name__)


@shared_task(name="governance.audit.tasks.verify_audit_chains")
def verify_audit_chains() -> list[str]:
    """Verify all chains (as ``audit_verify()`` does); a broken chain is logged as an error and
    raises its tenant's "audit chain broken" alert, which a later passing verification
    resolves (through ``governance.alerting.audit_chain_checked``, which the alerts app
    receives; the platform chain has no tenant to alert: it is logged only)."""
    lines = []
    for chain in AuditChain.objects.select_related("tenant").order_by("key"):
        report = audit_verify_chain(chain)
        line = report.line()
        lines.append(line)
        if report.ok:
            logger.info("audit chain verified: %s", line)
        else:
            logger.error("audit chain broken: %s", line)
        if chain.tenant_id is not None:
            try:
                audit_chain_checked.send(sender=AuditChain, tenant=chain.tenant, report=report)
            except Exception:  # the verification of the other chains goes on
                logger.exception("audit chain alert failed for %s", line)
    return lines
