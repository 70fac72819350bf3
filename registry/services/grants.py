"""Writes to grants: create, change their terms, revoke."""

from __future__ import annotations

import zoneinfo
from collections.abc import Collection, Sequence
from datetime import datetime, time
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from gateway.constraints import (
    ConstraintError,
    validate_against_schemas,
    validate_constraints,
)
from governance.audit.services import Actor, audit_record
from governance.tenancy.models import Tenant
from registry.models import Agent, Grant, ToolScope

GRANT_FIELDS = (
    "calls_per_minute",
    "calls_per_day",
    "window_start",
    "window_end",
    "window_days",
    "window_tz",
    "argument_constraints",
    "approval_mode",
    "approval_condition",
    "on_behalf_of_group",
    "expires_at",
    "status",
)


TERM_FIELDS = GRANT_FIELDS[:-1]  # everything but status: what grant_create/grant_update take


def _validate_grant_terms(
    scope: ToolScope, terms: dict[str, Any], *, check_expiry: bool = True,
    changed: Collection[str] | None = None,
) -> None:
    """Check every grant term; each error names its field (and the path inside constraints).

    ``check_expiry=False`` when the expiry is not being set: an unchanged expiry that has
    passed meanwhile is the sweeper's business, not a reason to refuse other edits. Likewise
    constraints are checked against the tools' input schemas only when they are being set
    (``changed``: the fields being set; None: all).
    """
    schemas: dict[str, list[Any]] = {}
    for name, input_schema in scope.tools.values_list("name", "input_schema"):
        schemas.setdefault(name, []).append(input_schema)
    terms["argument_constraints"] = terms.get("argument_constraints") or {}
    terms["approval_condition"] = terms.get("approval_condition") or {}
    try:
        for field in ("argument_constraints", "approval_condition"):
            validate_constraints(terms[field], tools=set(schemas), root=field)
            # Against the pinned input schemas: a constraint on an argument the tool does not
            # have would refuse every call, with no hint to the admin.
            if changed is None or field in changed:
                validate_against_schemas(terms[field], schemas, root=field)
    except ConstraintError as exc:
        field = exc.path.split(".")[0]
        raise ValidationError({field: f"{exc.path}: {exc.message}"}) from None
    mode = terms["approval_mode"]
    if mode not in Grant.ApprovalMode.values:
        raise ValidationError(
            {"approval_mode": f"Use one of {', '.join(Grant.ApprovalMode.values)}."}
        )
    if mode == Grant.ApprovalMode.WHEN and not terms["approval_condition"]:
        raise ValidationError({"approval_condition": "Approval mode 'when' needs a condition."})
    if mode != Grant.ApprovalMode.WHEN and terms["approval_condition"]:
        raise ValidationError({"approval_condition": "A condition is only used with mode 'when'."})
    if (terms["window_start"] is None) != (terms["window_end"] is None):
        raise ValidationError({"window_end": "Give both the start and the end of the window."})
    days = terms["window_days"]
    if not isinstance(days, list | tuple) or any(
        not isinstance(d, int) or isinstance(d, bool) or not 0 <= d <= 6 for d in days
    ):
        raise ValidationError({"window_days": "Days are 0 (Monday) to 6 (Sunday)."})
    terms["window_days"] = sorted(set(days))
    try:
        zoneinfo.ZoneInfo(terms["window_tz"])
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValidationError({"window_tz": f"Unknown time zone {terms['window_tz']!r}."}) from None
    terms["on_behalf_of_group"] = _clean_group(terms.get("on_behalf_of_group"))
    expires_at = terms["expires_at"]
    if check_expiry and expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": "Choose an expiry in the future."})
    for field in ("calls_per_minute", "calls_per_day"):
        value = terms[field]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise ValidationError({field: "Must be at least 1 (leave empty for no limit)."})


def _clean_group(value: Any) -> str:
    """An IdP group name as tokens list it (compared exactly): printable, at most 200
    characters, no surrounding spaces; empty for none."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValidationError({"on_behalf_of_group": "Give the group's name as text."})
    group = value.strip()
    if len(group) > 200:
        raise ValidationError({"on_behalf_of_group": "At most 200 characters."})
    if any(not ch.isprintable() for ch in group):
        raise ValidationError({"on_behalf_of_group": (
            "Control and invisible characters are not allowed in a group name.")})
    return group


def _refuse_duplicate(
    tenant: Tenant, agent: Agent, scope: ToolScope, terms: dict[str, Any],
    *, exclude: int | None = None,
) -> None:
    """An active grant of the same scope to the same agent with the same terms already exists:
    a second one would change nothing the gateways enforce, only blur the audit trail (which
    grant does an access review revoke?). The agent's row is locked first, so two concurrent
    identical requests cannot both pass this check."""
    Agent.objects.for_tenant(tenant).select_for_update().filter(pk=agent.pk).first()
    twins = Grant.objects.for_tenant(tenant).filter(
        agent=agent, scope=scope, status=Grant.Status.ACTIVE).exclude(pk=exclude)
    for twin in twins:
        if all(getattr(twin, field) == terms[field] for field in TERM_FIELDS):
            raise ValidationError({"scope": (
                f"{agent.name} already has an active grant of {scope.name} with exactly these "
                f"terms (grant #{twin.pk}); change that grant instead of adding a copy.")})


@transaction.atomic
def grant_create(
    *,
    tenant: Tenant,
    actor: Actor,
    agent: Agent,
    scope: ToolScope,
    created_by: AbstractBaseUser | None = None,
    calls_per_minute: int | None = None,
    calls_per_day: int | None = None,
    window_start: time | None = None,
    window_end: time | None = None,
    window_days: Sequence[int] = (),
    window_tz: str = "UTC",
    argument_constraints: dict | None = None,
    approval_mode: str = Grant.ApprovalMode.NEVER,
    approval_condition: dict | None = None,
    on_behalf_of_group: str = "",
    expires_at: datetime | None = None,
) -> Grant:
    """Grant a scope to an agent with its limits; every part is validated with a field path."""
    if agent.tenant_id != tenant.pk or scope.tenant_id != tenant.pk:
        raise ValidationError("Agent and scope must belong to this tenant.")
    terms: dict[str, Any] = {
        "calls_per_minute": calls_per_minute,
        "calls_per_day": calls_per_day,
        "window_start": window_start,
        "window_end": window_end,
        "window_days": list(window_days),
        "window_tz": window_tz,
        "argument_constraints": argument_constraints,
        "approval_mode": approval_mode,
        "approval_condition": approval_condition,
        "on_behalf_of_group": on_behalf_of_group,
        "expires_at": expires_at,
    }
    _validate_grant_terms(scope, terms)
    _refuse_duplicate(tenant, agent, scope, terms)
    grant = Grant.objects.create(
        tenant=tenant, agent=agent, scope=scope, created_by=created_by, **terms
    )
    audit_record(
        tenant=tenant,
        actor=actor,
        action="grant.created",
        obj=grant,
        after=grant.audit_snapshot(),
    )
    return grant


@transaction.atomic
def grant_update(*, tenant: Tenant, actor: Actor, grant: Grant, **changes: Any) -> Grant:
    """Change the limits, constraints, approval mode or expiry of an active grant."""
    grant = (Grant.objects.for_tenant(tenant).select_for_update(of=("self",))
             .select_related("scope").get(pk=grant.pk))
    if grant.status != Grant.Status.ACTIVE:
        raise ValidationError({"status": "A revoked grant cannot be changed; create a new one."})
    unknown = set(changes) - set(TERM_FIELDS)
    if unknown:
        raise ValidationError(f"Cannot change {', '.join(sorted(unknown))} here.")
    before = grant.audit_snapshot(TERM_FIELDS)
    terms = {field: getattr(grant, field) for field in TERM_FIELDS} | changes
    _validate_grant_terms(grant.scope, terms, check_expiry="expires_at" in changes,
                          changed=set(changes))
    _refuse_duplicate(tenant, grant.agent, grant.scope, terms, exclude=grant.pk)
    for field, value in terms.items():
        setattr(grant, field, value)
    grant.save()
    audit_record(tenant=tenant, actor=actor, action="grant.updated", obj=grant,
                 before=before, after=grant.audit_snapshot(TERM_FIELDS))
    return grant


@transaction.atomic
def grant_revoke(*, tenant: Tenant, actor: Actor, grant: Grant, reason: str = "") -> Grant:
    """Revoke a grant at once."""
    grant = Grant.objects.for_tenant(tenant).select_for_update().get(pk=grant.pk)
    if grant.status == Grant.Status.REVOKED:
        return grant
    grant.status = Grant.Status.REVOKED
    grant.revoked_at = timezone.now()
    grant.save(update_fields=["status", "revoked_at"])
    audit_record(
        tenant=tenant, actor=actor, action="grant.revoked", obj=grant, after={"reason": reason}
    )
    return grant
