"""Queueing Celery tasks from services: ``enqueue_on_commit`` (and ``enqueue``), the one way.

A service names its task by dotted path (``"bundles.tasks.build_bundle"``); the task's module is
imported only when the message is sent, after the commit, so a ``services`` module never imports
its ``tasks`` module (``tasks`` import ``services``, never the reverse; pyproject.toml's
import-linter contract checks it).

The broker can be down when a write commits. The write stands (it has committed); the failure is
logged once, the same way for every task, and the periodic sweep of that app (Celery beat) sends
the work later: every queued object stays in its "queued" state until a worker picks it up.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

from django.db import transaction

log = logging.getLogger(__name__)


def _task(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def enqueue(task: str, *args: Any, countdown: float | None = None,
            on_failure: Callable[[], None] | None = None, **kwargs: Any) -> bool:
    """Send ``task`` (dotted path) with these arguments now; False (logged, ``on_failure``
    called) when the broker refuses it."""
    try:
        if countdown is None:
            _task(task).delay(*args, **kwargs)
        else:
            _task(task).apply_async(args=list(args), countdown=countdown,
                                    **({"kwargs": kwargs} if kwargs else {}))
    except Exception:  # broker down: the write has committed; the app's sweep sends it later
        log.warning("could not enqueue %s%r; the periodic sweep will send it", task, args,
                    exc_info=True)
        if on_failure is not None:
            on_failure()
        return False
    return True


def enqueue_on_commit(task: str, *args: Any, countdown: float | None = None,
                      on_failure: Callable[[], None] | None = None, **kwargs: Any) -> None:
    """:func:`enqueue` once the current transaction commits (at once outside one); never if it
    rolls back."""
    transaction.on_commit(lambda: enqueue(task, *args, countdown=countdown,
                                          on_failure=on_failure, **kwargs))
