"""Helpers the registry's write services share (choices, members, transitions)."""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.utils import timezone

from governance.audit.services import Actor, audit_record
from governance.tenancy.models import Membership, Tenant


def check_choices(field: str, values: Iterable[str], allowed: Iterable[str]) -> list[str]:
    values = list(values)
    bad = sorted(set(values) - set(allowed))
    if bad:
        raise ValidationError(
            {field: f"Unknown value(s) {', '.join(bad)}; use {', '.join(sorted(allowed))}."}
        )
    return sorted(set(values))


def check_member(tenant: Tenant, user: AbstractBaseUser | None, field: str = "owner") -> None:
    if user is not None and not Membership.objects.for_tenant(tenant).filter(user=user).exists():
        raise ValidationError({field: "The owner must be a member of this tenant."})


def transition(*, tenant: Tenant, actor: Actor, obj, noun: str, status: str, refusal: str):
    """Move ``obj`` to ``status`` if its model's TRANSITIONS allow it (row-locked, audited).

    ``refusal`` is formatted with ``current``, ``wanted`` and ``allowed``.
    """
    obj = type(obj).objects.for_tenant(tenant).select_for_update().get(pk=obj.pk)
    if not obj.can_become(status):
        current = obj.status
        allowed = ", ".join(sorted(obj.TRANSITIONS.get(current, set())))
        raise ValidationError({"status": refusal.format(
            current=current, wanted=status, allowed=allowed or f"nothing ({current} is final)")})
    before = obj.status
    obj.status = status
    fields = ["status"]
    if any(f.name == "updated_at" for f in obj._meta.fields):
        obj.updated_at = timezone.now()
        fields.append("updated_at")
    obj.save(update_fields=fields)
    audit_record(tenant=tenant, actor=actor, action=f"{noun}.{status}", obj=obj,
                 before={"status": before}, after={"status": status})
    return obj
