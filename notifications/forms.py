"""Web forms of the notification pages (parsing only; the services check meaning)."""

from __future__ import annotations

import re
from typing import Any

from django import forms

from governance.tenancy.models import Tenant
from notifications.models import EVENTS, Channel, Delivery


class ChannelForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="e.g. “#security-approvals” or “SOC pager”.")
    kind = forms.ChoiceField(choices=Channel.Kind.choices, initial=Channel.Kind.EMAIL)
    enabled = forms.BooleanField(required=False, initial=True)
    events = forms.MultipleChoiceField(
        choices=list(EVENTS.items()), required=False, widget=forms.CheckboxSelectMultiple,
        label="Events", help_text="Tick none to receive every event.",
    )
    addresses = forms.CharField(
        required=False, label="E-mail addresses",
        help_text="E-mail only: one address per line (or separated by commas).",
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false",
                                     "placeholder": "security@example.com"}),
    )
    to_recipients = forms.BooleanField(
        required=False, label="Also e-mail the people each event names (e.g. eligible approvers)",
    )
    url = forms.CharField(
        required=False, max_length=2000, label="URL",
        help_text="Slack and webhook: the http(s) URL to POST to. Stored encrypted.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    secret = forms.CharField(
        required=False, max_length=500, label="Signing secret", strip=False,
        help_text="Webhook only: at least 16 random characters; the receiver checks "
                  "X-Tollgate-Signature with it. Stored encrypted.",
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def __init__(self, *args, channel: Channel | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if channel is not None and channel.url_hint:
            self.fields["url"].help_text = (f"Now {channel.url_hint}; leave empty to keep it.")
        if channel is not None and channel.secret_hint:
            self.fields["secret"].help_text = (f"Set (ends {channel.secret_hint}); leave empty "
                                               "to keep it.")

    @staticmethod
    def initial_for(channel: Channel) -> dict[str, Any]:
        return {"name": channel.name, "kind": channel.kind, "enabled": channel.enabled,
                "events": channel.events, "addresses": "\n".join(channel.addresses),
                "to_recipients": channel.to_recipients}

    def clean_addresses(self) -> list[str]:
        return [a for a in re.split(r"[\s,;]+", self.cleaned_data["addresses"]) if a]


class DeliveryFilterForm(forms.Form):
    status = forms.ChoiceField(required=False,
                               choices=[("", "Any status"), *Delivery.Status.choices])
    channel = forms.ModelChoiceField(queryset=None, required=False, empty_label="Any channel")
    event = forms.ChoiceField(required=False, choices=[("", "Any event"), *EVENTS.items()])

    def __init__(self, *args, tenant: Tenant, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["channel"].queryset = Channel.objects.for_tenant(tenant).order_by("name")

    def filters(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {"status": data.get("status"), "channel": data.get("channel"),
                "event": data.get("event")}
