"""Draining: a web process that was asked to stop answers its held long polls at once.

uvicorn stops on SIGTERM (or a first SIGINT) by closing its listening sockets and then waiting
for every open connection to finish, lifespan shutdown coming only after that: a bundle long
poll held with ``Prefer: wait=120`` would keep the process up for two minutes. So the first time
the ASGI application is called (uvicorn's own handlers are in place by then, in every process of
``--workers N`` too) ``install_signal_hook`` chains a handler in front of the server's: it marks
the process as draining, wakes every registered waiter, and hands the signal on unchanged.

Long polls race against it: ``remaining(deadline)`` is 0 while draining (so a held poll answers
now — 304 or the current state — and a poll arriving while draining is not held at all), and
waiters register an ``on_drain`` callback that wakes them. Nothing here knows a feature app.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# A plain flag and a reentrant lock: the signal handler runs on the main thread between two
# bytecodes of whatever runs there, possibly inside ``on_drain`` holding the lock (a plain Lock,
# or threading.Event's, would deadlock the process on its way out).
_draining = False
# Per event loop: what to call (on that loop) when draining starts. Weak, like the loops.
_callbacks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Callable[[], Any]]] = (
    weakref.WeakKeyDictionary())
_lock = threading.RLock()
_previous: dict[int, Any] = {}


def is_draining() -> bool:
    """True once this process was asked to stop."""
    return _draining


def remaining(deadline: float) -> float:
    """Seconds a long poll may still hold until ``deadline`` (a ``time.monotonic()`` value):
    0 while draining."""
    return 0.0 if _draining else deadline - time.monotonic()


def on_drain(callback: Callable[[], Any]) -> None:
    """Call ``callback`` on the running event loop when draining starts (at once if it has)."""
    loop = asyncio.get_running_loop()
    with _lock:
        _callbacks.setdefault(loop, []).append(callback)
    if _draining:
        loop.call_soon(callback)


def start_draining() -> None:
    """Mark the process as draining and wake every registered waiter (idempotent; safe from a
    signal handler or another thread: callbacks run on their own loops)."""
    global _draining
    if _draining:
        return
    _draining = True
    with _lock:
        registered = [(loop, list(callbacks)) for loop, callbacks in _callbacks.items()]
    for loop, callbacks in registered:
        for callback in callbacks:
            try:
                loop.call_soon_threadsafe(callback)
            except RuntimeError:  # that loop is closed: nothing waits on it
                break


def _handle(signum: int, frame: FrameType | None) -> None:
    start_draining()
    previous = _previous.get(signum)
    if callable(previous):
        previous(signum, frame)


def install_signal_hook() -> bool:
    """Chain the draining handler in front of the server's SIGTERM/SIGINT handlers. Only from
    the main thread, and only in front of a Python handler (the server's): with none there is
    no server to hand the signal to, and nothing is changed. True when installed (or already)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    installed = False
    for signum in DRAIN_SIGNALS:
        current = signal.getsignal(signum)
        if current is _handle:
            installed = True
            continue
        if not callable(current) or current is signal.default_int_handler:
            continue
        _previous[signum] = current
        signal.signal(signum, _handle)
        installed = True
    return installed


def reset() -> None:
    """Forget the draining state (tests only)."""
    global _draining
    _draining = False
    with _lock:
        _callbacks.clear()


__all__ = ["install_signal_hook", "is_draining", "on_drain", "remaining", "start_draining"]
