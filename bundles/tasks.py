"""Thin Celery tasks: build a tenant's bundle; the periodic sweep."""

from __future__ import annotations

import logging

from celery import shared_task

from bundles import publish, services
from governance.tenancy.models import Tenant

log = logging.getLogger(__name__)


@shared_task(name="governance.bundles.tasks.build_bundle", bind=True, max_retries=None,
             acks_late=True)
def build_bundle(self, tenant_id: int, trigger: str = "registry change") -> int | None:
    """Publish the tenant's next bundle if its content changed; retried with backoff."""
    publish.clear_schedule(tenant_id)
    tenant = Tenant.objects.filter(pk=tenant_id).first()
    if tenant is None:
        return None
    try:
        bundle = publish.bundle_publish(tenant=tenant, trigger=trigger)
    except Exception as exc:
        log.exception("bundle build failed for tenant %s", tenant.slug)
        publish.bundle_publish_failed(tenant=tenant, error=f"{type(exc).__name__}: {exc}")
        raise self.retry(exc=exc, countdown=min(300, 2 ** min(self.request.retries, 8))) from exc
    return bundle.revision_number if bundle else None


@shared_task(name="governance.bundles.tasks.sweep")
def sweep() -> dict[str, int]:
    """Activate due keys, enqueue the builds that are due, repair the hot store, record gateway
    contact times."""
    from django.utils import timezone

    activated = services.signing_keys_activate_due()
    due = publish.tenants_due(timezone.now())
    for tenant, reason in due:
        build_bundle.delay(tenant.pk, reason)
    repaired = publish.refresh_hot_store()
    flushed = services.gateway_contacts_flush()
    return {"keys_activated": len(activated), "builds": len(due), "pointers_repaired": repaired,
            "contacts": flushed}
