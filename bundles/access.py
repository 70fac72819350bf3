"""Single bundles-app objects for a caller: 404 outside the tenant, 403 without the right to
change them (gateways, their tokens and the signing keys are managed by admins)."""

from __future__ import annotations

from django.core.exceptions import ValidationError

from bundles import selectors
from bundles.models import Bundle, Gateway, GatewayToken, SigningKey
from governance.tenancy.access import TenantContext, access_object
from governance.tenancy.roles import Cap


def _object(ctx: TenantContext, model, pk, *, write: bool):
    obj = access_object(ctx.tenant, model, pk)
    if write:
        ctx.require(Cap.MANAGE_GATEWAYS)
    return obj


def access_gateway(ctx: TenantContext, pk, *, write: bool = False) -> Gateway:
    return _object(ctx, Gateway, pk, write=write)


def access_gateway_token(ctx: TenantContext, pk, *, write: bool = False) -> GatewayToken:
    return _object(ctx, GatewayToken, pk, write=write)


def access_signing_key(ctx: TenantContext, pk, *, write: bool = False) -> SigningKey:
    return _object(ctx, SigningKey, pk, write=write)


def access_bundle(ctx: TenantContext, pk) -> Bundle:
    return access_object(ctx.tenant, Bundle, pk)


def bundle_by_revision(ctx: TenantContext, revision_number) -> Bundle | None:
    """The tenant's bundle of that revision number, or None."""
    try:
        number = int(revision_number)
    except (TypeError, ValueError):
        return None
    return selectors.bundles(ctx.tenant).filter(revision_number=number).first()


def compare_pair(ctx: TenantContext, wanted_from: int | None,
                 wanted_to: int | None) -> tuple[Bundle | None, Bundle]:
    """The two bundles to compare: ``to`` defaults to the newest, ``from`` to the revision
    before ``to`` (None for the first). ValidationError names the revision that is missing."""
    newest = selectors.bundles(ctx.tenant).first()
    if newest is None:
        raise ValidationError({"to": "No bundle has been published yet: nothing to compare."})
    errors = {}
    to_bundle = newest if wanted_to is None else bundle_by_revision(ctx, wanted_to)
    if to_bundle is None:
        errors["to"] = f"There is no revision {wanted_to}."
    from_bundle = None
    if wanted_from is not None:
        from_bundle = bundle_by_revision(ctx, wanted_from)
        if from_bundle is None:
            errors["from"] = f"There is no revision {wanted_from}."
    elif to_bundle is not None:
        from_bundle = selectors.bundle_previous(ctx.tenant, to_bundle)
    if from_bundle is not None and to_bundle is not None and from_bundle.pk == to_bundle.pk:
        errors["to"] = "Choose two different revisions."
    if errors:
        raise ValidationError(errors)
    return from_bundle, to_bundle
