"""The tenant's signing keys as the bundle builder needs them (below ``publish`` and
``services``: the builder takes the active key, or creates the very first one; rotating,
activating and revoking keys are services in ``services.py``)."""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.utils import timezone

from bundles import hot, keys
from bundles.models import SigningKey
from governance.audit.services import Actor, audit_record
from governance.tenancy.models import Tenant

__all__ = ["signing_key_for_build"]


def _new_key(tenant: Tenant, state: str, created_by=None,
             activate_after: datetime | None = None) -> SigningKey:
    jwk, encrypted = keys.generate()
    now = timezone.now()
    return SigningKey.objects.create(
        tenant=tenant, kid=jwk["kid"], state=state, public_jwk=jwk,
        private_key_encrypted=encrypted, created_by=created_by, activate_after=activate_after,
        activated_at=now if state == SigningKey.State.ACTIVE else None,
    )


def _jwks_changed(tenant: Tenant) -> None:
    transaction.on_commit(lambda: hot.safely("jwks refresh", hot.delete,
                                             hot.jwks_key(tenant.slug)))


def signing_key_for_build(*, tenant: Tenant) -> SigningKey:
    """The tenant's active key; the very first one is created active (nothing to pre-announce:
    no gateway has a bundle of this tenant yet). Runs inside the builder's transaction."""
    key = SigningKey.objects.for_tenant(tenant).filter(state=SigningKey.State.ACTIVE).first()
    if key is not None:
        return key
    if SigningKey.objects.for_tenant(tenant).exists():
        raise keys.KeyUnavailable(
            "No active signing key: activate the pending key or rotate to create one."
        )
    key = _new_key(tenant, SigningKey.State.ACTIVE)
    audit_record(tenant=tenant, actor=Actor.system("bundle publisher"),
                 action="bundle_key.created", obj=key, after=key.audit_snapshot())
    _jwks_changed(tenant)
    return key
