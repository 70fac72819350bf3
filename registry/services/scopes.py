"""Writes to tool scopes: create, set their tools, edit, delete."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from governance.audit.services import Actor, audit_record
from governance.tenancy.models import Tenant
from registry.models import DataClass, Risk, Tool, ToolScope
from registry.services.common import check_choices


def _tools_of_tenant(tenant: Tenant, tools: Iterable[Tool]) -> list[Tool]:
    tools = list(tools)
    ids = {t.pk for t in tools}
    found = set(Tool.objects.for_tenant(tenant).filter(pk__in=ids).values_list("pk", flat=True))
    if found != ids:
        raise ValidationError({"tools": "Some tools do not exist in this tenant."})
    return tools


@transaction.atomic
def scope_create(
    *,
    tenant: Tenant,
    actor: Actor,
    name: str,
    description: str = "",
    risk_level: str = Risk.MEDIUM,
    data_classes: Sequence[str] = (),
    tools: Iterable[Tool] = (),
) -> ToolScope:
    """Create a named set of tools."""
    scope = ToolScope(
        tenant=tenant,
        name=name.strip(),
        description=description,
        risk_level=risk_level,
        data_classes=check_choices("data_classes", data_classes, DataClass.values),
    )
    scope.full_clean(exclude=["tenant"], validate_unique=False)
    if ToolScope.objects.for_tenant(tenant).filter(name=scope.name).exists():
        raise ValidationError({"name": f"A scope named {scope.name!r} already exists."})
    members = _tools_of_tenant(tenant, tools)
    scope.save()
    scope.tools.set(members)
    audit_record(
        tenant=tenant,
        actor=actor,
        action="scope.created",
        obj=scope,
        after={
            "name": scope.name,
            "risk_level": risk_level,
            "data_classes": scope.data_classes,
            "tools": sorted(str(t) for t in members),
        },
    )
    return scope


@transaction.atomic
def scope_set_tools(
    *, tenant: Tenant, actor: Actor, scope: ToolScope, tools: Iterable[Tool]
) -> ToolScope:
    """Replace the tools of a scope."""
    scope = ToolScope.objects.for_tenant(tenant).select_for_update().get(pk=scope.pk)
    members = _tools_of_tenant(tenant, tools)
    before = sorted(str(t) for t in scope.tools.select_related("server"))
    scope.tools.set(members)
    audit_record(
        tenant=tenant,
        actor=actor,
        action="scope.tools_changed",
        obj=scope,
        before={"tools": before},
        after={"tools": sorted(str(t) for t in members)},
    )
    return scope


SCOPE_FIELDS = ("name", "description", "risk_level", "data_classes")


@transaction.atomic
def scope_update(*, tenant: Tenant, actor: Actor, scope: ToolScope, **changes: Any) -> ToolScope:
    """Change a scope's name, description, risk level or data classes."""
    scope = ToolScope.objects.for_tenant(tenant).select_for_update().get(pk=scope.pk)
    unknown = set(changes) - set(SCOPE_FIELDS)
    if unknown:
        raise ValidationError(f"Cannot change {', '.join(sorted(unknown))} here.")
    before = scope.audit_snapshot()
    for field, value in changes.items():
        setattr(scope, field, value.strip() if field == "name" else value)
    scope.data_classes = check_choices("data_classes", scope.data_classes, DataClass.values)
    scope.full_clean(exclude=["tenant"], validate_unique=False)
    if ToolScope.objects.for_tenant(tenant).filter(name=scope.name).exclude(pk=scope.pk).exists():
        raise ValidationError({"name": f"A scope named {scope.name!r} already exists."})
    scope.save()
    audit_record(tenant=tenant, actor=actor, action="scope.updated", obj=scope, before=before,
                 after=scope.audit_snapshot())
    return scope


@transaction.atomic
def scope_delete(*, tenant: Tenant, actor: Actor, scope: ToolScope) -> None:
    """Delete a scope that was never granted (granted scopes stay, for the record)."""
    scope = ToolScope.objects.for_tenant(tenant).select_for_update().get(pk=scope.pk)
    if scope.grants.exists():
        raise ValidationError(
            {"scope": "This scope has grants (active or revoked) and is kept for the record; "
                      "revoke its active grants and remove its tools instead."}
        )
    audit_record(tenant=tenant, actor=actor, action="scope.deleted", obj=scope,
                 before=scope.audit_snapshot()
                 | {"tools": sorted(str(t) for t in scope.tools.select_related("server"))})
    scope.delete()
