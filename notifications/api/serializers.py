"""Serializers of the notification channels and deliveries API. The channel's URL and secret
are write-only: answers show ``target`` (host and last characters) and ``secret_hint``."""

from __future__ import annotations

from rest_framework import serializers

from governance.tenancy.api.serializers import object_id, username_out
from notifications.models import EVENTS, Channel, Delivery

EVENT_CHOICES = list(EVENTS.items())


class ChannelIn(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    kind = serializers.ChoiceField(choices=Channel.Kind.choices)
    enabled = serializers.BooleanField(required=False)
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=EVENT_CHOICES), required=False,
        help_text="event names to receive; empty or absent: every event")
    addresses = serializers.ListField(
        child=serializers.CharField(max_length=254), required=False,
        help_text="email: fixed recipients")
    to_recipients = serializers.BooleanField(
        required=False, help_text="email: also the people each event names (e.g. approvers)")
    url = serializers.CharField(
        required=False, allow_blank=True, write_only=True, max_length=2000,
        help_text="slack, webhook: where to POST; write-only, stored encrypted")
    secret = serializers.CharField(
        required=False, allow_blank=True, write_only=True, max_length=500, trim_whitespace=False,
        help_text="webhook: HMAC-SHA256 key of X-Tollgate-Signature (16+ characters); "
                  "write-only, stored encrypted")


class ChannelOut(serializers.ModelSerializer):
    target = serializers.CharField(
        read_only=True, help_text="the addresses, or the URL's host and last 4 characters")
    secret_hint = serializers.CharField(read_only=True,
                                        help_text="last 4 characters of the webhook secret")
    created_by = username_out(source="created_by.username")

    class Meta:
        model = Channel
        fields = ["id", "name", "kind", "enabled", "events", "addresses", "to_recipients",
                  "target", "secret_hint", "created_by", "created_at", "updated_at"]


class DeliveryFilter(serializers.Serializer):
    status = serializers.ChoiceField(choices=Delivery.Status.choices, required=False)
    channel = object_id(required=False)
    event = serializers.ChoiceField(choices=EVENT_CHOICES, required=False)


class DeliveryOut(serializers.ModelSerializer):
    channel_name = serializers.CharField(source="channel.name", read_only=True)

    class Meta:
        model = Delivery
        fields = ["id", "channel", "channel_name", "event", "subject", "payload", "status",
                  "attempts", "last_error", "created_at", "sent_at", "next_attempt_at"]
