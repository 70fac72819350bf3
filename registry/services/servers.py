"""Writes to MCP servers: register, edit, move along their lifecycle, import server.json."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from governance import outbound
from governance.audit.services import Actor, audit_record
from governance.tenancy.models import Tenant
from registry.models import DataClass, McpFeature, McpServer, Risk
from registry.server_json import ServerJsonError, parse_document, read_server_json
from registry.services.common import check_choices, check_member, transition

SERVER_FIELDS = (
    "name",
    "description",
    "transport",
    "url",
    "command",
    "version",
    "data_classes",
    "risk_tier",
    "forward",
    "status",
)


def _validate_server(server: McpServer, *, check_url: bool = True) -> None:
    """``check_url``: run the outbound guard on the URL (when it is new or changed)."""
    check_member(server.tenant, server.owner)
    server.data_classes = check_choices("data_classes", server.data_classes, DataClass.values)
    server.forward = sorted(check_choices("forward", server.forward, McpFeature.values))
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
    forward: Sequence[str] = (),
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
        forward=list(forward),
        registry_name=registry_name,
    )
    _validate_server(server)
    server.save()
    audit_record(
        tenant=tenant,
        actor=actor,
        action="server.created",
        obj=server,
        after=server.audit_snapshot(),
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
    before = server.audit_snapshot()
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
        after=server.audit_snapshot(),
    )
    return server


@transaction.atomic
def server_transition(*, tenant: Tenant, actor: Actor, server: McpServer, status: str) -> McpServer:
    """Move a server along pending → active → suspended → retired (allowed steps only)."""
    return transition(tenant=tenant, actor=actor, obj=server, noun="server", status=status,
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
