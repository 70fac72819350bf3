"""Registry web pages for tools: the pinned definition, the drift diff, approve and block."""

from __future__ import annotations

import difflib
import json
from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse

from governance.tenancy.mixins import TenantPageView
from governance.tenancy.roles import Cap
from governance.web import error_text, vary_on_htmx
from registry import selectors
from registry.access import access_tool
from registry.models import Tool
from registry.review_findings import LABELS
from registry.services.tools import tool_approve, tool_block
from registry.views.common import back, pretty_json

DIFF_PARTS = [
    ("title", "Title"),
    ("description", "Description"),
    ("input_schema", "Input schema"),
    ("output_schema", "Output schema"),
    ("annotations", "Annotations"),
]


def _lines(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.splitlines()
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False).splitlines()


def definition_diff(pinned: dict[str, Any], drifted: dict[str, Any]) -> list[dict[str, Any]]:
    """A line diff per part of a tool definition (JSON pretty-printed with sorted keys):
    ``[{"label", "changed", "lines": [(kind, text)]}]``, kind one of hunk, ctx, add, del."""
    parts = []
    for field, label in DIFF_PARTS:
        old, new = _lines(pinned.get(field)), _lines(drifted.get(field))
        lines: list[tuple[str, str]] = []
        # The first two lines of a unified diff are the ---/+++ file headers.
        for line in list(difflib.unified_diff(old, new, lineterm="", n=3))[2:]:
            if line.startswith("@@"):
                lines.append(("hunk", line))
            else:
                kind = {"+": "add", "-": "del"}.get(line[:1], "ctx")
                lines.append((kind, line[1:]))
        parts.append({"label": label, "changed": old != new, "lines": lines})
    return parts


def labelled(findings: list[dict]) -> list[dict]:
    """Findings with the label pages show for their code."""
    return [f | {"label": LABELS.get(f.get("code", ""), f.get("code", ""))} for f in findings]


def confirmed(request: HttpRequest) -> bool:
    return request.POST.get("confirm_findings", "") in ("on", "1", "true", "yes")


class ToolDetailView(TenantPageView):
    """A tool's pinned definition and, when it drifted, what changed."""

    def get(self, request: HttpRequest, tenant_slug: str, tool_id: int) -> HttpResponse:
        tool = access_tool(self.tenancy, tool_id)
        diff = None
        if tool.drifted_definition is not None:
            pinned = {field: getattr(tool, field) for field, _ in DIFF_PARTS}
            diff = definition_diff(pinned, tool.drifted_definition)
        return render(request, "registry/tool.html", {
            "tool": tool,
            "input_schema": pretty_json(tool.input_schema),
            "output_schema": pretty_json(tool.output_schema) if tool.output_schema else "",
            "annotations": pretty_json(tool.annotations) if tool.annotations else "",
            "diff": diff,
            "unchanged": [part["label"] for part in diff or () if not part["changed"]],
            "scopes": selectors.tool_scopes(self.tenant, tool),
            "findings": labelled(tool.findings),
            "drifted_findings": labelled(tool.drifted_findings) if diff is not None else [],
            "findings_to_approve": tool.findings_to_approve,
        })


def _tool_row(request: HttpRequest, tenant, tool: Tool, error: str = "") -> HttpResponse:
    """The table row of a reviewed tool, and the server's "need review" count out of band."""
    tool = selectors.tool_list(tenant).get(pk=tool.pk)
    review_count = selectors.tools_needing_review(tenant, server=tool.server_id).count()
    return vary_on_htmx(render(request, "registry/_tool_row.html", {
        "tool": tool, "row_error": error, "heading_oob": True, "review_count": review_count,
    }))


class ToolApproveView(TenantPageView):
    """Approve a tool (pinning a drifted definition); htmx gets the updated table row."""

    capability = Cap.MANAGE_REGISTRY

    def post(self, request: HttpRequest, tenant_slug: str, tool_id: int) -> HttpResponse:
        tool = access_tool(self.tenancy, tool_id, write=True)
        drifted = tool.drifted_definition is not None
        try:
            tool = tool_approve(tenant=self.tenant, actor=self.actor, tool=tool,
                                expected_sha256=request.POST.get("sha256", ""),
                                confirm_findings=confirmed(request))
        except ValidationError as exc:
            if request.htmx:
                return _tool_row(request, self.tenant, tool, error_text(exc))
            messages.error(request, error_text(exc))
        else:
            if request.htmx:
                return _tool_row(request, self.tenant, tool)
            messages.success(request, f"Approved the new definition of {tool.name}." if drifted
                             else f"Approved {tool.name}.")
        return vary_on_htmx(back(request, reverse("registry:tool", args=[tenant_slug, tool.pk])))


class ToolBlockView(TenantPageView):
    """Block a tool after confirmation (a page, or the browser's dialog with htmx)."""

    capability = Cap.MANAGE_REGISTRY

    def get(self, request: HttpRequest, tenant_slug: str, tool_id: int) -> HttpResponse:
        tool = access_tool(self.tenancy, tool_id, write=True)
        return render(request, "confirm.html", {
            "title": f"Block {tool.name}?",
            "body": f"Calls to {tool.server.name}/{tool.name} are denied by every gateway from "
                    "the next policy bundle on, until someone approves the tool again.",
            "action": "Block tool",
            "hidden": {"next": request.GET.get("next", "")},
            "cancel_url": reverse("registry:tool", args=[tenant_slug, tool.pk]),
        })

    def post(self, request: HttpRequest, tenant_slug: str, tool_id: int) -> HttpResponse:
        tool = access_tool(self.tenancy, tool_id, write=True)
        try:
            tool = tool_block(tenant=self.tenant, actor=self.actor, tool=tool)
        except ValidationError as exc:
            if request.htmx:
                return _tool_row(request, self.tenant, tool, error_text(exc))
            messages.error(request, error_text(exc))
        else:
            if request.htmx:
                return _tool_row(request, self.tenant, tool)
            messages.success(request, f"Blocked {tool.name}.")
        return vary_on_htmx(back(request, reverse("registry:tool", args=[tenant_slug, tool.pk])))
