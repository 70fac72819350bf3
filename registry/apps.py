from __future__ import annotations

from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "registry"
    verbose_name = "Registry"

    def ready(self) -> None:
        # The core's gateway API and pages know nothing of the registry: the registry adds the
        # discovery request header to status answers and the bound servers to gateway pages.
        from bundles import extensions
        from registry import gateway_bindings, gateway_discovery

        extensions.add_status_headers(gateway_discovery.status_headers)
        extensions.add_gateway_section(gateway_bindings.gateway_section)
