"""Worker-side discovery of stdio servers: only for commands an operator allow-listed.

The control plane never runs a command a tenant supplied (the server's gateways report its
tools instead, ``registry/gateway_discovery.py``). An operator of a single-tenant install may
allow worker-side discovery for exact absolute paths in ``STDIO_DISCOVERY_COMMANDS``; even then
the child gets a fixed minimal environment and cannot read the worker's secrets:

* worker running as root: the child runs as ``nobody`` (``registry/stdio_launcher.py``), which
  can read no root process's ``/proc/<pid>/environ``;
* otherwise: every Tollgate process that loads settings with the allow-list set is
  non-dumpable (``governance/process.py``), so the ``/proc`` files of the worker, the web and
  beat belong to root and a same-uid child cannot read them or ptrace them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from django.conf import settings

from governance.process import hide_environment

logger = logging.getLogger(__name__)

LAUNCHER = Path(__file__).with_name("stdio_launcher.py")


def allowed(command: Sequence[str]) -> bool:
    """Whether the operator allow-listed ``command[0]`` exactly (never a prefix, never PATH)."""
    return bool(command) and command[0] in settings.STDIO_DISCOVERY_COMMANDS


def launch_prefix() -> list[str]:
    """What goes before the server's argv: the launcher, in an isolated interpreter."""
    return [sys.executable, "-I", "-S", str(LAUNCHER), "--"]


def wrap(command: Sequence[str]) -> list[str]:
    """The argv to spawn for an allow-listed ``command``; prepares this process first."""
    if not allowed(command):
        raise PermissionError(f"{command[0] if command else '(empty)'} is not in "
                              "STDIO_DISCOVERY_COMMANDS")
    hide_environment()  # done at settings load already; a no-op then
    return launch_prefix() + list(command)


def unwrap_message(message: str) -> str:
    """A discovery error message naming the server's command, not the launcher."""
    return message.replace(" ".join(launch_prefix()) + " ", "")
