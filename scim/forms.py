from __future__ import annotations

from django import forms


class ScimTokenCreateForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="Which IdP connection uses it, e.g. "
                           "“Okta production”.")
