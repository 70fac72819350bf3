from __future__ import annotations

from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "registry"
    verbose_name = "Registry"

    def ready(self) -> None:
        # The core's gateway API and pages know nothing of the registry: the registry adds the
        # discovery request header to status answers and the bound servers to gateway pages.
        # The bundle compiler reads the registry, so it lives here and registers itself.
        from bundles import extensions
        from registry import compiler, gateway_bindings, gateway_discovery

        extensions.set_compiler(compiler.compile_data)
        extensions.add_status_headers(gateway_discovery.status_headers)
        extensions.add_gateway_section(gateway_bindings.gateway_section)
