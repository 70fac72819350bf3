"""Input (…In, …Filter) and output (…Out) serializers of the registry API.

Input serializers only parse: ids and usernames become objects *of the URL's tenant* (anything
else is a 400 naming the field), and every rule of the domain stays in registry.services, whose
ValidationErrors reach the client in the same JSON shape. Nothing here has a save().
"""

from __future__ import annotations

from django.db.models import Model
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from governance.bounds import IntegerInput
from governance.tenancy.api.serializers import OBJECT_ID, object_id, username_out
from governance.tenancy.models import Membership
from registry.models import (
    Agent,
    AgentPrincipal,
    DataClass,
    GatewayBinding,
    Grant,
    McpFeature,
    McpServer,
    Risk,
    ServerSync,
    Tool,
    ToolScope,
)
from registry.review_findings import LABELS

DATA_CLASSES_HELP = "any of: " + ", ".join(DataClass.values)

# --- Fields that resolve references inside the tenant (context["tenant"]) ----------------------


class TenantObjectField(serializers.IntegerField):
    """The id of one object of the tenant → that object (400 for another tenant's id)."""

    default_error_messages = {"does_not_exist": "No {noun} with id {pk} in this tenant."}

    def __init__(self, model: type[Model], **kwargs) -> None:
        self.model = model
        super().__init__(**kwargs)
        # Documented bounds only: out of them is "no such object" (below), not a range message.
        self.min_value, self.max_value = OBJECT_ID["min_value"], OBJECT_ID["max_value"]

    def to_internal_value(self, data):
        pk = super().to_internal_value(data)
        # Out of the id range is no such object (the database would overflow, a 500).
        if not OBJECT_ID["min_value"] <= pk <= OBJECT_ID["max_value"]:
            self.fail("does_not_exist", noun=self.model._meta.verbose_name, pk=pk)
        try:
            return self.model.objects.for_tenant(self.context["tenant"]).get(pk=pk)
        except self.model.DoesNotExist:
            self.fail("does_not_exist", noun=self.model._meta.verbose_name, pk=pk)


class TenantObjectsField(serializers.ListField):
    """A list of ids of one model → the objects, in one query (400 names the unknown ids)."""

    default_error_messages = {"does_not_exist": "No {noun} with id {pks} in this tenant."}

    def __init__(self, model: type[Model], **kwargs) -> None:
        self.model = model
        super().__init__(child=object_id(), **kwargs)

    def to_internal_value(self, data):
        pks = list(dict.fromkeys(super().to_internal_value(data)))
        found = self.model.objects.for_tenant(self.context["tenant"]).in_bulk(pks)
        missing = [pk for pk in pks if pk not in found]
        if missing:
            self.fail("does_not_exist", noun=self.model._meta.verbose_name,
                      pks=", ".join(map(str, missing)))
        return [found[pk] for pk in pks]


class MemberField(serializers.CharField):
    """The username of a member of the tenant → that user."""

    default_error_messages = {"not_a_member": "{username!r} is not a member of this tenant."}

    def to_internal_value(self, data):
        username = super().to_internal_value(data)
        membership = (
            Membership.objects.for_tenant(self.context["tenant"])
            .select_related("user")
            .filter(user__username=username)
            .first()
        )
        if membership is None:
            self.fail("not_a_member", username=username)
        return membership.user


@extend_schema_field(OpenApiTypes.OBJECT)
class ConstraintsField(serializers.JSONField):
    """Per-tool argument checks, ``{tool: {argument: {keyword: value}}}`` (checked by the
    services, which name the path of a bad part)."""



# --- Servers and their sync runs ----------------------------------------------------------------


class ServerFilter(serializers.Serializer):
    status = serializers.ChoiceField(choices=McpServer.Status.choices, required=False)
    transport = serializers.ChoiceField(choices=McpServer.Transport.choices, required=False)
    search = serializers.CharField(required=False, allow_blank=True,
                                   help_text="in name, description or URL")


class ServerIn(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    transport = serializers.ChoiceField(choices=McpServer.Transport.choices)
    url = serializers.CharField(max_length=500, required=False, allow_blank=True,
                                help_text="required for streamable-http and sse")
    command = serializers.ListField(child=serializers.CharField(), required=False,
                                    help_text="argv of a stdio server: program and arguments")
    description = serializers.CharField(required=False, allow_blank=True)
    version = serializers.CharField(max_length=50, required=False, allow_blank=True)
    owner = MemberField(required=False, allow_null=True,
                        help_text="username of a member; default: the caller")
    data_classes = serializers.ListField(child=serializers.CharField(), required=False,
                                         help_text=DATA_CLASSES_HELP)
    risk_tier = serializers.ChoiceField(choices=Risk.choices, required=False)
    forward = serializers.MultipleChoiceField(
        choices=McpFeature.choices, required=False,
        help_text="what gateways forward besides tools: resources, prompts, completion "
                  "(default none)")

    def validate_forward(self, value: set[str]) -> list[str]:
        return sorted(value)


class ServerTransitionIn(serializers.Serializer):
    status = serializers.ChoiceField(choices=McpServer.Status.choices)


class ServerImportUploadIn(serializers.Serializer):
    file = serializers.FileField(help_text="the server.json document (at most 256 KiB)",
                                 allow_empty_file=True)  # an empty one is "Not valid JSON"


class SyncBriefOut(serializers.ModelSerializer):
    class Meta:
        model = ServerSync
        fields = ["id", "status", "progress", "tools_listed", "error_code", "error_message",
                  "created_at", "started_at", "finished_at"]


class ServerGatewayOut(serializers.ModelSerializer):
    id = serializers.IntegerField(source="gateway_id", read_only=True)
    name = serializers.CharField(source="gateway.name", read_only=True)
    binding = serializers.IntegerField(source="pk", read_only=True)

    class Meta:
        model = GatewayBinding
        fields = ["id", "name", "binding", "requested_at", "last_reported_at"]


class ServerOut(serializers.ModelSerializer):
    owner = username_out(source="owner.username")
    gateways = ServerGatewayOut(
        source="bindings", many=True, read_only=True,
        help_text="the gateways that front the server and report its tools (stdio servers are "
                  "discovered only this way), with when each last reported")
    tool_count = serializers.IntegerField(read_only=True, help_text="tools the server lists now")
    review_count = serializers.IntegerField(
        read_only=True, help_text="tools pending review or quarantined"
    )
    latest_sync = SyncBriefOut(read_only=True, allow_null=True)

    class Meta:
        model = McpServer
        fields = ["id", "name", "description", "transport", "url", "command", "version", "owner",
                  "data_classes", "risk_tier", "forward", "status", "registry_name",
                  "tool_count",
                  "review_count", "latest_sync", "gateways", "last_synced_at", "created_at",
                  "updated_at"]


class SyncFilter(serializers.Serializer):
    server = object_id(required=False)
    status = serializers.ChoiceField(choices=ServerSync.Status.choices, required=False)


class SyncOut(serializers.ModelSerializer):
    server_name = serializers.CharField(source="server.name", read_only=True)
    requested_by = username_out(source="requested_by.username")
    is_open = serializers.BooleanField(read_only=True, help_text="queued or running: poll again")
    gateway_name = serializers.CharField(
        source="gateway.name", read_only=True, allow_null=True, default=None,
        help_text="the gateway whose report completed the run (via gateway)")

    class Meta:
        model = ServerSync
        fields = ["id", "server", "server_name", "status", "is_open", "trigger", "via",
                  "gateway_name", "requested_by", "progress", "tools_listed", "summary",
                  "error_code", "error_message", "created_at", "started_at", "finished_at"]


class SyncRequestedOut(SyncOut):
    created = serializers.BooleanField(
        read_only=True, help_text="false: a run was already queued or running and is returned"
    )
    url = serializers.CharField(read_only=True, help_text="poll this for progress")

    class Meta(SyncOut.Meta):
        fields = [*SyncOut.Meta.fields, "created", "url"]


# --- Tools -------------------------------------------------------------------------------------


class ToolFilter(serializers.Serializer):
    server = object_id(required=False)
    status = serializers.ChoiceField(choices=Tool.Status.choices, required=False)
    present = serializers.BooleanField(required=False, allow_null=True,
                                       help_text="still listed by the server at the last sync")
    search = serializers.CharField(required=False, allow_blank=True,
                                   help_text="in name, title or description")


class FindingOut(serializers.Serializer):
    """One tool-poisoning review finding (see docs/security.md, "Tool poisoning")."""

    code = serializers.ChoiceField(choices=sorted(LABELS), read_only=True)
    severity = serializers.ChoiceField(choices=["high", "medium", "low"], read_only=True)
    where = serializers.CharField(read_only=True,
                                  help_text="the part of the definition: description, "
                                            "input_schema.properties.path.description, …")
    message = serializers.CharField(read_only=True)
    excerpt = serializers.CharField(read_only=True, help_text="the text around it, hidden "
                                    "characters shown as ⟦U+XXXX⟧")


class ToolOut(serializers.ModelSerializer):
    server_name = serializers.CharField(source="server.name", read_only=True)
    findings = FindingOut(many=True, read_only=True,
                          help_text="review findings of the current (pinned or pending) "
                                    "definition; approving one with findings needs "
                                    "confirm_findings")

    class Meta:
        model = Tool
        fields = ["id", "server", "server_name", "name", "title", "description", "status",
                  "present", "definition_sha256", "drifted_sha256", "findings", "first_seen_at",
                  "last_seen_at"]


class ToolApproveIn(serializers.Serializer):
    sha256 = serializers.RegexField(
        r"^[0-9a-f]{64}$", required=False,
        help_text="the definition hash you reviewed (drifted_sha256 of a quarantined tool, else "
                  "definition_sha256); when the server's definition changed since, nothing is "
                  "approved (400 on sha256)")
    confirm_findings = serializers.BooleanField(
        required=False, default=False,
        help_text="required (true) when the definition to approve has review findings "
                  "(findings, or drifted_findings of a quarantined tool): you read them and "
                  "approve anyway; else 400 on confirm_findings")


class ToolDetailOut(ToolOut):
    """The pinned definition; a drifted one (status quarantined) waits beside it for review."""

    class Meta(ToolOut.Meta):
        fields = [*ToolOut.Meta.fields, "input_schema", "output_schema", "annotations",
                  "drifted_definition", "drifted_findings"]

    drifted_findings = FindingOut(many=True, read_only=True,
                                  help_text="review findings of the drifted definition")


# --- Scopes ------------------------------------------------------------------------------------


class ScopeFilter(serializers.Serializer):
    search = serializers.CharField(required=False, allow_blank=True)
    risk_level = serializers.ChoiceField(choices=Risk.choices,
                                         required=False)


class ScopeIn(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    description = serializers.CharField(required=False, allow_blank=True)
    risk_level = serializers.ChoiceField(choices=Risk.choices,
                                         required=False)
    data_classes = serializers.ListField(child=serializers.CharField(), required=False,
                                         help_text=DATA_CLASSES_HELP)
    tools = TenantObjectsField(Tool, required=False,
                               help_text="ids of tools (of any server of the tenant)")


class ScopeToolOut(serializers.ModelSerializer):
    server_name = serializers.CharField(source="server.name", read_only=True)

    class Meta:
        model = Tool
        fields = ["id", "name", "server", "server_name", "status"]


class ScopeOut(serializers.ModelSerializer):
    tools = ScopeToolOut(many=True, read_only=True)
    tool_count = serializers.IntegerField(read_only=True)
    active_grant_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = ToolScope
        fields = ["id", "name", "description", "risk_level", "data_classes", "tools",
                  "tool_count", "active_grant_count", "created_at"]


# --- Agents and principals -----------------------------------------------------------------------


class AgentFilter(serializers.Serializer):
    status = serializers.ChoiceField(choices=Agent.Status.choices, required=False)
    owner = serializers.CharField(required=False, help_text="username")
    search = serializers.CharField(required=False, allow_blank=True,
                                   help_text="in name, purpose or principal subject")


class AgentIn(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    purpose = serializers.CharField(required=False, allow_blank=True)
    environment = serializers.CharField(max_length=50, required=False, allow_blank=True)
    owner = MemberField(
        required=False, allow_null=True,
        help_text="username of a member (admins only); default: the caller",
    )


class AgentTransitionIn(serializers.Serializer):
    status = serializers.ChoiceField(choices=Agent.Status.choices)


class PrincipalBriefOut(serializers.ModelSerializer):
    class Meta:
        model = AgentPrincipal
        fields = ["id", "issuer", "subject", "kind"]


class AgentOut(serializers.ModelSerializer):
    owner = username_out(source="owner.username")
    principals = PrincipalBriefOut(many=True, read_only=True)
    active_grant_count = serializers.IntegerField(read_only=True,
                                                  help_text="grants in force now")

    class Meta:
        model = Agent
        fields = ["id", "name", "owner", "purpose", "environment", "status", "principals",
                  "active_grant_count", "created_at"]


class PrincipalFilter(serializers.Serializer):
    agent = object_id(required=False)


class PrincipalIn(serializers.Serializer):
    agent = TenantObjectField(Agent)
    issuer = serializers.CharField(max_length=500,
                                   help_text="e.g. the IdP's issuer URL, or spiffe://trust-domain")
    subject = serializers.CharField(max_length=500,
                                    help_text="JWT sub, OAuth client id or SPIFFE ID")
    kind = serializers.ChoiceField(
        choices=AgentPrincipal.Kind.choices, required=False,
        help_text="subject (default): matches the token's sub; client: matches its azp / "
                  "client_id, also when the agent acts for a person (delegation)")


class PrincipalOut(serializers.ModelSerializer):
    agent_name = serializers.CharField(source="agent.name", read_only=True)

    class Meta:
        model = AgentPrincipal
        fields = ["id", "agent", "agent_name", "issuer", "subject", "kind"]


# --- Grants ------------------------------------------------------------------------------------


class GrantFilter(serializers.Serializer):
    agent = object_id(required=False)
    scope = object_id(required=False)
    status = serializers.ChoiceField(choices=Grant.Status.choices, required=False)
    in_force = serializers.BooleanField(required=False, allow_null=True,
                                        help_text="active and not expired")


class GrantTermsIn(serializers.Serializer):
    """The terms of a grant; registry.services validates them and names the path of an error."""

    calls_per_minute = IntegerInput(required=False, allow_null=True)
    calls_per_day = IntegerInput(required=False, allow_null=True)
    window_start = serializers.TimeField(required=False, allow_null=True)
    window_end = serializers.TimeField(required=False, allow_null=True)
    window_days = serializers.ListField(child=IntegerInput(), required=False,
                                        help_text="0 = Monday … 6 = Sunday; empty: every day")
    window_tz = serializers.CharField(max_length=64, required=False,
                                      help_text="IANA time zone of the window, default UTC")
    argument_constraints = ConstraintsField(
        required=False,
        help_text="{tool: {argument: {enum|const|minimum|maximum|maxLength|pattern|within|url: "
                  "…}}}; within: [root paths], url: {schemes, hosts?, ports?}; checked against "
                  "the tools' input schemas (see docs/gateway-contract.md)",
    )
    approval_mode = serializers.ChoiceField(choices=Grant.ApprovalMode.choices, required=False)
    approval_condition = ConstraintsField(
        required=False, help_text="same shape as argument_constraints; with approval_mode when"
    )
    on_behalf_of_group = serializers.CharField(
        required=False, allow_blank=True, max_length=200, trim_whitespace=False,
        help_text="delegation: only calls the agent makes for a person whose token lists this "
                  "IdP group; empty: no such requirement")
    expires_at = serializers.DateTimeField(required=False, allow_null=True)


class GrantIn(GrantTermsIn):
    agent = TenantObjectField(Agent)
    scope = TenantObjectField(ToolScope)


class GrantRevokeIn(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=500)


class GrantOut(serializers.ModelSerializer):
    agent_name = serializers.CharField(source="agent.name", read_only=True)
    scope_name = serializers.CharField(source="scope.name", read_only=True)
    in_force = serializers.BooleanField(source="is_in_force", read_only=True,
                                        help_text="active and not expired")
    created_by = username_out(source="created_by.username")
    break_glass = serializers.BooleanField(
        read_only=True, help_text="an admin's emergency self-grant (approvals' break-glass), "
                                  "not an approved request")

    class Meta:
        model = Grant
        fields = ["id", "agent", "agent_name", "scope", "scope_name", "status", "in_force",
                  "calls_per_minute", "calls_per_day", "window_start", "window_end",
                  "window_days", "window_tz", "argument_constraints", "approval_mode",
                  "approval_condition", "on_behalf_of_group", "expires_at", "created_by",
                  "created_at", "revoked_at", "break_glass"]
