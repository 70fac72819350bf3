"""Serializers of the alerts and alert rules API."""

from __future__ import annotations

from rest_framework import serializers

from alerts.models import Alert, AlertRule, Kind, Severity
from alerts.selectors import STATUS_FILTERS
from alerts.services import MAX_NOTE
from governance.bounds import IntegerInput
from governance.tenancy.api.serializers import username_out


class AlertFilter(serializers.Serializer):
    status = serializers.ChoiceField(
        choices=[k for k in STATUS_FILTERS if k], required=False,
        help_text="absent: open and acknowledged; all: every status")
    kind = serializers.ChoiceField(choices=Kind.choices, required=False)
    severity = serializers.ChoiceField(choices=Severity.choices, required=False)


class AlertOut(serializers.ModelSerializer):
    kind = serializers.CharField(source="rule_kind", read_only=True)
    acknowledged_by = username_out(source="acknowledged_by.username")

    class Meta:
        model = Alert
        fields = ["id", "kind", "key", "subject", "detail", "severity", "status",
                  "first_seen_at", "last_seen_at", "occurrences", "acknowledged_by",
                  "acknowledged_at", "ack_note", "resolved_at", "resolution"]


class AlertActionIn(serializers.Serializer):
    note = serializers.CharField(required=False, allow_blank=True, max_length=MAX_NOTE)


class AlertRuleIn(serializers.Serializer):
    enabled = serializers.BooleanField(required=False)
    threshold = IntegerInput(
        required=False, allow_null=True,
        help_text="denial_burst: denials; export_failing: consecutive failures; null for the "
                  "kinds without one")
    window_minutes = IntegerInput(
        required=False, allow_null=True,
        help_text="gateway_stale, denial_burst: minutes; null for the kinds without one")
    severity = serializers.ChoiceField(choices=Severity.choices, required=False)


class AlertRuleOut(serializers.ModelSerializer):
    description = serializers.CharField(source="spec.description", read_only=True)
    updated_by = username_out(source="updated_by.username")  # null for the built-in defaults

    class Meta:
        model = AlertRule
        fields = ["id", "kind", "description", "enabled", "threshold", "window_minutes",
                  "severity", "updated_by", "updated_at"]
