"""Web forms of the gateway, signing key and bundle pages (validation only; writes go through
services)."""

from __future__ import annotations

from typing import Any

from django import forms

from bundles.models import Gateway
from bundles.services import MAX_LABELS
from governance import bounds


def labels_to_text(labels: dict[str, str]) -> str:
    return "\n".join(f"{key}={value}" for key, value in sorted(labels.items()))


def parse_labels(text: str) -> dict[str, str]:
    """``key=value`` lines → a dict; every bad line is reported with its number."""
    labels: dict[str, str] = {}
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            problems.append(f"Line {number}: write key=value, e.g. region=eu-west-1.")
        elif not key or len(key) > 63:
            problems.append(f"Line {number}: a label name is 1–63 characters, before the =.")
        elif len(value) > 200:
            problems.append(f"Line {number}: the value of {key} is longer than 200 characters.")
        elif key in labels:
            problems.append(f"Line {number}: {key} is given twice.")
        else:
            labels[key] = value
    if len(labels) > MAX_LABELS:
        problems.append(f"At most {MAX_LABELS} labels.")
    if problems:
        raise forms.ValidationError(problems)
    return labels


class GatewayForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="e.g. eu-west-prod-1")
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    labels = forms.CharField(
        required=False,
        help_text="One key=value per line, e.g. env=prod or region=eu-west-1.",
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false", "class": "code",
                                     "placeholder": "env=prod\nregion=eu-west-1"}),
    )

    def clean_name(self) -> str:
        return self.cleaned_data["name"].strip()

    def clean_labels(self) -> dict[str, str]:
        return parse_labels(self.cleaned_data["labels"])

    @staticmethod
    def initial_for(gateway: Gateway) -> dict[str, Any]:
        return {"name": gateway.name, "description": gateway.description,
                "labels": labels_to_text(gateway.labels)}


class GatewayTokenForm(forms.Form):
    name = forms.CharField(max_length=100, label="Token name",
                           help_text="Where it will be used, e.g. “k8s secret, eu-west”.")


class ImmediateRotateForm(forms.Form):
    """Rotating at once breaks gateways that have not fetched the new key: make the person say
    which tenant they mean."""

    confirm = forms.CharField(
        label="Type the tenant's slug to confirm", max_length=100,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )

    def __init__(self, *args, slug: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.slug = slug
        self.fields["confirm"].help_text = f"Type {slug} to confirm."

    def clean_confirm(self) -> str:
        value = self.cleaned_data["confirm"].strip()
        if value != self.slug:
            raise forms.ValidationError(f"Type {self.slug} exactly to rotate immediately.")
        return value


class CompareForm(forms.Form):
    """Two revision numbers of the tenant's bundles (``from`` is a Python keyword, hence the
    field added in ``__init__``)."""

    to = bounds.IntegerField(min_value=1, max_value=bounds.BIGINT_MAX, required=False,
                             label="To revision")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["from"] = bounds.IntegerField(min_value=1, max_value=bounds.BIGINT_MAX,
                                                  required=False, label="From revision")
        self.order_fields(["from", "to"])
