"""The evidence pack form (parsing only; the service checks the period)."""

from __future__ import annotations

from datetime import date, timedelta

from django import forms

DEFAULT_DAYS = 90


def last_days(today: date, days: int = DEFAULT_DAYS) -> tuple[date, date]:
    """The default period: the last ``days`` days, today included."""
    return today - timedelta(days=days - 1), today


def previous_quarter(today: date) -> tuple[date, date]:
    """The calendar quarter before the one ``today`` is in."""
    first_month = 3 * ((today.month - 1) // 3) + 1
    this_quarter = date(today.year, first_month, 1)
    end = this_quarter - timedelta(days=1)
    return date(end.year, 3 * ((end.month - 1) // 3) + 1, 1), end


class DateInput(forms.DateInput):
    input_type = "date"


class EvidencePackForm(forms.Form):
    period_start = forms.DateField(
        label="From", widget=DateInput(format="%Y-%m-%d"),
        help_text="First day of the period (UTC), included.")
    period_end = forms.DateField(
        label="To", widget=DateInput(format="%Y-%m-%d"),
        help_text="Last day of the period (UTC), included; today at the latest.")
