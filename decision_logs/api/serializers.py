"""Serializers of the read-only decision-logs API."""

from __future__ import annotations

from rest_framework import serializers

from decision_logs.models import DecisionLog, Outcome
from governance.tenancy.api.serializers import object_id


class DecisionFilter(serializers.Serializer):
    """Query parameters of the list (each exact; times are RFC 3339)."""

    agent = serializers.CharField(required=False, max_length=200)
    server = serializers.CharField(required=False, max_length=200)
    tool = serializers.CharField(required=False, max_length=200)
    gateway = object_id(required=False, help_text="gateway id")
    outcome = serializers.ChoiceField(choices=Outcome.choices, required=False)
    since = serializers.DateTimeField(required=False, help_text="timestamp >= since")
    until = serializers.DateTimeField(required=False, help_text="timestamp < until")
    decision_id = serializers.CharField(required=False, max_length=100)

    def validate(self, data):
        if data.get("since") and data.get("until") and data["since"] >= data["until"]:
            raise serializers.ValidationError({"until": ["Must be after since."]})
        return data


class DecisionLogOut(serializers.ModelSerializer):
    gateway_name = serializers.CharField(source="gateway.name", read_only=True, default=None,
                                         allow_null=True)

    class Meta:
        model = DecisionLog
        fields = ["id", "decision_id", "timestamp", "received_at", "gateway", "gateway_name",
                  "bundle_revision", "agent", "principal", "server", "tool", "call_id",
                  "arguments_sha256", "arguments", "outcome", "reason", "grant_id",
                  "escalation_id", "labels", "on_behalf_of", "on_behalf_of_groups"]
