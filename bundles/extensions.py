"""Extension points of the gateway API and the gateway page, for the apps above the core.

The core never imports a feature app; an app that adds to a gateway's answer or page registers
a function here from its ``AppConfig.ready()`` (the registry asks gateways to report a server's
tools through a status header, and lists a gateway's bound servers on its page).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

StatusHeaders = Callable[[Any], dict[str, str]]
"""``fn(gateway) -> {header: value}``: headers of the answer to the gateway's ``POST status``."""
GatewaySection = Callable[[Any, Any], str]
"""``fn(request, gateway) -> html``: a section of the gateway's page (rendered, escaped HTML)."""

_status_headers: list[StatusHeaders] = []
_gateway_sections: list[GatewaySection] = []


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
