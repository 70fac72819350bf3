"""Web forms of the exporter pages (parsing only; the services check meaning)."""

from __future__ import annotations

from typing import Any

from django import forms

from exports.models import Exporter
from exports.services import START_BEGINNING, STARTS


class ExporterForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="e.g. “Splunk audit” or “SOC syslog”.")
    kind = forms.ChoiceField(choices=Exporter.Kind.choices, initial=Exporter.Kind.SPLUNK_HEC)
    stream = forms.ChoiceField(choices=Exporter.Stream.choices, initial=Exporter.Stream.AUDIT,
                               help_text="What it sends. Cannot change later.")
    enabled = forms.BooleanField(required=False, initial=True)
    start = forms.ChoiceField(choices=list(STARTS.items()), initial=START_BEGINNING,
                              widget=forms.RadioSelect, label="Start with")
    path = forms.CharField(
        required=False, max_length=100, label="File name",
        help_text="JSON lines only: a file name such as audit.jsonl, written inside this "
                  "tenant's export directory (no folders).",
        widget=forms.TextInput(attrs={"spellcheck": "false"}))
    host = forms.CharField(required=False, max_length=255,
                           help_text="Syslog only: the receiver's host name or IP address.",
                           widget=forms.TextInput(attrs={"spellcheck": "false"}))
    port = forms.IntegerField(required=False, min_value=1, max_value=65535,
                              help_text="Syslog only: usually 514 (UDP) or 601/6514 (TCP).")
    url = forms.CharField(
        required=False, max_length=2000, label="HEC URL",
        help_text="Splunk HEC only: e.g. https://splunk.example.com:8088/services/collector/"
                  "event.",
        widget=forms.TextInput(attrs={"spellcheck": "false"}))
    token = forms.CharField(
        required=False, max_length=500, label="HEC token", strip=False,
        help_text="Splunk HEC only: sent as “Authorization: Splunk <token>”. Stored encrypted.",
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))
    index = forms.CharField(required=False, max_length=80, label="HEC index",
                            help_text="Splunk HEC only, optional: the index events go to.")

    def __init__(self, *args, exporter: Exporter | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if exporter is not None:
            # Editing: the stream is fixed and the cursor has its own "Reset cursor" page.
            del self.fields["start"]
            self.fields["stream"].disabled = True
            self.fields["stream"].help_text = "Fixed: add another exporter for the other stream."
            if exporter.token_hint:
                self.fields["token"].help_text = (f"Set (ends {exporter.token_hint}); leave "
                                                  "empty to keep it.")

    @staticmethod
    def initial_for(exporter: Exporter) -> dict[str, Any]:
        return {field: getattr(exporter, field) for field in
                ("name", "kind", "stream", "enabled", "path", "host", "port", "url", "index")}


class ResetCursorForm(forms.Form):
    start = forms.ChoiceField(
        choices=[(START_BEGINNING, "From the beginning: send every stored event again"),
                 ("now", "From now: skip everything stored so far")],
        widget=forms.RadioSelect, label="Continue")
