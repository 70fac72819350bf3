"""Web forms of the registry pages: they parse input; every rule lives in registry.services."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.db.models import Q

from governance import bounds
from governance.tenancy.models import Tenant
from registry.models import (
    Agent,
    AgentPrincipal,
    DataClass,
    Grant,
    McpFeature,
    McpServer,
    Risk,
    Tool,
    ToolScope,
)
from registry.server_json import MAX_DOCUMENT_BYTES
from registry.simulator import POLICIES

WEEKDAYS = [(0, "Mon"), (1, "Tue"), (2, "Wed"), (3, "Thu"), (4, "Fri"), (5, "Sat"), (6, "Sun")]
HTTP_TRANSPORTS = f"{McpServer.Transport.STREAMABLE_HTTP} {McpServer.Transport.SSE}"


def _members(tenant: Tenant):
    return get_user_model().objects.filter(memberships__tenant=tenant).order_by("username")


class MemberChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj) -> str:
        return obj.get_username()


# --- Servers -----------------------------------------------------------------------------------


class ServerForm(forms.Form):
    """Register or edit a server. URL for HTTP transports, command for stdio (tollgate.js shows
    the one that applies; the service says which one is missing)."""

    name = forms.CharField(max_length=200)
    transport = forms.ChoiceField(choices=McpServer.Transport.choices,
                                  initial=McpServer.Transport.STREAMABLE_HTTP)
    url = forms.CharField(
        label="URL", required=False, max_length=500,
        help_text="The MCP endpoint, e.g. https://payroll.example.com/mcp",
        widget=forms.URLInput(attrs={"data-show-when": f"transport={HTTP_TRANSPORTS}"}),
    )
    command = forms.CharField(
        required=False,
        help_text="One argument per line: the program first, then its arguments.",
        widget=forms.Textarea(attrs={"rows": 4, "data-show-when": "transport=stdio",
                                     "spellcheck": "false"}),
    )
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))
    version = forms.CharField(required=False, max_length=50)
    risk_tier = forms.ChoiceField(choices=Risk.choices, initial=Risk.MEDIUM)
    data_classes = forms.MultipleChoiceField(
        choices=DataClass.choices, required=False, widget=forms.CheckboxSelectMultiple,
        label="Data classes",
    )
    forward = forms.MultipleChoiceField(
        choices=McpFeature.choices, required=False, widget=forms.CheckboxSelectMultiple,
        label="Forwarded besides tools",
        help_text="Gateways refuse the others (every request is logged as a decision). "
                  "Off by default: resources and prompts reach the model without a tool call.",
    )
    owner = MemberChoiceField(queryset=None, required=False, empty_label="— nobody —")

    def __init__(self, *args, tenant: Tenant, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["owner"].queryset = _members(tenant)

    def clean_command(self) -> list[str]:
        lines = self.cleaned_data["command"].splitlines()
        return [line.strip() for line in lines if line.strip()]

    @staticmethod
    def initial_for(server: McpServer) -> dict[str, Any]:
        return {
            "name": server.name, "transport": server.transport, "url": server.url,
            "command": "\n".join(server.command), "description": server.description,
            "version": server.version, "risk_tier": server.risk_tier,
            "data_classes": server.data_classes, "forward": server.forward,
            "owner": server.owner_id,
        }


class ServerImportForm(forms.Form):
    """A server.json, uploaded or pasted; an uploaded file's text is put back into the text box
    when the import fails, so the person can fix it in place."""

    file = forms.FileField(label="server.json file", required=False)
    document = forms.CharField(
        label="…or paste the JSON", required=False,
        widget=forms.Textarea(attrs={"rows": 14, "spellcheck": "false", "class": "code"}),
    )
    risk_tier = forms.ChoiceField(choices=Risk.choices, initial=Risk.MEDIUM)
    data_classes = forms.MultipleChoiceField(
        choices=DataClass.choices, required=False, widget=forms.CheckboxSelectMultiple,
        label="Data classes",
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        upload = data.get("file")
        if upload is not None:
            if upload.size > MAX_DOCUMENT_BYTES:
                raise forms.ValidationError(
                    f"The file is larger than {MAX_DOCUMENT_BYTES // 1024} KiB; "
                    "a server.json is a few KiB.")
            data["raw"] = upload.read()
        elif data.get("document", "").strip():
            data["raw"] = data["document"]
        else:
            raise forms.ValidationError("Choose a server.json file or paste its JSON.")
        return data


# --- Scopes ------------------------------------------------------------------------------------


class ScopeForm(forms.Form):
    """A scope and its tools: approved or pending tools of every server (plus the ones already
    in the scope, whatever their state, so saving never drops a tool silently)."""

    name = forms.CharField(max_length=100, help_text="e.g. payroll:read")
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    risk_level = forms.ChoiceField(choices=Risk.choices, initial=Risk.MEDIUM)
    data_classes = forms.MultipleChoiceField(
        choices=DataClass.choices, required=False, widget=forms.CheckboxSelectMultiple,
        label="Data classes",
    )
    tools = forms.ModelMultipleChoiceField(queryset=None, required=False)

    def __init__(self, *args, tenant: Tenant, scope: ToolScope | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        pickable = Q(status__in=[Tool.Status.APPROVED, Tool.Status.PENDING_REVIEW])
        if scope is not None:
            pickable |= Q(pk__in=scope.tools.values("pk"))
        self.fields["tools"].queryset = (
            Tool.objects.for_tenant(tenant).filter(pickable).select_related("server")
            .order_by("server__name", "name")
        )

    def tool_groups(self) -> list[tuple[McpServer, list[tuple[Tool, bool]]]]:
        """Pickable tools grouped by server, each with whether its box is ticked."""
        chosen = {str(v) for v in (self["tools"].value() or [])}
        groups: dict[int, tuple[McpServer, list[tuple[Tool, bool]]]] = {}
        for tool in self.fields["tools"].queryset:
            groups.setdefault(tool.server_id, (tool.server, []))[1].append(
                (tool, str(tool.pk) in chosen))
        return list(groups.values())

    @staticmethod
    def initial_for(scope: ToolScope) -> dict[str, Any]:
        return {
            "name": scope.name, "description": scope.description,
            "risk_level": scope.risk_level, "data_classes": scope.data_classes,
            "tools": [t.pk for t in scope.tools.all()],
        }


# --- Agents ------------------------------------------------------------------------------------


class AgentForm(forms.Form):
    """An agent; only registry managers choose its owner (a developer owns what they create)."""

    name = forms.CharField(max_length=200)
    purpose = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))
    environment = forms.CharField(required=False, max_length=50,
                                  help_text="e.g. production, staging")
    owner = MemberChoiceField(queryset=None, required=False, empty_label="— nobody —",
                              help_text="The owner may manage the agent and its principals.")

    def __init__(self, *args, tenant: Tenant, may_choose_owner: bool, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if may_choose_owner:
            self.fields["owner"].queryset = _members(tenant)
        else:
            del self.fields["owner"]


class PrincipalForm(forms.Form):
    issuer = forms.CharField(max_length=500, help_text="e.g. https://login.example.com or "
                                                       "spiffe://example.org")
    subject = forms.CharField(max_length=500, help_text="JWT sub, OAuth client id or SPIFFE ID")
    kind = forms.ChoiceField(
        choices=AgentPrincipal.Kind.choices, initial=AgentPrincipal.Kind.SUBJECT,
        required=False, label="Matches",
        help_text="The token's subject, or its OAuth client (azp / client_id): a client id "
                  "also recognises the agent when it acts for a person.")

    def clean_kind(self) -> str:
        return self.cleaned_data["kind"] or AgentPrincipal.Kind.SUBJECT


# --- Grants ------------------------------------------------------------------------------------


def _json_field(label: str, help_text: str) -> forms.CharField:
    return forms.CharField(
        label=label, required=False, help_text=help_text,
        widget=forms.Textarea(attrs={"rows": 5, "spellcheck": "false", "class": "code",
                                     "placeholder": '{"tool": {"argument": {"maximum": 100}}}'}),
    )


class GrantTermsForm(forms.Form):
    """The terms of a grant (what grant_update changes); the service validates their meaning."""

    calls_per_minute = bounds.IntegerField(required=False, label="Calls per minute",
                                           help_text="Empty: no limit.")
    calls_per_day = bounds.IntegerField(required=False, label="Calls per day",
                                        help_text="Empty: no limit.")
    window_start = forms.TimeField(required=False, label="Window start",
                                   widget=forms.TimeInput(attrs={"type": "time"}))
    window_end = forms.TimeField(required=False, label="Window end",
                                 widget=forms.TimeInput(attrs={"type": "time"}))
    window_days = forms.TypedMultipleChoiceField(
        choices=WEEKDAYS, coerce=int, required=False, label="Window days",
        widget=forms.CheckboxSelectMultiple, help_text="None ticked: every day.",
    )
    window_tz = forms.CharField(max_length=64, initial="UTC", label="Window time zone",
                                help_text="IANA name, e.g. Europe/Paris")
    expires_at = forms.DateTimeField(
        required=False, label="Expires at (UTC)", help_text="Empty: never.",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )
    approval_mode = forms.ChoiceField(choices=Grant.ApprovalMode.choices,
                                      initial=Grant.ApprovalMode.NEVER, label="Human approval")
    argument_constraints = _json_field(
        "Argument constraints (JSON)",
        "{tool: {argument: {check: value}}} with enum, const, minimum, maximum, maxLength, "
        "pattern, within (paths inside roots: {\"within\": [\"/srv/files/public\"]}) and url "
        "({\"url\": {\"schemes\": [\"https\"], \"hosts\": [\"api.example.com\"]}}). A "
        "pattern on a path or URL is not a containment check. Empty: none.")
    approval_condition = _json_field(
        "Approval condition (JSON)",
        "Same shape; with approval “when”, a call whose arguments match every check waits "
        "for a person.")
    on_behalf_of_group = forms.CharField(
        required=False, max_length=200, label="Only on behalf of members of (IdP group)",
        help_text="Delegation: the grant covers only calls the agent makes for a person whose "
                  "token lists this group (e.g. hr-staff). Empty: no such requirement.")

    def _clean_json(self, field: str) -> dict:
        text = self.cleaned_data[field].strip()
        if not text:
            return {}
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(
                f"Not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."
            ) from None

    def clean_argument_constraints(self) -> dict:
        return self._clean_json("argument_constraints")

    def clean_approval_condition(self) -> dict:
        return self._clean_json("approval_condition")

    def clean_window_tz(self) -> str:
        return self.cleaned_data["window_tz"].strip()

    def terms(self) -> dict[str, Any]:
        return {name: self.cleaned_data[name] for name in GrantTermsForm.base_fields}

    @staticmethod
    def initial_for(grant: Grant) -> dict[str, Any]:
        def pretty(doc: dict) -> str:
            return json.dumps(doc, indent=2, sort_keys=True) if doc else ""

        return {
            "calls_per_minute": grant.calls_per_minute, "calls_per_day": grant.calls_per_day,
            "window_start": grant.window_start, "window_end": grant.window_end,
            "window_days": grant.window_days, "window_tz": grant.window_tz,
            "expires_at": grant.expires_at, "approval_mode": grant.approval_mode,
            "argument_constraints": pretty(grant.argument_constraints),
            "approval_condition": pretty(grant.approval_condition),
            "on_behalf_of_group": grant.on_behalf_of_group,
        }


class GrantCreateForm(GrantTermsForm):
    """A new grant: which agent gets which scope, then its terms."""

    agent = forms.ModelChoiceField(queryset=None)
    scope = forms.ModelChoiceField(queryset=None)

    field_order = ["agent", "scope"]

    def __init__(self, *args, tenant: Tenant, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["agent"].queryset = Agent.objects.for_tenant(tenant).order_by("name")
        self.fields["scope"].queryset = ToolScope.objects.for_tenant(tenant).order_by("name")


class GrantRevokeForm(forms.Form):
    reason = forms.CharField(required=False, max_length=500,
                             widget=forms.Textarea(attrs={"rows": 2}),
                             help_text="Recorded in the audit trail.")


class GrantFilterForm(forms.Form):
    agent = forms.ModelChoiceField(queryset=None, required=False, empty_label="Any agent")
    scope = forms.ModelChoiceField(queryset=None, required=False, empty_label="Any scope")
    in_force = forms.TypedChoiceField(
        label="In force", required=False,
        choices=[("", "All"), ("yes", "In force"), ("no", "Revoked or expired")],
        coerce=lambda v: {"yes": True, "no": False}.get(v), empty_value=None,
    )

    def __init__(self, *args, tenant: Tenant, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["agent"].queryset = Agent.objects.for_tenant(tenant).order_by("name")
        self.fields["scope"].queryset = ToolScope.objects.for_tenant(tenant).order_by("name")

    def filters(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {"agent": data.get("agent"), "scope": data.get("scope"),
                "in_force": data.get("in_force")}


class ServerFilterForm(forms.Form):
    q = forms.CharField(required=False, max_length=200, label="Search")
    status = forms.ChoiceField(
        required=False, choices=[("", "Any status"), *McpServer.Status.choices]
    )


class SimulatorForm(forms.Form):
    """One simulated call; the simulator checks the names and the arguments (by field)."""

    policy = forms.ChoiceField(
        label="Against", choices=list(POLICIES.items()), initial="draft",
        help_text="The draft is what the next bundle would contain; the bundle is what gateways "
                  "enforce now.")
    agent = forms.CharField(max_length=200, widget=forms.TextInput(attrs={"list": "sim-agents"}))
    server = forms.CharField(max_length=200,
                             widget=forms.TextInput(attrs={"list": "sim-servers"}))
    tool = forms.CharField(max_length=200, widget=forms.TextInput(attrs={"list": "sim-tools"}))
    arguments = forms.CharField(
        required=False, initial="{}", widget=forms.Textarea(attrs={"rows": 5}),
        help_text='A JSON object, e.g. {"path": "/srv/files/public/a.txt"}.')
    at = forms.DateTimeField(
        label="At (UTC)", required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": "1"}),
        help_text="Empty: now. Time windows and grant expiries are checked at this instant.")
