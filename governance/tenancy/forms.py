"""Web forms of the tenancy pages (validation only; writes go through services)."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError

from governance.tenancy.models import ApiToken
from governance.tenancy.roles import Role, role_covers

EXPIRY_CHOICES = [(7, "7 days"), (30, "30 days"), (90, "90 days"), (180, "180 days"),
                  (365, "365 days")]


def add_service_errors(form: forms.Form, exc: ValidationError) -> None:
    """Show a service's ValidationError on the form field it names (or on the whole form)."""
    if hasattr(exc, "error_dict"):
        for field, errors in exc.error_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, exc)


class InvitationForm(forms.Form):
    """Invite by e-mail address, or (with single sign-on) by IdP issuer and subject."""

    email = forms.CharField(
        label="E-mail address", max_length=254, required=False,
        help_text="They become a member when they next sign in with this address.",
    )
    issuer = forms.CharField(label="IdP issuer", max_length=500, required=False)
    subject = forms.CharField(
        label="IdP subject", max_length=255, required=False,
        help_text="Or invite by the subject (sub) your IdP sends for the person, instead of "
                  "an address.",
    )
    role = forms.ChoiceField(choices=Role.choices, initial=Role.VIEWER)

    def __init__(self, *args, sso: bool, issuer: str = "", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if sso:
            self.fields["issuer"].initial = issuer
        else:  # Password sign-in (the demo): only an account's address can take one up.
            del self.fields["issuer"]
            del self.fields["subject"]

    def clean(self) -> dict:
        data = super().clean()
        if data.get("email") and not data.get("subject"):
            data["issuer"] = ""  # only the pre-filled default: an address was given instead
        return data


class MemberEditForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)
    may_manage_group_mappings = forms.BooleanField(
        required=False,
        label="May manage IdP group mappings of this tenant",
        help_text="An object permission on this tenant only (django-guardian).",
    )


class GroupMappingForm(forms.Form):
    group = forms.CharField(label="IdP group", max_length=200)
    role = forms.ChoiceField(choices=Role.choices, initial=Role.VIEWER)


class GroupMappingRoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class TokenCreateForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What will use it, e.g. “CI pipeline”.")
    kind = forms.ChoiceField(choices=ApiToken.Kind.choices, initial=ApiToken.Kind.PERSONAL)
    role = forms.ChoiceField(choices=Role.choices)
    expires_in_days = forms.TypedChoiceField(
        choices=EXPIRY_CHOICES, coerce=int, initial=90, label="Expires in"
    )

    def __init__(self, *args, my_role: str, may_issue_service: bool, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["role"].choices = [
            (value, label) for value, label in Role.choices if role_covers(my_role, value)
        ]
        self.fields["role"].initial = Role.VIEWER
        if not may_issue_service:
            self.fields["kind"].choices = [(ApiToken.Kind.PERSONAL, "Personal")]


class TenantSettingsForm(forms.Form):
    registry_resync_minutes = forms.IntegerField(
        label="Re-sync MCP servers every (minutes)", min_value=0, max_value=7 * 24 * 60,
        help_text="Celery beat lists the tools of every active server this often and "
                  "quarantines drifted ones. 0 turns the schedule off (manual syncs only).",
    )
    decision_log_retention_days = forms.IntegerField(
        label="Keep decision logs for (days)", min_value=1, max_value=10 * 366,
        help_text="Gateway decision logs older than this are deleted by a daily Celery beat "
                  "purge (the purge itself is audited).",
    )
    escalation_decision_timeout_seconds = forms.IntegerField(
        label="A held call waits for a decision for (seconds)", min_value=60,
        max_value=7 * 24 * 3600, required=False,
        help_text="When an escalated tool call has no decision by then, it expires and the call "
                  "is denied. It applies to calls escalated from now on and reaches gateways in "
                  "the next bundle (60 to 604800; default 900). Empty: unchanged.",
    )
