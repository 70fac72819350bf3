"""Worker-side discovery of stdio servers: only for commands an operator allow-listed.

The control plane never runs a command a tenant supplied (the server's gateways report its
tools instead, ``registry/gateway_discovery.py``). An operator of a single-tenant install may
allow worker-side discovery for exact absolute paths in ``STDIO_DISCOVERY_COMMANDS``; even then
the child gets a fixed minimal environment and cannot read the worker's secrets:

* worker running as root: the child runs as ``nobody`` (``registry/stdio_launcher.py``), which
  can read no root process's ``/proc/<pid>/environ``;
* otherwise: the worker makes itself non-dumpable before spawning, so its ``/proc`` files
  (``environ``, ``mem``) belong to root and a same-uid child cannot read them or ptrace it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from django.conf import settings

logger = logging.getLogger(__name__)

LAUNCHER = Path(__file__).with_name("stdio_launcher.py")
PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


def allowed(command: Sequence[str]) -> bool:
    """Whether the operator allow-listed ``command[0]`` exactly (never a prefix, never PATH)."""
    return bool(command) and command[0] in settings.STDIO_DISCOVERY_COMMANDS


def make_non_dumpable() -> None:
    """Make this process's /proc files unreadable to same-uid processes (prctl DUMPABLE 0)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def is_dumpable() -> bool:
    return ctypes.CDLL(None).prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 1


def launch_prefix() -> list[str]:
    """What goes before the server's argv: the launcher, in an isolated interpreter."""
    return [sys.executable, "-I", "-S", str(LAUNCHER), "--"]


def wrap(command: Sequence[str]) -> list[str]:
    """The argv to spawn for an allow-listed ``command``; prepares this process first."""
    if not allowed(command):
        raise PermissionError(f"{command[0] if command else '(empty)'} is not in "
                              "STDIO_DISCOVERY_COMMANDS")
    if os.geteuid() != 0 and is_dumpable():
        make_non_dumpable()
    return launch_prefix() + list(command)


def unwrap_message(message: str) -> str:
    """A discovery error message naming the server's command, not the launcher."""
    return message.replace(" ".join(launch_prefix()) + " ", "")
