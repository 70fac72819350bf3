"""Web forms of the alert pages (parsing only; the services check meaning)."""

from __future__ import annotations

from typing import Any

from django import forms

from alerts.models import AlertRule, Kind, Severity
from alerts.selectors import STATUS_FILTERS
from alerts.services import MAX_NOTE
from governance import bounds


class AlertFilterForm(forms.Form):
    status = forms.ChoiceField(required=False, choices=list(STATUS_FILTERS.items()))
    kind = forms.ChoiceField(required=False, choices=[("", "Any kind"), *Kind.choices])
    severity = forms.ChoiceField(required=False,
                                 choices=[("", "Any severity"), *Severity.choices])

    def filters(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {"status": data.get("status") or "", "kind": data.get("kind") or "",
                "severity": data.get("severity") or ""}


class AlertActionForm(forms.Form):
    note = forms.CharField(
        required=False, max_length=MAX_NOTE, label="Note",
        help_text="Optional: what you are doing about it (kept with the alert and the audit).",
        widget=forms.Textarea(attrs={"rows": 2}),
    )


class AlertRuleForm(forms.Form):
    """One rule's settings; the fields a kind does not take are left out."""

    enabled = forms.BooleanField(required=False, label="Enabled")
    threshold = bounds.IntegerField(required=False, min_value=1)
    window_minutes = bounds.IntegerField(required=False, min_value=1, label="Window (minutes)")
    severity = forms.ChoiceField(choices=Severity.choices)

    def __init__(self, *args, rule: AlertRule, **kwargs) -> None:
        kwargs.setdefault("prefix", rule.kind)
        super().__init__(*args, **kwargs)
        self.rule = rule
        spec = rule.spec
        if spec.threshold is None:
            del self.fields["threshold"]
        else:
            self.fields["threshold"].label = spec.threshold_label.capitalize()
            self.fields["threshold"].help_text = f"Default {spec.threshold}."
        if spec.window_minutes is None:
            del self.fields["window_minutes"]
        else:
            self.fields["window_minutes"].label = f"Window ({spec.window_label})"
            self.fields["window_minutes"].help_text = f"Default {spec.window_minutes}."
        if not self.is_bound:
            self.initial = {"enabled": rule.enabled, "threshold": rule.threshold,
                            "window_minutes": rule.window_minutes, "severity": rule.severity}

    def changes(self) -> dict[str, Any]:
        return {name: self.cleaned_data.get(name) for name in self.fields}
