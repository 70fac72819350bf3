"""Writes to tools: record what discovery found, approve (pin) and block."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from governance.audit.services import Actor, audit_record
from governance.tenancy.models import Tenant
from registry.models import McpServer, Tool
from registry.review_findings import scan_definition


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
    reverted: int = 0  # drifted tools the server serves with their pinned definition again
    flagged: int = 0  # new or changed definitions with review findings


def scan_context(tenant: Tenant, server: McpServer, names: set[str]) -> dict[str, Any]:
    """What the shadowing check compares a definition with: the tenant's tools on OTHER servers
    (a name this server also has — ``names`` — is not another server's) and other servers."""
    others = {
        name: server_name
        for name, server_name in Tool.objects.for_tenant(tenant).exclude(server=server)
        .values_list("name", "server__name")
        if name not in names
    }
    servers = set(McpServer.objects.for_tenant(tenant).exclude(pk=server.pk)
                  .values_list("name", flat=True))
    return {"other_tools": others, "other_servers": servers}


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
    context = scan_context(tenant, server, set(existing) | {d.name for d, _ in definitions})
    for definition, sha in definitions:
        seen.add(definition.name)
        tool = existing.get(definition.name)
        values = definition_dict(definition)
        if tool is None:
            findings = scan_definition(values, **context)
            tool = Tool.objects.create(
                tenant=tenant,
                server=server,
                definition_sha256=sha,
                first_seen_at=now,
                last_seen_at=now,
                findings=findings,
                **{k: v for k, v in values.items()},
            )
            summary.new += 1
            summary.flagged += bool(findings)
            audit_record(
                tenant=tenant,
                actor=actor,
                action="tool.discovered",
                obj=tool,
                after={"definition": values, "sha256": sha, "findings": findings},
            )
            continue
        tool.last_seen_at = now
        if not tool.present:
            tool.present = True
            summary.reappeared += 1
            audit_record(tenant=tenant, actor=actor, action="tool.reappeared", obj=tool)
        if sha == tool.definition_sha256 and tool.drifted_definition is not None:
            # The server went back to the pinned definition: the drift is over. Leaving the
            # drifted definition waiting would let a reviewer pin what is no longer served.
            before = {"status": tool.status, "drifted_sha256": tool.drifted_sha256}
            tool.drifted_definition, tool.drifted_sha256 = None, ""
            tool.drifted_findings = []
            if tool.status == Tool.Status.QUARANTINED:
                tool.status = Tool.Status.APPROVED
            summary.reverted += 1
            audit_record(
                tenant=tenant,
                actor=actor,
                action="tool.drift_cleared",
                obj=tool,
                before=before,
                after={"status": tool.status, "sha256": tool.definition_sha256},
            )
        elif sha == tool.definition_sha256 or sha == tool.drifted_sha256:
            summary.unchanged += 1
        elif tool.status == Tool.Status.PENDING_REVIEW:
            before = {"definition": tool.audit_snapshot(), "sha256": tool.definition_sha256,
                      "findings": tool.findings}
            for field in TOOL_DEFINITION_FIELDS:
                setattr(tool, field, values[field])
            tool.definition_sha256 = sha
            tool.findings = scan_definition(values, **context)
            summary.updated += 1
            summary.flagged += bool(tool.findings)
            audit_record(
                tenant=tenant,
                actor=actor,
                action="tool.definition_updated",
                obj=tool,
                before=before,
                after={"definition": values, "sha256": sha, "findings": tool.findings},
            )
        else:
            previous_status = tool.status
            tool.drifted_definition = values
            tool.drifted_sha256 = sha
            tool.drifted_findings = scan_definition(values, **context)
            if tool.status == Tool.Status.APPROVED:
                tool.status = Tool.Status.QUARANTINED
            summary.drifted += 1
            summary.flagged += bool(tool.drifted_findings)
            audit_record(
                tenant=tenant,
                actor=actor,
                action="tool.drift_detected",
                obj=tool,
                before={"status": previous_status, "sha256": tool.definition_sha256},
                after={"status": tool.status, "sha256": sha, "definition": values,
                       "findings": tool.drifted_findings},
            )
        tool.save()
    for name, tool in existing.items():
        if name not in seen and tool.present:
            tool.present = False
            tool.save(update_fields=["present"])
            summary.disappeared += 1
            audit_record(tenant=tenant, actor=actor, action="tool.disappeared", obj=tool)
    return summary


@transaction.atomic
def tool_approve(
    *, tenant: Tenant, actor: Actor, tool: Tool, expected_sha256: str = "",
    confirm_findings: bool = False,
) -> Tool:
    """Approve a tool; for a quarantined one, pin the new (drifted) definition.

    ``expected_sha256`` is the hash of the definition the reviewer was shown (every approve
    form sends it): when the server's definition changed since, nothing is approved. A
    definition with review findings needs ``confirm_findings`` (the reviewer saw them and
    approves anyway); the confirmed findings are in the audit event.
    """
    tool = Tool.objects.for_tenant(tenant).select_for_update().get(pk=tool.pk)
    if tool.status == Tool.Status.APPROVED:
        raise ValidationError({"status": "This tool is already approved."})
    drifted = tool.drifted_definition is not None
    to_pin = tool.drifted_sha256 if drifted else tool.definition_sha256
    if expected_sha256 and expected_sha256 != to_pin:
        raise ValidationError({"sha256": (
            f"The definition of {tool.name} changed since it was shown to you (shown "
            f"{expected_sha256[:12]}, last seen {to_pin[:12]}); nothing was approved. "
            "Review the current definition and approve again.")})
    if drifted and not tool.present:
        raise ValidationError({"status": (
            f"The server no longer lists {tool.name}, so its new definition is not one it "
            "serves; nothing was approved. Sync the server again.")})
    findings = tool.findings_to_approve
    if findings and not confirm_findings:
        raise ValidationError({"confirm_findings": (
            f"The definition of {tool.name} has {len(findings)} review finding"
            f"{'s' if len(findings) > 1 else ''} ({_codes(findings)}): read "
            "them on the tool's page and confirm that you approve it anyway.")})
    before = {"status": tool.status, "sha256": tool.definition_sha256}
    if tool.drifted_definition is not None:
        for field in TOOL_DEFINITION_FIELDS:
            setattr(tool, field, tool.drifted_definition[field])
        tool.definition_sha256 = tool.drifted_sha256
        tool.findings = tool.drifted_findings
        tool.drifted_definition, tool.drifted_sha256, tool.drifted_findings = None, "", []
    tool.status = Tool.Status.APPROVED
    tool.save()
    after: dict[str, Any] = {"status": tool.status, "sha256": tool.definition_sha256}
    if findings:
        after["findings_confirmed"] = [{"code": f["code"], "where": f["where"]}
                                       for f in findings]
    audit_record(
        tenant=tenant,
        actor=actor,
        action="tool.approved",
        obj=tool,
        before=before,
        after=after,
    )
    return tool


def _codes(findings: list[dict]) -> str:
    return ", ".join(sorted({f["code"].replace("_", " ") for f in findings}))


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
