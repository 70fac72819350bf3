"""Serializers of the evidence packs API."""

from __future__ import annotations

from django.urls import reverse
from rest_framework import serializers

from evidence.models import EvidencePack


class EvidencePackIn(serializers.Serializer):
    period_start = serializers.DateField(help_text="first day (UTC), included")
    period_end = serializers.DateField(help_text="last day (UTC), included; today at the latest")


class EvidencePackOut(serializers.ModelSerializer):
    requested_by = serializers.CharField(source="requested_by_label", read_only=True,
                                         help_text="who asked, as the audit trail names them")
    download_url = serializers.SerializerMethodField(
        help_text="the zip, once status is done (null before)")

    class Meta:
        model = EvidencePack
        fields = ["id", "period_start", "period_end", "status", "progress", "step", "error",
                  "attempts", "size", "sha256", "files", "summary", "requested_by",
                  "created_at", "started_at", "finished_at", "download_url"]

    def get_download_url(self, pack: EvidencePack) -> str | None:
        if pack.status != EvidencePack.Status.DONE:
            return None
        return reverse("evidence-packs-download",
                       kwargs={"tenant_slug": pack.tenant.slug, "pk": pack.pk})
