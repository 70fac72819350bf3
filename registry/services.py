"""Every write to the registry: keyword-only, atomic, audited in the same transaction."""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any, Protocol

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from guardian.shortcuts import assign_perm, remove_perm

from gateway.constraints import ConstraintError, validate_constraints
from governance import outbound
from governance.audit.services import Actor, audit_record
from governance.tenancy.models import Membership, Tenant
from registry.models import (
    Agent,
    AgentPrincipal,
    DataClass,
    Grant,
    McpServer,
    Risk,
    Tool,
    ToolScope,
)
from registry.server_json import ServerJsonError, parse_document, read_server_json

AGENT_PERMISSION = "registry.manage_agent"


def _check_choices(field: str, values: Iterable[str], allowed: Iterable[str]) -> list[str]:
    values = list(values)
    bad = sorted(set(values) - set(allowed))
    if bad:
        raise ValidationError(
            {field: f"Unknown value(s) {', '.join(bad)}; use {', '.join(sorted(allowed))}."}
        )
    return sorted(set(values))


def _state(obj, fields: Sequence[str]) -> dict[str, Any]:
    return {f: getattr(obj, f) for f in fields}


# --- Servers ----------------------------------------------------------------------------------

SERVER_FIELDS = (
    "name",
    "description",
    "transport",
    "url",
    "command",
    "version",
    "data_classes",
    "risk_tier",
    "status",
)


def _check_member(tenant: Tenant, user: AbstractBaseUser | None, field: str = "owner") -> None:
    if user is not None and not Membership.objects.for_tenant(tenant).filter(user=user).exists():
        raise ValidationError({field: "The owner must be a member of this tenant."})


def _validate_server(server: McpServer, *, check_url: bool = True) -> None:
    """``check_url``: run the outbound guard on the URL (when it is new or changed)."""
    _check_member(server.tenant, server.owner)
    server.data_classes = _check_choices("data_classes", server.data_classes, DataClass.values)
    if server.transport == McpServer.Transport.STDIO:
        if not server.command or not all(isinstance(a, str) and a for a in server.command):
            raise ValidationError(
                {"command": "A stdio server needs a command: a list of program and arguments."}
            )
    else:
        if not server.url:
            raise ValidationError({"url": f"A {server.transport} server needs a URL."})
        server.command = []
    server.full_clean(exclude=["tenant", "owner"], validate_unique=False)
    if check_url and server.transport != McpServer.Transport.STDIO:
        outbound.validate_url(server.url, field="url", purpose="MCP server")
    clash = McpServer.objects.for_tenant(server.tenant).filter(name=server.name)
    if clash.exclude(pk=server.pk).exists():
        raise ValidationError({"name": f"A server named {server.name!r} already exists."})


@transaction.atomic
def server_create(
    *,
    tenant: Tenant,
    actor: Actor,
    name: str,
    transport: str,
    url: str = "",
    command: list[str] | None = None,
    description: str = "",
    version: str = "",
    owner: AbstractBaseUser | None = None,
    data_classes: Sequence[str] = (),
    risk_tier: str = Risk.MEDIUM,
    registry_name: str = "",
) -> McpServer:
    """Register a server (status pending until an admin activates it)."""
    server = McpServer(
        tenant=tenant,
        name=name.strip(),
        transport=transport,
        url=url.strip(),
        command=list(command or []),
        description=description,
        version=version,
        owner=owner,
        data_classes=list(data_classes),
        risk_tier=risk_tier,
        registry_name=registry_name,
    )
    _validate_server(server)
    server.save()
    audit_record(
        tenant=tenant,
        actor=actor,
        action="server.created",
        obj=server,
        after=_state(server, SERVER_FIELDS),
    )
    return server


@transaction.atomic
def server_update(*, tenant: Tenant, actor: Actor, server: McpServer, **changes: Any) -> McpServer:
    """Change a server's descriptive fields (status changes go through server_transition)."""
    server = McpServer.objects.for_tenant(tenant).select_for_update().get(pk=server.pk)
    allowed = set(SERVER_FIELDS) - {"status"} | {"owner"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValidationError(f"Cannot change {', '.join(sorted(unknown))} here.")
    before = _state(server, SERVER_FIELDS)
    for field, value in changes.items():
        setattr(server, field, value)
    _validate_server(server, check_url=(server.url, server.transport)
                     != (before["url"], before["transport"]))
    server.updated_at = timezone.now()
    server.save()
    audit_record(
        tenant=tenant,
        actor=actor,
        action="server.updated",
        obj=server,
        before=before,
        after=_state(server, SERVER_FIELDS),
    )
    return server


def _transition(*, tenant: Tenant, actor: Actor, obj, noun: str, status: str, refusal: str):
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


@transaction.atomic
def server_transition(*, tenant: Tenant, actor: Actor, server: McpServer, status: str) -> McpServer:
    """Move a server along pending → active → suspended → retired (allowed steps only)."""
    return _transition(tenant=tenant, actor=actor, obj=server, noun="server", status=status,
                       refusal="A {current} server cannot become {wanted}; allowed: {allowed}.")


@transaction.atomic
def server_import(
    *,
    tenant: Tenant,
    actor: Actor,
    document: bytes | str | dict,
    owner: AbstractBaseUser | None = None,
    data_classes: Sequence[str] = (),
    risk_tier: str = Risk.MEDIUM,
) -> McpServer:
    """Register a server from an MCP registry ``server.json`` (errors name the field path)."""
    try:
        doc = document if isinstance(document, dict) else parse_document(document)
        imported = read_server_json(doc)
    except ServerJsonError as exc:
        raise ValidationError(
            {path or "document": [message] for path, message in _group(exc.problems).items()}
        ) from None
    if McpServer.objects.for_tenant(tenant).filter(registry_name=imported.registry_name).exists():
        raise ValidationError(
            {"name": f"{imported.registry_name} is already registered in this tenant."}
        )
    server = server_create(
        tenant=tenant,
        actor=actor,
        name=imported.name,
        transport=imported.transport,
        url=imported.url,
        command=imported.command,
        description=imported.description,
        version=imported.version,
        owner=owner,
        data_classes=data_classes,
        risk_tier=risk_tier,
        registry_name=imported.registry_name,
    )
    audit_record(
        tenant=tenant,
        actor=actor,
        action="server.imported",
        obj=server,
        after={"registry_name": imported.registry_name, "version": imported.version},
    )
    return server


def _group(problems: list[tuple[str, str]]) -> dict[str, str]:
    grouped: dict[str, list[str]] = {}
    for path, message in problems:
        grouped.setdefault(path, []).append(message)
    return {path: " ".join(messages) for path, messages in grouped.items()}


# --- Tools: discovery results and review -------------------------------------------------------


class Definition(Protocol):
    name: str
    title: str
    description: str
    input_schema: dict
    output_schema: dict | None
    annotations: dict


NAME_LIMIT = Tool._meta.get_field("name").max_length
TOOL_DEFINITION_FIELDS = ("title", "description", "input_schema", "output_schema", "annotations")


def definition_dict(definition: Definition) -> dict[str, Any]:
    return {"name": definition.name} | {f: getattr(definition, f) for f in TOOL_DEFINITION_FIELDS}


@dataclass
class SyncSummary:
    """What a discovery changed."""

    new: int = 0
    unchanged: int = 0
    drifted: int = 0
    updated: int = 0
    disappeared: int = 0
    reappeared: int = 0


@transaction.atomic
def tools_record_discovery(
    *,
    tenant: Tenant,
    actor: Actor,
    server: McpServer,
    definitions: Sequence[tuple[Definition, str]],
) -> SyncSummary:
    """Apply one complete ``tools/list`` result (definition, sha256 pairs) — all or nothing.

    New tools arrive pending review. A changed definition of an approved tool is drift: the
    tool is quarantined with the new definition kept beside the pinned one. Tools the server
    no longer lists are marked absent.
    """
    now = timezone.now()
    summary = SyncSummary()
    existing = {
        t.name: t for t in Tool.objects.for_tenant(tenant).filter(server=server).select_for_update()
    }
    seen: set[str] = set()
    too_long = [d.name for d, _ in definitions if len(d.name) > NAME_LIMIT]
    if too_long:
        raise ValidationError(f"The server lists a tool whose name is longer than {NAME_LIMIT} "
                              f"characters ({too_long[0][:60]}…); nothing was recorded.")
    for definition, sha in definitions:
        seen.add(definition.name)
        tool = existing.get(definition.name)
        values = definition_dict(definition)
        if tool is None:
            tool = Tool.objects.create(
                tenant=tenant,
                server=server,
                definition_sha256=sha,
                first_seen_at=now,
                last_seen_at=now,
                **{k: v for k, v in values.items()},
            )
            summary.new += 1
            audit_record(
                tenant=tenant,
                actor=actor,
                action="tool.discovered",
                obj=tool,
                after={"definition": values, "sha256": sha},
            )
            continue
        tool.last_seen_at = now
        if not tool.present:
            tool.present = True
            summary.reappeared += 1
            audit_record(tenant=tenant, actor=actor, action="tool.reappeared", obj=tool)
        if sha == tool.definition_sha256 or sha == tool.drifted_sha256:
            summary.unchanged += 1
        elif tool.status == Tool.Status.PENDING_REVIEW:
            before = {"definition": _pinned(tool), "sha256": tool.definition_sha256}
            for field in TOOL_DEFINITION_FIELDS:
                setattr(tool, field, values[field])
            tool.definition_sha256 = sha
            summary.updated += 1
            audit_record(
                tenant=tenant,
                actor=actor,
                action="tool.definition_updated",
                obj=tool,
                before=before,
                after={"definition": values, "sha256": sha},
            )
        else:
            previous_status = tool.status
            tool.drifted_definition = values
            tool.drifted_sha256 = sha
            if tool.status == Tool.Status.APPROVED:
                tool.status = Tool.Status.QUARANTINED
            summary.drifted += 1
            audit_record(
                tenant=tenant,
                actor=actor,
                action="tool.drift_detected",
                obj=tool,
                before={"status": previous_status, "sha256": tool.definition_sha256},
                after={"status": tool.status, "sha256": sha, "definition": values},
            )
        tool.save()
    for name, tool in existing.items():
        if name not in seen and tool.present:
            tool.present = False
            tool.save(update_fields=["present"])
            summary.disappeared += 1
            audit_record(tenant=tenant, actor=actor, action="tool.disappeared", obj=tool)
    return summary


def _pinned(tool: Tool) -> dict[str, Any]:
    return {"name": tool.name} | {f: getattr(tool, f) for f in TOOL_DEFINITION_FIELDS}


@transaction.atomic
def tool_approve(*, tenant: Tenant, actor: Actor, tool: Tool) -> Tool:
    """Approve a tool; for a quarantined one, pin the new (drifted) definition."""
    tool = Tool.objects.for_tenant(tenant).select_for_update().get(pk=tool.pk)
    if tool.status == Tool.Status.APPROVED:
        raise ValidationError({"status": "This tool is already approved."})
    before = {"status": tool.status, "sha256": tool.definition_sha256}
    if tool.drifted_definition is not None:
        for field in TOOL_DEFINITION_FIELDS:
            setattr(tool, field, tool.drifted_definition[field])
        tool.definition_sha256 = tool.drifted_sha256
        tool.drifted_definition, tool.drifted_sha256 = None, ""
    tool.status = Tool.Status.APPROVED
    tool.save()
    audit_record(
        tenant=tenant,
        actor=actor,
        action="tool.approved",
        obj=tool,
        before=before,
        after={"status": tool.status, "sha256": tool.definition_sha256},
    )
    return tool


@transaction.atomic
def tool_block(*, tenant: Tenant, actor: Actor, tool: Tool) -> Tool:
    """Block a tool: it is out of every bundle until approved again."""
    tool = Tool.objects.for_tenant(tenant).select_for_update().get(pk=tool.pk)
    if tool.status == Tool.Status.BLOCKED:
        raise ValidationError({"status": "This tool is already blocked."})
    before = tool.status
    tool.status = Tool.Status.BLOCKED
    tool.save(update_fields=["status"])
    audit_record(
        tenant=tenant,
        actor=actor,
        action="tool.blocked",
        obj=tool,
        before={"status": before},
        after={"status": tool.status},
    )
    return tool


# --- Scopes -------------------------------------------------------------------------------------


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
        data_classes=_check_choices("data_classes", data_classes, DataClass.values),
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
    before = _state(scope, SCOPE_FIELDS)
    for field, value in changes.items():
        setattr(scope, field, value.strip() if field == "name" else value)
    scope.data_classes = _check_choices("data_classes", scope.data_classes, DataClass.values)
    scope.full_clean(exclude=["tenant"], validate_unique=False)
    if ToolScope.objects.for_tenant(tenant).filter(name=scope.name).exclude(pk=scope.pk).exists():
        raise ValidationError({"name": f"A scope named {scope.name!r} already exists."})
    scope.save()
    audit_record(tenant=tenant, actor=actor, action="scope.updated", obj=scope, before=before,
                 after=_state(scope, SCOPE_FIELDS))
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
                 before=_state(scope, SCOPE_FIELDS)
                 | {"tools": sorted(str(t) for t in scope.tools.select_related("server"))})
    scope.delete()


# --- Agents -------------------------------------------------------------------------------------


@transaction.atomic
def agent_create(
    *,
    tenant: Tenant,
    actor: Actor,
    name: str,
    owner: AbstractBaseUser | None,
    purpose: str = "",
    environment: str = "",
) -> Agent:
    """Register an agent; its owner gets the object permission to manage it."""
    if owner is not None and not Membership.objects.for_tenant(tenant).filter(user=owner).exists():
        raise ValidationError({"owner": "The owner must be a member of this tenant."})
    agent = Agent(
        tenant=tenant, name=name.strip(), owner=owner, purpose=purpose, environment=environment
    )
    agent.full_clean(exclude=["tenant", "owner"], validate_unique=False)
    if Agent.objects.for_tenant(tenant).filter(name=agent.name).exists():
        raise ValidationError({"name": f"An agent named {agent.name!r} already exists."})
    agent.save()
    if owner is not None:
        assign_perm(AGENT_PERMISSION, owner, agent)
    audit_record(
        tenant=tenant,
        actor=actor,
        action="agent.created",
        obj=agent,
        after={
            "name": agent.name,
            "owner": owner.get_username() if owner else None,
            "purpose": purpose,
            "environment": environment,
        },
    )
    return agent


AGENT_FIELDS = ("name", "purpose", "environment")


@transaction.atomic
def agent_update(*, tenant: Tenant, actor: Actor, agent: Agent, **changes: Any) -> Agent:
    """Change an agent's name, purpose, environment or owner (the owner permission moves)."""
    agent = Agent.objects.for_tenant(tenant).select_for_update().get(pk=agent.pk)
    unknown = set(changes) - set(AGENT_FIELDS) - {"owner"}
    if unknown:
        raise ValidationError(f"Cannot change {', '.join(sorted(unknown))} here.")
    before = _state(agent, AGENT_FIELDS) | {"owner": _username(agent.owner)}
    old_owner = agent.owner
    if "owner" in changes:
        owner = changes.pop("owner")
        if owner is not None and not Membership.objects.for_tenant(tenant).filter(
            user=owner
        ).exists():
            raise ValidationError({"owner": "The owner must be a member of this tenant."})
        agent.owner = owner
    for field, value in changes.items():
        setattr(agent, field, value.strip() if field == "name" else value)
    agent.full_clean(exclude=["tenant", "owner"], validate_unique=False)
    if Agent.objects.for_tenant(tenant).filter(name=agent.name).exclude(pk=agent.pk).exists():
        raise ValidationError({"name": f"An agent named {agent.name!r} already exists."})
    agent.save()
    if agent.owner != old_owner:
        if old_owner is not None:
            remove_perm(AGENT_PERMISSION, old_owner, agent)
        if agent.owner is not None:
            assign_perm(AGENT_PERMISSION, agent.owner, agent)
    audit_record(tenant=tenant, actor=actor, action="agent.updated", obj=agent, before=before,
                 after=_state(agent, AGENT_FIELDS) | {"owner": _username(agent.owner)})
    return agent


def _username(user: AbstractBaseUser | None) -> str | None:
    return user.get_username() if user is not None else None


@transaction.atomic
def agent_transition(*, tenant: Tenant, actor: Actor, agent: Agent, status: str) -> Agent:
    """Suspend or reactivate an agent."""
    return _transition(tenant=tenant, actor=actor, obj=agent, noun="agent", status=status,
                       refusal="This agent is {current}; it cannot become {wanted}.")


@transaction.atomic
def agent_principal_add(
    *, tenant: Tenant, actor: Actor, agent: Agent, issuer: str, subject: str
) -> AgentPrincipal:
    """Add an (issuer, subject) pair; it may identify only one agent in the tenant."""
    issuer, subject = issuer.strip(), subject.strip()
    if not issuer or not subject:
        raise ValidationError("Both issuer and subject are required.")
    taken = AgentPrincipal.objects.for_tenant(tenant).filter(issuer=issuer, subject=subject)
    if taken.exists():
        raise ValidationError(
            {
                "subject": f"{subject!r} from {issuer!r} already identifies "
                f"agent {taken.get().agent.name!r}."
            }
        )
    try:
        with transaction.atomic():
            principal = AgentPrincipal.objects.create(
                tenant=tenant, agent=agent, issuer=issuer, subject=subject
            )
    except IntegrityError:  # a concurrent add won the race
        raise ValidationError({"subject": "This principal is already in use."}) from None
    audit_record(
        tenant=tenant,
        actor=actor,
        action="agent.principal_added",
        obj=agent,
        after={"issuer": issuer, "subject": subject},
    )
    return principal


@transaction.atomic
def agent_principal_remove(*, tenant: Tenant, actor: Actor, principal: AgentPrincipal) -> None:
    """Remove a principal: gateways stop recognising the agent by it."""
    agent = principal.agent
    audit_record(
        tenant=tenant,
        actor=actor,
        action="agent.principal_removed",
        obj=agent,
        before={"issuer": principal.issuer, "subject": principal.subject},
    )
    principal.delete()


# --- Grants -------------------------------------------------------------------------------------

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
    "expires_at",
    "status",
)


TERM_FIELDS = GRANT_FIELDS[:-1]  # everything but status: what grant_create/grant_update take


def _validate_grant_terms(
    scope: ToolScope, terms: dict[str, Any], *, check_expiry: bool = True
) -> None:
    """Check every grant term; each error names its field (and the path inside constraints).

    ``check_expiry=False`` when the expiry is not being set: an unchanged expiry that has
    passed meanwhile is the sweeper's business, not a reason to refuse other edits.
    """
    tool_names = set(scope.tools.values_list("name", flat=True))
    terms["argument_constraints"] = terms.get("argument_constraints") or {}
    terms["approval_condition"] = terms.get("approval_condition") or {}
    try:
        validate_constraints(
            terms["argument_constraints"], tools=tool_names, root="argument_constraints"
        )
        validate_constraints(
            terms["approval_condition"], tools=tool_names, root="approval_condition"
        )
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
    expires_at = terms["expires_at"]
    if check_expiry and expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": "Choose an expiry in the future."})
    for field in ("calls_per_minute", "calls_per_day"):
        value = terms[field]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise ValidationError({field: "Must be at least 1 (leave empty for no limit)."})


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
        "expires_at": expires_at,
    }
    _validate_grant_terms(scope, terms)
    grant = Grant.objects.create(
        tenant=tenant, agent=agent, scope=scope, created_by=created_by, **terms
    )
    audit_record(
        tenant=tenant,
        actor=actor,
        action="grant.created",
        obj=grant,
        after={"agent": agent.name, "scope": scope.name} | _state(grant, GRANT_FIELDS),
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
    before = _state(grant, TERM_FIELDS)
    terms = before | changes
    _validate_grant_terms(grant.scope, terms, check_expiry="expires_at" in changes)
    for field, value in terms.items():
        setattr(grant, field, value)
    grant.save()
    audit_record(tenant=tenant, actor=actor, action="grant.updated", obj=grant,
                 before=before, after=_state(grant, TERM_FIELDS))
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
