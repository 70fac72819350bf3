"""Filter form of the decision-log search page."""

from __future__ import annotations

from datetime import UTC

from django import forms

from bundles.models import Gateway
from decision_logs.models import Outcome
from governance.tenancy.models import Tenant

DATETIME_LOCAL = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"]


class _DateTimeLocal(forms.DateTimeInput):
    input_type = "datetime-local"

    def __init__(self) -> None:
        super().__init__(format="%Y-%m-%dT%H:%M")


class DecisionFilterForm(forms.Form):
    """Every filter is exact (so each one is answered from an index); times are UTC."""

    agent = forms.CharField(required=False, max_length=200)
    server = forms.CharField(required=False, max_length=200)
    tool = forms.CharField(required=False, max_length=200)
    gateway = forms.ModelChoiceField(queryset=Gateway.objects.none(), required=False,
                                     empty_label="Any gateway")
    outcome = forms.ChoiceField(required=False, choices=[("", "Any outcome"),
                                                         *Outcome.choices])
    since = forms.DateTimeField(required=False, label="From (UTC)",
                                input_formats=DATETIME_LOCAL, widget=_DateTimeLocal())
    until = forms.DateTimeField(required=False, label="To (UTC, exclusive)",
                                input_formats=DATETIME_LOCAL, widget=_DateTimeLocal())
    decision_id = forms.CharField(required=False, max_length=100, label="Decision id")

    def __init__(self, *args, tenant: Tenant, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["gateway"].queryset = Gateway.objects.for_tenant(tenant).order_by("name")
        self.fields["gateway"].error_messages["invalid_choice"] = (
            "No such gateway in this tenant; pick one from the list.")

    def clean_since(self):
        return self._utc(self.cleaned_data.get("since"))

    def clean_until(self):
        return self._utc(self.cleaned_data.get("until"))

    @staticmethod
    def _utc(value):
        # datetime-local has no zone: the page says UTC, so read it as UTC.
        return value.replace(tzinfo=UTC) if value is not None else None

    def clean(self):
        data = super().clean()
        if data.get("since") and data.get("until") and data["since"] >= data["until"]:
            raise forms.ValidationError("“From” must be before “To”.")
        return data

    def filters(self) -> dict:
        """``selectors.search`` filters (empty values mean no filter)."""
        data = self.cleaned_data
        return {key: data.get(key) for key in ("agent", "server", "tool", "gateway", "outcome",
                                               "since", "until", "decision_id")}


class ReplayForm(forms.Form):
    """How many days of the decision log to replay against the draft."""

    days = forms.IntegerField(label="Replay the last (days)", initial=7,
                              help_text="Every decision logged in this window is decided again "
                                        "against the registry as it stands.")
