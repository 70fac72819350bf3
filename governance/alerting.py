"""The core's door to alerting, for code below the alerts app (the core, approvals, …).

Alerts sit high in the layers (they read registry, bundles, decision logs, exports, …), so code
below them cannot import ``alerts``. It reports an alertable fact here instead, and the alerts app
registers the handler from its ``AppConfig.ready()``; the call runs synchronously, inside the
caller's transaction, exactly as a direct call to ``alerts.services.alert_raise`` would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.dispatch import Signal

Raiser = Callable[..., Any]
_raiser: Raiser | None = None

audit_chain_checked = Signal()
"""Sent by the periodic audit verification for each tenant chain: ``tenant``, ``report``
(``governance.audit.services.ChainReport``)."""


def set_raiser(fn: Raiser) -> None:
    """Register the function that raises an alert (the alerts app's ``alert_raise``)."""
    global _raiser
    _raiser = fn


def alert_raise(**kwargs: Any) -> Any:
    """Raise an alert (keyword arguments of ``alerts.services.alert_raise``); None when no
    alerts app is installed."""
    return _raiser(**kwargs) if _raiser is not None else None
