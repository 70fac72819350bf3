"""`make run`'s supervisor: runs the processes scripts/run lists and stops them all together.

    supervise.py [--ready URL] [--banner TEXT] -- NAME COMMAND... [-- NAME COMMAND...]...

Starts every COMMAND, prints TEXT once the first process answers URL (or says so and stops if it
dies first), then waits. Ctrl-C (SIGINT), SIGTERM and SIGHUP stop everything and exit 0; any
process exiting on its own stops the others and exits non-zero.

SIGINT is handled here, in Python, because a shell cannot: bash cannot trap a signal that was
ignored when it started, and `scripts/run &` in a non-interactive shell starts with SIGINT
ignored. signal.signal() takes it back whatever the disposition was on entry.

Each process runs in its own process group, so that Ctrl-C in a terminal reaches this
supervisor alone and the processes are stopped once: SIGTERM to each process (each stops its own
children), SIGTERM to whatever they leave behind, and after GRACE seconds SIGKILL to whatever is
left of each group (the worker's pool, the gateway's upstream). A second Ctrl-C skips the grace
period. On Linux each process also gets SIGTERM if this supervisor is killed outright.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

GRACE = 20.0  # seconds a process has to stop on SIGTERM before SIGKILL
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def say(text: str, *, error: bool = False) -> None:
    """Print and flush; a closed terminal (SIGHUP) must not keep us from stopping the others."""
    try:
        print(text, file=sys.stderr if error else sys.stdout, flush=True)
    except OSError:
        pass


def parse(argv: list[str]) -> tuple[dict, list[tuple[str, list[str]]]]:
    options: dict = {"ready": None, "banner": None}
    while argv and argv[0] != "--":
        key, value, argv = argv[0].removeprefix("--"), argv[1], argv[2:]
        if key not in options:
            raise SystemExit(f"supervise.py: unknown option --{key}")
        options[key] = value
    commands = []
    while argv:
        argv = argv[1:]  # the "--"
        end = argv.index("--") if "--" in argv else len(argv)
        if end < 2:
            raise SystemExit("supervise.py: each `--` needs a name and a command")
        commands.append((argv[0], argv[1:end]))
        argv = argv[end:]
    if not commands:
        raise SystemExit("supervise.py: nothing to run")
    return options, commands


try:
    _PRCTL = ctypes.CDLL(None).prctl
except (OSError, AttributeError):  # not Linux
    _PRCTL = None


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies, even of SIGKILL (Linux)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Supervisor:
    def __init__(self, commands: list[tuple[str, list[str]]]) -> None:
        self.commands = commands
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.signals: list[int] = []

    def on_signal(self, signum: int, _frame) -> None:
        self.signals.append(signum)

    def start(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self.on_signal)
        for name, argv in self.commands:
            self.procs.append((name, subprocess.Popen(  # noqa: S603 - scripts/run's own commands
                argv, stdin=subprocess.DEVNULL, process_group=0, preexec_fn=_die_with_parent)))

    def exited(self) -> tuple[str, int] | None:
        """The first process that has exited and its status, if any."""
        for name, proc in self.procs:
            if proc.poll() is not None:
                code = proc.returncode
                return name, 128 - code if code < 0 else code
        return None

    def _signal_groups(self, sig: int) -> bool:
        """Send ``sig`` to every process group; whether any group still had a process."""
        alive = False
        for _, proc in self.procs:
            proc.poll()  # reap the leader, so that a zombie does not count as alive
            try:
                os.killpg(proc.pid, sig)
                alive = True
            except ProcessLookupError:
                pass
        return alive

    def stop(self) -> None:
        say("\nStopping Tollgate…")
        count = len(self.signals)
        for _, proc in self.procs:  # each process stops its own children first
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        leftovers_told = False
        deadline = time.monotonic() + GRACE
        while time.monotonic() < deadline and len(self.signals) == count:
            if not leftovers_told and all(proc.poll() is not None for _, proc in self.procs):
                self._signal_groups(signal.SIGTERM)  # whatever they left behind
                leftovers_told = True
            if not self._signal_groups(0):
                break
            time.sleep(0.1)
        if self._signal_groups(signal.SIGKILL):
            say("Tollgate: killed what did not stop in time.", error=True)
        for _, proc in self.procs:
            proc.wait()

    def ready(self, url: str) -> bool:
        try:
            urllib.request.urlopen(url, timeout=1).close()  # noqa: S310 - our own http URL
        except (OSError, urllib.error.URLError):
            return False
        return True


def main(argv: list[str]) -> int:
    options, commands = parse(argv)
    supervisor = Supervisor(commands)
    supervisor.start()
    ready_url, announced = options["ready"], False
    next_probe = time.monotonic()
    while not supervisor.signals:
        if gone := supervisor.exited():
            name, status = gone
            if ready_url and not announced and name == commands[0][0]:
                port = urllib.parse.urlsplit(ready_url).port
                say(f"The web server did not start (is port {port} taken? set PORT=…).",
                    error=True)
            else:
                say(f"A Tollgate process ({name}) exited (status {status}); stopping the "
                    "others.", error=True)
            supervisor.stop()
            return status or 1
        if not announced and time.monotonic() >= next_probe:
            announced = ready_url is None or supervisor.ready(ready_url)
            next_probe = time.monotonic() + 0.5
            if announced and options["banner"]:
                say(options["banner"])
        time.sleep(0.1)
    supervisor.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
