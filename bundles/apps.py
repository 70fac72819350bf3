from __future__ import annotations

from django.apps import AppConfig


class BundlesConfig(AppConfig):
    name = "bundles"
    label = "bundles"
    verbose_name = "Policy bundles"

    def ready(self) -> None:
        # Registry changes recorded in the audit trail schedule a (debounced) bundle build.
        from bundles import publish

        publish.connect()
