"""Input (…In, …Filter) and output (…Out) serializers of the approvals API.

Input serializers only parse (ids become objects of the URL's tenant); every rule stays in
approvals.services, whose ValidationErrors reach the client as 400 ``invalid`` with the
service's message. Nothing here has a save().
"""

from __future__ import annotations

from rest_framework import serializers

from approvals.models import (
    AccessRequest,
    ApprovalDecision,
    ApprovalPolicy,
    ApprovalStage,
    Escalation,
)
from governance.bounds import IntegerInput
from governance.tenancy.api.serializers import object_id
from governance.tenancy.roles import Role
from registry.api.serializers import GrantOut, TenantObjectField
from registry.models import Agent, Risk, ToolScope


def _username_out(**kwargs) -> serializers.CharField:
    return serializers.CharField(read_only=True, default=None, allow_null=True,
                                 help_text="username", **kwargs)


# --- Access requests ----------------------------------------------------------------------------


class AccessRequestFilter(serializers.Serializer):
    status = serializers.ChoiceField(choices=AccessRequest.Status.choices, required=False)
    agent = object_id(required=False)
    scope = object_id(required=False)
    mine = serializers.BooleanField(required=False, default=False,
                                    help_text="only the requests the caller made")


class AccessRequestIn(serializers.Serializer):
    agent = TenantObjectField(Agent, help_text="an agent the caller owns (admins: any)")
    scope = TenantObjectField(ToolScope)
    duration_minutes = IntegerInput(
        help_text="how long the access lasts from approval (1 minute to 90 days)")
    justification = serializers.CharField(allow_blank=True, help_text="required: why")
    ticket = serializers.CharField(required=False, allow_blank=True, max_length=200)


class DecideIn(serializers.Serializer):
    outcome = serializers.ChoiceField(choices=ApprovalDecision.Outcome.choices)
    reason = serializers.CharField(required=False, allow_blank=True,
                                   help_text="required to deny")


class DecisionOut(serializers.ModelSerializer):
    approver = _username_out(source="approver.username")
    stage = serializers.SerializerMethodField(help_text="1-based")

    class Meta:
        model = ApprovalDecision
        fields = ["stage", "approver", "outcome", "reason", "created_at"]

    def get_stage(self, decision: ApprovalDecision) -> int:
        return decision.stage + 1


class StageOut(serializers.Serializer):
    approvals_required = serializers.IntegerField()
    roles = serializers.ListField(child=serializers.CharField())
    idp_group = serializers.CharField()


class AccessRequestOut(serializers.ModelSerializer):
    agent_name = serializers.CharField(source="agent.name", read_only=True)
    scope_name = serializers.CharField(source="scope.name", read_only=True)
    risk_level = serializers.CharField(source="scope.risk_level", read_only=True)
    requester = _username_out(source="requester.username")
    stages = StageOut(many=True, read_only=True,
                      help_text="the policy's stages as they were when the request was made")
    current_stage = serializers.SerializerMethodField(help_text="1-based")
    decisions = DecisionOut(many=True, read_only=True)

    class Meta:
        model = AccessRequest
        fields = ["id", "agent", "agent_name", "scope", "scope_name", "risk_level", "requester",
                  "justification", "ticket", "duration_minutes", "status", "stages",
                  "current_stage", "decisions", "created_at", "deadline", "decided_at",
                  "deny_reason", "grant"]

    def get_current_stage(self, request: AccessRequest) -> int:
        return request.current_stage + 1


class DecideOut(serializers.Serializer):
    request = AccessRequestOut()
    message = serializers.CharField(help_text="what the decision did, for a person")
    changed = serializers.BooleanField(
        help_text="false: nothing happened (already decided, or no longer pending)")


# --- Policies -----------------------------------------------------------------------------------


class StageIn(serializers.Serializer):
    approvals_required = IntegerInput(min_value=1, default=1)
    roles = serializers.ListField(child=serializers.ChoiceField(choices=Role.choices),
                                  required=False, default=list)
    idp_group = serializers.CharField(required=False, allow_blank=True, default="",
                                      max_length=200)
    object_permission = serializers.BooleanField(
        required=False, default=False,
        help_text="also eligible: holders of registry.approve_access on the scope or its server")


class PolicyIn(serializers.Serializer):
    scope = TenantObjectField(ToolScope, required=False, allow_null=True,
                              help_text="the scope this policy is for; or")
    risk_level = serializers.ChoiceField(choices=Risk.choices, required=False, allow_blank=True,
                                         help_text="the risk level it is for; neither: the "
                                                   "tenant default")
    decision_hours = IntegerInput(required=False, default=24,
                                  help_text="how long a request waits for its decision (1 hour "
                                            "to 30 days)")
    stages = StageIn(many=True, help_text="ordered; every stage must pass")
    alternate_roles = serializers.ListField(
        child=serializers.ChoiceField(choices=Role.choices), required=False, default=list,
        help_text="if undecided at the deadline, these approvers get one more period of the "
                  "same length; then the system denies it")
    alternate_idp_group = serializers.CharField(required=False, allow_blank=True, default="",
                                                max_length=200, help_text="…or this IdP group")


class PolicyUpdateIn(serializers.Serializer):
    decision_hours = IntegerInput(required=False)
    stages = StageIn(many=True, required=False)
    alternate_roles = serializers.ListField(
        child=serializers.ChoiceField(choices=Role.choices), required=False)
    alternate_idp_group = serializers.CharField(required=False, allow_blank=True,
                                                max_length=200)


class PolicyStageOut(serializers.ModelSerializer):
    class Meta:
        model = ApprovalStage
        fields = ["approvals_required", "roles", "idp_group", "object_permission"]


class PolicyOut(serializers.ModelSerializer):
    scope_name = serializers.CharField(source="scope.name", read_only=True, default=None,
                                       allow_null=True)
    stages = PolicyStageOut(many=True, read_only=True)

    class Meta:
        model = ApprovalPolicy
        fields = ["id", "scope", "scope_name", "risk_level", "decision_hours", "stages",
                  "alternate_roles", "alternate_idp_group", "created_at", "updated_at"]


# --- Escalations --------------------------------------------------------------------------------

class EscalationFilter(serializers.Serializer):
    status = serializers.ChoiceField(choices=Escalation.Status.choices, required=False)
    agent = object_id(required=False)
    waiting = serializers.BooleanField(required=False,
                                       help_text="only those waiting for the caller's decision")


class EscalationOut(serializers.ModelSerializer):
    agent_name = serializers.CharField(source="agent.name", read_only=True)
    scope_name = serializers.CharField(source="scope.name", read_only=True)
    risk_level = serializers.CharField(source="scope.risk_level", read_only=True)
    gateway_name = serializers.CharField(source="gateway.name", read_only=True)
    arguments = serializers.JSONField(read_only=True, allow_null=True,
                                      help_text="as the gateway sent them (possibly redacted)")
    arguments_complete = serializers.SerializerMethodField(
        help_text="true when the arguments sent hash to arguments_sha256 (nothing redacted)")
    stages = StageOut(many=True, read_only=True)
    current_stage = serializers.SerializerMethodField(help_text="1-based")
    decisions = DecisionOut(many=True, read_only=True)

    class Meta:
        model = Escalation
        fields = ["id", "agent", "agent_name", "scope", "scope_name", "risk_level", "grant",
                  "gateway", "gateway_name", "call_id", "server", "tool", "arguments",
                  "arguments_sha256", "arguments_complete", "bundle_revision", "reason",
                  "on_behalf_of", "on_behalf_of_groups", "status", "stages", "current_stage",
                  "on_alternates", "decisions",
                  "created_at", "deadline", "decided_at", "deny_reason", "consumed_at"]

    def get_arguments_complete(self, escalation: Escalation) -> bool:
        from approvals.selectors import arguments_complete

        return arguments_complete(escalation)

    def get_current_stage(self, escalation: Escalation) -> int:
        return escalation.current_stage + 1


class EscalationDecideOut(serializers.Serializer):
    escalation = EscalationOut()
    message = serializers.CharField(help_text="what the decision did, for a person")
    changed = serializers.BooleanField(
        help_text="false: nothing happened (already decided, or no longer pending)")


# --- Break-glass --------------------------------------------------------------------------------


class BreakGlassIn(serializers.Serializer):
    agent = TenantObjectField(Agent)
    scope = TenantObjectField(ToolScope)
    minutes = IntegerInput(help_text="how long the grant lasts, from now (1 to "
                                     "BREAK_GLASS_MAX_MINUTES)")
    justification = serializers.CharField(allow_blank=True,
                                          help_text="required: why this cannot wait for an "
                                                    "approval; every admin reads it")


class BreakGlassOut(GrantOut):
    class Meta(GrantOut.Meta):
        fields = [*GrantOut.Meta.fields, "justification"]
