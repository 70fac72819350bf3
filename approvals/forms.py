"""Web forms of the approvals pages: they parse input; every rule lives in approvals.services."""

from __future__ import annotations

from typing import Any

from django import forms

from approvals.models import AccessRequest, ApprovalDecision, ApprovalPolicy
from governance import bounds
from governance.tenancy.access import TenantContext
from governance.tenancy.models import Tenant
from governance.tenancy.roles import Role
from registry.access import manageable_agents
from registry.models import Agent, Risk, ToolScope

UNITS = {"minutes": 1, "hours": 60, "days": 24 * 60}
POLICY_STAGE_ROWS = 3


class DecideForm(forms.Form):
    """Approve or deny; the service says that a deny needs a reason (kept on the form)."""

    outcome = forms.ChoiceField(choices=ApprovalDecision.Outcome.choices)
    reason = forms.CharField(required=False, max_length=2000,
                             widget=forms.Textarea(attrs={"rows": 2}),
                             help_text="Required to deny; recorded in the audit trail.")


class RequestForm(forms.Form):
    """Ask for a scope for one of the agents the person may request for."""

    agent = forms.ModelChoiceField(queryset=None)
    scope = forms.ModelChoiceField(queryset=None)
    duration = bounds.IntegerField(min_value=1, initial=8, label="For")
    unit = forms.ChoiceField(choices=[(k, k) for k in UNITS], initial="hours", label="Unit")
    justification = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}),
                                    help_text="Why the agent needs this access; approvers "
                                              "read it before deciding.")
    ticket = forms.CharField(required=False, max_length=200, label="Ticket",
                             help_text="Optional, e.g. CHG-1234.")

    def __init__(self, *args, ctx: TenantContext, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The agents the person may act for (the rule the service checks again).
        self.fields["agent"].queryset = manageable_agents(ctx, Agent.objects.for_tenant(
            ctx.tenant).filter(status=Agent.Status.ACTIVE).order_by("name"))
        self.fields["scope"].queryset = ToolScope.objects.for_tenant(ctx.tenant).order_by("name")
        # The service checks "Say why"; the form keeps the text the person typed.
        self.fields["justification"].required = False

    def service_values(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {"agent": data["agent"], "scope": data["scope"],
                "duration_minutes": data["duration"] * UNITS[data["unit"]],
                "justification": data["justification"], "ticket": data["ticket"]}


class RequestFilterForm(forms.Form):
    status = forms.ChoiceField(required=False,
                               choices=[("", "Any status"), *AccessRequest.Status.choices])


class PolicyForm(forms.Form):
    """What a policy applies to, its deadline, and up to three ordered stages (blank rows are
    ignored). The service refuses a stage nobody could pass today."""

    applies_to = forms.ChoiceField(label="Applies to", choices=[
        ("default", "Tenant default"), ("risk", "A risk level"), ("scope", "One scope")])
    risk_level = forms.ChoiceField(required=False, choices=[("", "—"), *Risk.choices],
                                   label="Risk level")
    scope = forms.ModelChoiceField(queryset=None, required=False, empty_label="—")
    decision_hours = forms.IntegerField(min_value=1, max_value=24 * 30, initial=24,
                                        label="Decision deadline (hours)",
                                        help_text="How long a request waits for its decision; "
                                                  "not how long the access lasts.")
    alternate_roles = forms.MultipleChoiceField(
        required=False, choices=Role.choices, label="Alternate approvers: roles",
        widget=forms.CheckboxSelectMultiple,
        help_text="If undecided at the deadline, these approvers get one more period of the "
                  "same length (any one of them decides); then the system denies it.")
    alternate_idp_group = forms.CharField(required=False, max_length=200,
                                          label="…or alternate IdP group")

    def __init__(self, *args, tenant: Tenant, rows: int = POLICY_STAGE_ROWS, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rows = rows
        self.fields["scope"].queryset = ToolScope.objects.for_tenant(tenant).order_by("name")
        for i in range(rows):
            self.fields[f"stage{i}_approvals"] = forms.IntegerField(
                required=False, min_value=1, max_value=50, label="Approvals needed")
            self.fields[f"stage{i}_roles"] = forms.MultipleChoiceField(
                required=False, choices=Role.choices, label="Roles",
                widget=forms.CheckboxSelectMultiple)
            self.fields[f"stage{i}_idp_group"] = forms.CharField(
                required=False, max_length=200, label="…or IdP group")
            self.fields[f"stage{i}_object_permission"] = forms.BooleanField(
                required=False, label="…or holders of the approve permission on the scope or "
                                      "its server")

    def stage_rows(self) -> list[dict[str, Any]]:
        """Bound fields per stage row, for the template."""
        return [{"number": i + 1, "approvals": self[f"stage{i}_approvals"],
                 "roles": self[f"stage{i}_roles"], "idp_group": self[f"stage{i}_idp_group"],
                 "object_permission": self[f"stage{i}_object_permission"]}
                for i in range(self.rows)]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        target = data.get("applies_to")
        if target == "risk" and not data.get("risk_level"):
            self.add_error("risk_level", "Choose the risk level this policy is for.")
        if target == "scope" and not data.get("scope"):
            self.add_error("scope", "Choose the scope this policy is for.")
        stages = []
        for i in range(self.rows):
            roles = data.get(f"stage{i}_roles") or []
            group = (data.get(f"stage{i}_idp_group") or "").strip()
            approvals = data.get(f"stage{i}_approvals")
            holders = bool(data.get(f"stage{i}_object_permission"))
            if not roles and not group and not holders:
                if approvals:
                    self.add_error(f"stage{i}_roles", "Choose who may approve at this stage.")
                continue
            stages.append({"approvals_required": approvals or 1, "roles": list(roles),
                           "idp_group": group, "object_permission": holders})
        data["stages"] = stages
        return data

    def service_values(self) -> dict[str, Any]:
        data = self.cleaned_data
        target = data["applies_to"]
        return {"scope": data["scope"] if target == "scope" else None,
                "risk_level": data["risk_level"] if target == "risk" else "",
                "decision_hours": data["decision_hours"], "stages": data["stages"],
                "alternate_roles": list(data.get("alternate_roles") or []),
                "alternate_idp_group": (data.get("alternate_idp_group") or "").strip()}

    @staticmethod
    def target_of(policy: ApprovalPolicy) -> dict[str, Any]:
        """The form values naming what ``policy`` applies to."""
        return {
            "applies_to": "scope" if policy.scope_id else ("risk" if policy.risk_level
                                                           else "default"),
            "risk_level": policy.risk_level, "scope": policy.scope_id or "",
        }

    @staticmethod
    def initial_for(policy: ApprovalPolicy) -> dict[str, Any]:
        initial: dict[str, Any] = {**PolicyForm.target_of(policy),
                                   "decision_hours": policy.decision_hours,
                                   "alternate_roles": list(policy.alternate_roles),
                                   "alternate_idp_group": policy.alternate_idp_group}
        for stage in policy.stages.order_by("position"):
            i = stage.position
            initial[f"stage{i}_approvals"] = stage.approvals_required
            initial[f"stage{i}_roles"] = list(stage.roles)
            initial[f"stage{i}_idp_group"] = stage.idp_group
            initial[f"stage{i}_object_permission"] = stage.object_permission
        return initial


class ApproverPermissionForm(forms.Form):
    """Give a member the approve permission on one scope or one server (exactly one)."""

    member = forms.ModelChoiceField(queryset=None, empty_label="—")
    scope = forms.ModelChoiceField(queryset=None, required=False, empty_label="—",
                                   help_text="Approves requests for this scope…")
    server = forms.ModelChoiceField(queryset=None, required=False, empty_label="—",
                                    label="…or server",
                                    help_text="…or for every scope with a tool of this server.")

    def __init__(self, *args, tenant: Tenant, **kwargs) -> None:
        from governance.tenancy.models import Membership
        from registry.models import McpServer

        super().__init__(*args, **kwargs)
        self.fields["member"].queryset = (Membership.objects.for_tenant(tenant)
                                          .select_related("user").order_by("user__username"))
        self.fields["member"].label_from_instance = (
            lambda m: f"{m.user.get_username()} ({m.get_role_display()})")
        self.fields["scope"].queryset = ToolScope.objects.for_tenant(tenant).order_by("name")
        self.fields["server"].queryset = McpServer.objects.for_tenant(tenant).order_by("name")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if bool(data.get("scope")) == bool(data.get("server")):
            raise forms.ValidationError("Choose a scope or a server (one of them).")
        data["obj"] = data.get("scope") or data.get("server")
        return data


class BreakGlassForm(forms.Form):
    """An admin's emergency self-grant; the service checks the limits and the justification."""

    agent = forms.ModelChoiceField(queryset=None, empty_label="—")
    scope = forms.ModelChoiceField(queryset=None, empty_label="—")
    minutes = bounds.IntegerField(label="For (minutes)", initial=30)
    justification = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False,
                                    help_text="Why this cannot wait for an approval; every "
                                              "admin reads it.")

    def __init__(self, *args, tenant: Tenant, max_minutes: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["agent"].queryset = Agent.objects.for_tenant(tenant).filter(
            status=Agent.Status.ACTIVE).order_by("name")
        self.fields["scope"].queryset = ToolScope.objects.for_tenant(tenant).order_by("name")
        self.fields["minutes"].help_text = f"At most {max_minutes} minutes."
        self.fields["minutes"].initial = min(30, max_minutes)
