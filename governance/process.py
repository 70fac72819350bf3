"""Process hardening that depends on the operator's settings (stdlib only).

When workers may start allow-listed stdio servers (``STDIO_DISCOVERY_COMMANDS``), such a child
runs as ``nobody`` under a root worker (``registry/stdio_launcher.py``); under an unprivileged
user it would share the uid of every Tollgate process, whose ``/proc/<pid>/environ`` holds
``SECRET_KEY``, ``DATABASE_URL`` and ``SECRET_ENCRYPTION_KEYS``. So every Tollgate process
(web, worker and its forked pool, beat, management commands) that loads settings with that list
set makes itself non-dumpable: its ``/proc`` files then belong to root, and a same-uid process
can neither read them nor ptrace it. Forked children inherit this; ``execve`` resets it, so the
spawned server itself is an ordinary process.
"""

from __future__ import annotations

import ctypes
import os

PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4


def is_dumpable() -> bool:
    """Whether same-uid processes may read this process's /proc files."""
    return ctypes.CDLL(None).prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 1


def make_non_dumpable() -> None:
    """prctl(PR_SET_DUMPABLE, 0): this process's /proc files become root's."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def hide_environment() -> None:
    """Non-dumpable unless root (a root process's /proc files are already closed to nobody)."""
    if os.geteuid() != 0 and is_dumpable():
        make_non_dumpable()
