from __future__ import annotations

from django.apps import AppConfig


class DecisionsConfig(AppConfig):
    name = "governance.decisions"
    label = "decisions"
    verbose_name = "Decisions"
