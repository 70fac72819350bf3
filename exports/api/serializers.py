"""Serializers of the exporters API. The HEC token is write-only: answers show ``token_hint``."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from exports import selectors
from exports.models import Exporter
from exports.services import START_BEGINNING, STARTS
from governance.tenancy.api.serializers import username_out


class ExporterIn(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    kind = serializers.ChoiceField(choices=Exporter.Kind.choices)
    stream = serializers.ChoiceField(choices=Exporter.Stream.choices,
                                     help_text="fixed once created")
    enabled = serializers.BooleanField(required=False)
    start = serializers.ChoiceField(
        choices=list(STARTS.items()), required=False, default=START_BEGINNING,
        help_text="create only: send every stored event (beginning) or only new ones (now)")
    path = serializers.CharField(required=False, allow_blank=True, max_length=100,
                                 help_text="jsonl: a file name inside the tenant's export "
                                           "directory (no folders)")
    host = serializers.CharField(required=False, allow_blank=True, max_length=255,
                                 help_text="syslog_udp, syslog_tcp: receiver host")
    port = serializers.IntegerField(required=False, allow_null=True, min_value=1,
                                    max_value=65535, help_text="syslog_udp, syslog_tcp")
    url = serializers.CharField(required=False, allow_blank=True, max_length=2000,
                                help_text="splunk_hec: collector URL (http or https)")
    index = serializers.CharField(required=False, allow_blank=True, max_length=80,
                                  help_text="splunk_hec: optional index")
    token = serializers.CharField(
        required=False, allow_blank=True, write_only=True, max_length=500, trim_whitespace=False,
        help_text="splunk_hec: HEC token; write-only, stored encrypted")


class ExporterUpdateIn(ExporterIn):
    """PATCH: every field optional; the stream and the start are fixed after creation (the
    cursor has its own ``reset-cursor`` action)."""

    start = None


class LagOut(serializers.Serializer):
    rows_behind = serializers.IntegerField()
    seconds_behind = serializers.FloatField(allow_null=True,
                                            help_text="age of the oldest unsent row")


class ExporterOut(serializers.ModelSerializer):
    target = serializers.CharField(read_only=True)
    status = serializers.CharField(read_only=True, help_text="disabled, failing, ok or new")
    lag = serializers.SerializerMethodField()
    created_by = username_out(source="created_by.username")

    class Meta:
        model = Exporter
        fields = ["id", "name", "kind", "stream", "enabled", "path", "host", "port", "url",
                  "index", "token_hint", "target", "status", "cursor", "exported_total", "lag",
                  "last_success_at", "last_error", "last_error_at", "consecutive_failures",
                  "next_attempt_at", "created_by", "created_at", "updated_at"]

    @extend_schema_field(LagOut)
    def get_lag(self, exporter: Exporter) -> dict:
        return LagOut(selectors.exporter_lag(exporter)).data


class ResetCursorIn(serializers.Serializer):
    start = serializers.ChoiceField(choices=list(STARTS.items()),
                                    help_text="beginning: send everything again; now: skip "
                                              "what is stored")


class ProbeOut(serializers.Serializer):
    ok = serializers.BooleanField()
    message = serializers.CharField()
