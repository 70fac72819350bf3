"""Filter form of the audit log page."""

from __future__ import annotations

from datetime import datetime, time, timedelta

from django import forms
from django.utils import timezone


class AuditFilterForm(forms.Form):
    actor = forms.CharField(required=False, max_length=200)
    action = forms.CharField(required=False, max_length=100)
    object = forms.CharField(required=False, max_length=200)
    since = forms.DateField(required=False, label="From", widget=forms.DateInput(
        attrs={"type": "date"}))
    until = forms.DateField(required=False, label="To (inclusive)", widget=forms.DateInput(
        attrs={"type": "date"}))

    def clean(self):
        data = super().clean()
        if data.get("since") and data.get("until") and data["since"] > data["until"]:
            raise forms.ValidationError("“From” must be on or before “To”.")
        return data

    def filters(self) -> dict:
        """Selector keyword arguments (dates are whole UTC days)."""
        data = self.cleaned_data
        tz = timezone.get_current_timezone()
        since = until = None
        if data.get("since"):
            since = datetime.combine(data["since"], time.min, tzinfo=tz)
        if data.get("until"):
            until = datetime.combine(data["until"] + timedelta(days=1), time.min, tzinfo=tz)
        return {"actor": data.get("actor", ""), "action": data.get("action", ""),
                "obj": data.get("object", ""), "since": since, "until": until}
