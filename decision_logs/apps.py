from __future__ import annotations

from django.apps import AppConfig


class DecisionsConfig(AppConfig):
    name = "decision_logs"
    label = "decisions"
    verbose_name = "Decisions"
