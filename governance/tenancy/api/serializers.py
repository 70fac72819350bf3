"""Input/output serializers of the tenancy API (no logic in save(): views call services)."""

from __future__ import annotations

from rest_framework import serializers

from governance.tenancy.models import ApiToken, IdpGroupMapping, Invitation, Membership
from governance.tenancy.roles import Role
from governance.tenancy.selectors import INVITATION_STATES
from governance.tenancy.services import TENANT_SETTING_LIMITS

# An object id in a body or a filter: out of this range is a 400, not a database overflow (500).
OBJECT_ID = {"min_value": 1, "max_value": 2**63 - 1}


def object_id(**kwargs) -> serializers.IntegerField:
    return serializers.IntegerField(**OBJECT_ID, **kwargs)


def username_out(**kwargs) -> serializers.CharField:
    """A user named by username in an answer; null when there is none (a system action, a
    deleted user): documented as nullable, as it is."""
    return serializers.CharField(read_only=True, default=None, allow_null=True,
                                 help_text="username", **kwargs)


class MembershipOut(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username", read_only=True)
    email = serializers.CharField(source="user.email", read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "username", "email", "role", "source", "last_confirmed_at", "created_at",
                  "updated_at"]


class MembershipRoleIn(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices)


class InvitationOut(serializers.ModelSerializer):
    invited_by = username_out(source="invited_by.username")
    accepted_by = username_out(source="accepted_by.username")
    state = serializers.ChoiceField(choices=INVITATION_STATES, read_only=True)

    class Meta:
        model = Invitation
        fields = ["id", "email", "issuer", "subject", "role", "state", "invited_by",
                  "created_at", "expires_at", "accepted_at", "accepted_by", "revoked_at"]


class InvitationFilter(serializers.Serializer):
    state = serializers.ChoiceField(choices=INVITATION_STATES, required=False)


class InvitationIn(serializers.Serializer):
    """By e-mail address, or by IdP issuer and subject (as the IdP's ID tokens carry them)."""

    email = serializers.CharField(
        max_length=254, required=False, allow_blank=True, trim_whitespace=True,
        help_text="taken up at a sign-in with this (verified) address")
    issuer = serializers.CharField(
        max_length=500, required=False, allow_blank=True,
        help_text="the IdP's issuer (iss), with subject")
    subject = serializers.CharField(
        max_length=255, required=False, allow_blank=True,
        help_text="the person's subject (sub) at that issuer")
    role = serializers.ChoiceField(choices=Role.choices)


class GroupMappingOut(serializers.ModelSerializer):
    class Meta:
        model = IdpGroupMapping
        fields = ["id", "group", "role", "created_at"]


class GroupMappingIn(serializers.Serializer):
    group = serializers.CharField(max_length=200)
    role = serializers.ChoiceField(choices=Role.choices)


class ApiTokenOut(serializers.ModelSerializer):
    owner = username_out(source="user.username")
    state = serializers.CharField(read_only=True)

    class Meta:
        model = ApiToken
        fields = ["id", "name", "kind", "role", "prefix", "owner", "state", "created_at",
                  "expires_at", "revoked_at", "last_used_at"]


class ApiTokenIn(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    kind = serializers.ChoiceField(choices=ApiToken.Kind.choices, default=ApiToken.Kind.PERSONAL)
    role = serializers.ChoiceField(choices=Role.choices)
    expires_at = serializers.DateTimeField()


class ApiTokenCreatedOut(ApiTokenOut):
    token = serializers.CharField(read_only=True, help_text="shown only in this response")

    class Meta(ApiTokenOut.Meta):
        fields = [*ApiTokenOut.Meta.fields, "token"]


def _limits(name: str) -> dict[str, int]:
    """The range ``tenant_update_settings`` enforces, also written into the API schema."""
    low, high = TENANT_SETTING_LIMITS[name]
    return {"min_value": low, "max_value": high}


class TenantSettingsSerializer(serializers.Serializer):
    """The tenant's settings (PATCH any of them; the service checks the ranges)."""

    registry_resync_minutes = serializers.IntegerField(
        **_limits("registry_resync_minutes"),
        help_text="re-sync every active MCP server this often (0 to 10080; 0 = manual only)")
    decision_log_retention_days = serializers.IntegerField(
        **_limits("decision_log_retention_days"),
        help_text="delete decision logs older than this (1 to 3660)")
    escalation_decision_timeout_seconds = serializers.IntegerField(
        **_limits("escalation_decision_timeout_seconds"),
        help_text="a held (escalated) call expires, denied, after this long without a "
                  "decision (60 to 604800; default 900); gateways get it in the next bundle")
