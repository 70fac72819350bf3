from __future__ import annotations

from rest_framework import serializers

from governance.audit.models import AuditEvent


class AuditEventOut(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = ["id", "seq", "created_at", "actor_type", "actor_id", "actor_label", "action",
                  "object_type", "object_id", "object_repr", "before", "after", "request_id",
                  "ip", "prev_hash", "hash"]
