"""Extension points of bundles, the gateway API and the gateway page, for the apps above.

Bundles sit below the registry in the layers (pyproject.toml), so they never import it; an app
above registers a function here from its ``AppConfig.ready()``: the registry compiles a tenant's
bundle data (registry/compiler.py), asks gateways to report a server's tools through a status
header, and lists a gateway's bound servers on its page.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

StatusHeaders = Callable[[Any], dict[str, str]]
"""``fn(gateway) -> {header: value}``: headers of the answer to the gateway's ``POST status``."""
GatewaySection = Callable[[Any, Any], str]
"""``fn(request, gateway) -> html``: a section of the gateway's page (rendered, escaped HTML)."""

Compiler = Callable[..., dict[str, Any]]
"""``fn(tenant, *, at) -> data``: the tenant's bundle data (``mcp/data.json``) at ``at``."""

_compiler: Compiler | None = None
_status_headers: list[StatusHeaders] = []
_gateway_sections: list[GatewaySection] = []


def set_compiler(fn: Compiler) -> None:
    """Register the function that compiles a tenant's bundle data."""
    global _compiler
    _compiler = fn


def compile_data(tenant: Any, *, at: Any) -> dict[str, Any]:
    """The tenant's bundle data, by the registered compiler."""
    if _compiler is None:
        raise RuntimeError("no bundle compiler registered (is the registry app installed?)")
    return _compiler(tenant, at=at)


def add_status_headers(fn: StatusHeaders) -> None:
    """Register ``fn`` (once, however often ``ready()`` runs)."""
    if fn not in _status_headers:
        _status_headers.append(fn)


def add_gateway_section(fn: GatewaySection) -> None:
    """Register ``fn`` (once)."""
    if fn not in _gateway_sections:
        _gateway_sections.append(fn)


def status_headers(gateway: Any) -> dict[str, str]:
    """Every registered function's headers for this gateway's status answer."""
    headers: dict[str, str] = {}
    for fn in _status_headers:
        headers.update(fn(gateway))
    return headers


def gateway_sections(request: Any, gateway: Any) -> list[str]:
    """The extra sections of the gateway's page, in registration order."""
    return [html for fn in _gateway_sections if (html := fn(request, gateway))]
