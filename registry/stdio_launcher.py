"""Start one allow-listed stdio MCP server with nothing of the worker (stdlib only, no Django).

Run by ``registry/stdio_sandbox.py`` as ``python -I -S stdio_launcher.py -- <argv>``: it drops
root to ``nobody`` (no supplementary groups), forbids regaining privileges (no_new_privs, so a
setuid program cannot either), leaves the worker's directory, and replaces itself with the
command under a fixed minimal environment — no variable of the worker is passed on.
"""

import ctypes
import os
import pwd
import sys

PR_SET_NO_NEW_PRIVS = 38
ENVIRONMENT = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}


def unprivileged_ids() -> tuple[int, int]:
    """(uid, gid) of the user ``nobody`` (65534 when the system has no such entry)."""
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return 65534, 65534
    return entry.pw_uid, entry.pw_gid


def main(args: list[str]) -> None:
    if "--" not in args or args.index("--") == len(args) - 1:
        sys.exit("usage: stdio_launcher.py -- <absolute command> [arguments…]")
    argv = args[args.index("--") + 1:]
    if os.geteuid() == 0:
        uid, gid = unprivileged_ids()
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        reason = os.strerror(ctypes.get_errno())
        sys.exit(f"stdio_launcher: prctl(PR_SET_NO_NEW_PRIVS) failed: {reason}")
    os.chdir("/")
    # The operator allow-listed argv[0] (STDIO_DISCOVERY_COMMANDS); the arguments are data.
    os.execve(argv[0], argv, ENVIRONMENT)  # noqa: S606


if __name__ == "__main__":
    main(sys.argv[1:])
