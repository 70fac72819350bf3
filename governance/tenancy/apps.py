from __future__ import annotations

from django.apps import AppConfig


class TenancyConfig(AppConfig):
    name = "governance.tenancy"
    label = "tenancy"
    verbose_name = "Tenancy and identity"

    def ready(self) -> None:
        from governance.tenancy.api import schema  # noqa: F401 - registers the OpenAPI scheme
