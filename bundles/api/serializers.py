"""Serializers of the gateways, gateway tokens, signing keys and bundles API.

…In serializers validate input (the services check meaning and raise ValidationErrors that reach
the client in the same JSON shape); …Out serializers describe answers. Nothing here saves.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from bundles.diff import SECTIONS
from bundles.models import Bundle, Gateway, GatewayToken, SigningKey
from governance.bounds import BIGINT_MAX, IntegerInput
from governance.tenancy.api.serializers import object_id, username_out

# Labels differ from Grant.Status (same values): spectacular names enums by their choices.
TOKEN_STATES = [("active", "Active (accepted)"), ("revoked", "Revoked (refused with 401)")]



@extend_schema_field(OpenApiTypes.ANY)
class AnyJSONField(serializers.JSONField):
    """Any JSON value, as it is in the bundle's data.json."""


# --- Gateways --------------------------------------------------------------------------------


class GatewayIn(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    description = serializers.CharField(required=False, allow_blank=True)
    labels = serializers.DictField(
        child=serializers.CharField(allow_blank=True, max_length=200), required=False,
        help_text="text keys (1–63 characters) → text values, e.g. {\"env\": \"prod\"}; at most "
        "32. Replaces all labels.",
    )


class GatewayOut(serializers.Serializer):
    """A gateway and its freshness, as the fleet view shows it (one row of selectors.fleet)."""

    id = serializers.IntegerField(source="gateway.pk", read_only=True)
    name = serializers.CharField(source="gateway.name", read_only=True)
    description = serializers.CharField(source="gateway.description", read_only=True)
    labels = serializers.DictField(source="gateway.labels", child=serializers.CharField(),
                                   read_only=True)
    status = serializers.ChoiceField(source="gateway.status", choices=Gateway.Status.choices,
                                     read_only=True)
    created_at = serializers.DateTimeField(source="gateway.created_at", read_only=True)
    created_by = username_out(source="gateway.created_by.username")
    last_contact_at = serializers.DateTimeField(
        read_only=True, allow_null=True, help_text="last poll or status report")
    last_status_at = serializers.DateTimeField(source="gateway.last_status_at", read_only=True,
                                               allow_null=True)
    active_revision = serializers.IntegerField(
        source="gateway.active_revision", read_only=True, allow_null=True,
        help_text="the revision the gateway last reported running")
    newest_revision = serializers.IntegerField(source="newest", read_only=True, allow_null=True,
                                               help_text="the tenant's current revision")
    lag = serializers.IntegerField(
        read_only=True, allow_null=True, min_value=0,
        help_text="newest_revision − active_revision; null when either is unknown, or when the "
                  "gateway's revision is not ours (revision_conflict)")
    unknown_revision = serializers.BooleanField(
        read_only=True, help_text="the gateway reports running a revision this control plane "
                                  "never published (newer than the newest)")
    revision_conflict = serializers.ChoiceField(
        read_only=True, choices=["", "ahead", "unknown", "different", "refused"],
        help_text="why the revision the gateway runs is not this control plane's bundle of that "
                  'number (a restore from an older backup): "ahead" of the newest, "unknown" '
                  '(no bundle of that number here), "different" (its active_sha256 is not '
                  'ours), "refused" (it refused ours as a revision_conflict); "" when it is '
                  "ours. The next bundle is published above it.")
    stale = serializers.BooleanField(
        read_only=True, help_text="active, and no contact for GATEWAY_STALE_SECONDS")
    last_error = serializers.CharField(source="gateway.last_error", read_only=True)


class GatewayDetailOut(GatewayOut):
    last_report = AnyJSONField(source="gateway.last_report", read_only=True, allow_null=True,
                               help_text="the last OPA status report, as sent")


# --- Gateway tokens --------------------------------------------------------------------------


class GatewayTokenFilter(serializers.Serializer):
    gateway = object_id(required=False)
    state = serializers.ChoiceField(choices=TOKEN_STATES, required=False)


class GatewayTokenIn(serializers.Serializer):
    gateway = object_id(help_text="id of a gateway of this tenant")
    name = serializers.CharField(max_length=100, help_text="where it is used")


class GatewayTokenOut(serializers.ModelSerializer):
    gateway_name = serializers.CharField(source="gateway.name", read_only=True)
    created_by = username_out(source="created_by.username")
    state = serializers.ChoiceField(choices=TOKEN_STATES, read_only=True)

    class Meta:
        model = GatewayToken
        fields = ["id", "gateway", "gateway_name", "name", "prefix", "state", "created_by",
                  "created_at", "last_used_at", "revoked_at"]


class GatewayTokenIssuedOut(GatewayTokenOut):
    token = serializers.CharField(
        read_only=True, help_text="the plaintext: shown in this answer only, stored as a hash")

    class Meta(GatewayTokenOut.Meta):
        fields = [*GatewayTokenOut.Meta.fields, "token"]


# --- Signing keys ----------------------------------------------------------------------------


class SigningKeyRotateIn(serializers.Serializer):
    immediate = serializers.BooleanField(
        default=False,
        help_text="false: the new key is published now and signs after "
        "BUNDLE_KEY_PUBLISH_LEAD_SECONDS; true (a compromised key): it signs at once, the "
        "current key is revoked (it leaves the JWKS, so gateways stop accepting what it "
        "signed) and the bundle is re-signed.",
    )


class SigningKeyOut(serializers.ModelSerializer):
    public_jwk = serializers.DictField(read_only=True, help_text="as published in the JWKS")

    class Meta:
        model = SigningKey
        fields = ["id", "kid", "state", "public_jwk", "created_at", "activate_after",
                  "activated_at", "retired_at", "revoked_at"]


# --- Bundles ---------------------------------------------------------------------------------


class BundleOut(serializers.ModelSerializer):
    sha256 = serializers.CharField(read_only=True, help_text="of the tarball: the ETag")
    kid = serializers.CharField(source="key.kid", read_only=True, help_text="signing key")
    summary = serializers.DictField(child=serializers.IntegerField(), read_only=True,
                                    help_text="entries per section of data.json")
    current = serializers.SerializerMethodField(help_text="the revision gateways get now")

    class Meta:
        model = Bundle
        fields = ["id", "revision_number", "sha256", "size", "created_at", "expires_at", "kid",
                  "trigger", "summary", "build_ms", "current"]

    def get_current(self, bundle: Bundle) -> bool:
        return bundle.pk == self.context.get("current_id")


class BundlePublishOut(serializers.Serializer):
    published = serializers.BooleanField(help_text="false: nothing changed, no new revision")
    bundle = BundleOut(allow_null=True, help_text="the new revision, or the current one")
    message = serializers.CharField()


class BundleDiffQuery(serializers.Serializer):
    """``from`` is a Python keyword: the field is added in ``get_fields``."""

    to = IntegerInput(min_value=1, max_value=BIGINT_MAX, required=False,
                      help_text="revision number; default: the newest")

    def get_fields(self):
        fields = super().get_fields()
        fields["from"] = IntegerInput(
            min_value=1, max_value=BIGINT_MAX, required=False,
            help_text="revision number; default: the one before `to`")
        return fields


class DiffFieldOut(serializers.Serializer):
    field = serializers.CharField()
    before = AnyJSONField(allow_null=True)
    after = AnyJSONField(allow_null=True)


class DiffEntryOut(serializers.Serializer):
    key = serializers.CharField(help_text="name of the entry (tools: server/tool; grants: id)")
    label = serializers.CharField()
    value = AnyJSONField(allow_null=True)


class DiffChangeOut(serializers.Serializer):
    key = serializers.CharField()
    label = serializers.CharField()
    fields = DiffFieldOut(many=True, help_text="top-level fields that differ")


class DiffSectionOut(serializers.Serializer):
    label = serializers.CharField()
    added = DiffEntryOut(many=True)
    removed = DiffEntryOut(many=True)
    changed = DiffChangeOut(many=True)


class BundleDiffOut(serializers.Serializer):
    from_revision = serializers.IntegerField(
        allow_null=True, help_text="null: `to` is the first revision (everything is added)")
    to_revision = serializers.IntegerField()
    is_empty = serializers.BooleanField(help_text="the policy content is the same")
    sections = serializers.DictField(
        child=DiffSectionOut(),
        help_text="one per section: " + ", ".join(name for name, _ in SECTIONS),
    )
