"""Worker-side stdio discovery (registry/stdio_sandbox.py): only the operator's allow-list, and
even then the child cannot read the worker's secrets (docs/security.md, threat model: tenant admin
→ host).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from governance.audit.services import Actor
from registry import gateway_discovery, services, stdio_sandbox, sync
from registry.models import ServerSync
from tests.governance.test_settings_env import _run

SYSTEM = Actor.system("test")
PROBE = Path(__file__).resolve().parents[1] / "stdio_probe.sh"
SECRET = "tollgate-probe-secret-3f9c1e7a"


@pytest.fixture
def probe():
    """The probe, copied where an unprivileged user can read and run it (the worktree may be
    in a directory only root can enter)."""
    directory = Path(tempfile.mkdtemp(prefix="tollgate-probe-"))
    directory.chmod(0o755)
    path = directory / "probe.sh"
    shutil.copyfile(PROBE, path)
    path.chmod(0o755)
    yield path
    shutil.rmtree(directory)


def test_an_allow_listed_command_cannot_read_the_workers_secrets(
        celery_worker_process, tenant_a, probe, settings):
    settings.STDIO_DISCOVERY_COMMANDS = [str(probe)]
    worker = celery_worker_process(STDIO_DISCOVERY_COMMANDS=str(probe),
                                   TOLLGATE_PROBE_SECRET=SECRET)
    database_url = os.environ.get("DATABASE_URL", "")
    # The tenant supplies the arguments: here, the worker's pid to look at.
    server = services.server_create(tenant=tenant_a, actor=SYSTEM, name="probe",
                                    transport="stdio",
                                    command=[str(probe), str(worker.process.pid)])

    run, created = sync.server_sync_request(tenant=tenant_a, actor=SYSTEM, server=server)
    assert created and run.via == ServerSync.Via.WORKER  # allow-listed: the worker runs it
    worker.wait_until(lambda: not ServerSync.objects.get(pk=run.pk).is_open, timeout=90)

    run.refresh_from_db()
    report = run.error_message
    assert run.status == ServerSync.Status.FAILED and "UID " in report, report
    assert SECRET not in report
    assert "TOLLGATE_PROBE_SECRET" not in report
    assert not database_url or database_url not in report
    assert f"DENIED /proc/{worker.process.pid}/environ" in report
    # Only the launcher's fixed environment reaches the child (PWD is the shell's own).
    assert "\nENV HOME LANG PATH PWD \nOWN \nUID " in report, report
    if os.geteuid() == 0:
        assert "UID 65534" in report  # nobody: no root process's /proc files are readable
    # The message names the server's command, not the launcher that started it.
    assert str(stdio_sandbox.LAUNCHER) not in report


def test_only_the_exact_absolute_commands_are_allowed(tenant_a, settings):
    settings.STDIO_DISCOVERY_COMMANDS = ["/usr/local/bin/acme-mcp"]

    def server(command):
        return services.server_create(tenant=tenant_a, actor=SYSTEM, name=command[0][-20:],
                                      transport="stdio", command=command)

    assert not gateway_discovery.needs_gateway(server(["/usr/local/bin/acme-mcp", "--x"]))
    for other in (["acme-mcp"], ["/usr/local/bin/../bin/acme-mcp"], ["/bin/sh", "-c", "x"],
                  ["/usr/local/bin/acme-mcp2"]):
        assert gateway_discovery.needs_gateway(server(other)), other


def test_a_relative_path_in_the_allow_list_stops_start_up(tmp_path):
    result = _run(["-c", "import django; django.setup()"], tmp_path,
                  DJANGO_SETTINGS_MODULE="governance.settings", DEBUG="true",
                  STDIO_DISCOVERY_COMMANDS="/usr/bin/acme-mcp, node")
    assert result.returncode != 0
    assert ("STDIO_DISCOVERY_COMMANDS: 'node' is not an absolute path" in result.stderr), (
        result.stderr)


def test_the_launcher_refuses_to_run_without_a_command():
    result = subprocess.run([sys.executable, "-I", "-S", str(stdio_sandbox.LAUNCHER)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "usage: stdio_launcher.py" in result.stderr


NON_ROOT_PROCESS = """
import ctypes, importlib, os, subprocess, sys
import django
django.setup()  # as root: every module is loaded while root can read them (/root is 0700)
from governance import process, settings as tollgate_settings
probe = sys.argv[1]
if os.geteuid() == 0:  # play a Tollgate process started by an unprivileged user
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # changing uid cleared it; a fresh process has it
# What the web, the worker, beat and manage.py do first, now as that user: load the settings.
importlib.reload(tollgate_settings)
print("DUMPABLE", process.is_dumpable())
# The spawned program is a same-uid process, as an allowed stdio server would be; it probes
# this process's environment (its parent's) the way a tenant's arguments could make it.
child = subprocess.run([probe, str(os.getpid())], capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin"})
print(child.stderr)
"""


@pytest.mark.parametrize("allow_list", [False, True])
def test_a_tollgate_process_that_is_not_root_hides_its_environment_from_a_same_uid_child(
        allow_list, probe, tmp_path):
    """Web, worker and beat load the same settings: with STDIO_DISCOVERY_COMMANDS set, each is
    non-dumpable from start, so an allowed server cannot read any of them (without the list,
    nothing runs a tenant's command, and the same probe does read a dumpable parent)."""
    var = Path(tempfile.mkdtemp(prefix="tollgate-var-"))
    var.chmod(0o777)
    extra = {"STDIO_DISCOVERY_COMMANDS": str(probe)} if allow_list else {}
    try:
        result = _run(["-c", NON_ROOT_PROCESS, str(probe)], tmp_path,
                      DJANGO_SETTINGS_MODULE="governance.settings", DEBUG="true",
                      TOLLGATE_VAR_DIR=str(var), TOLLGATE_PROBE_SECRET=SECRET, **extra)
    finally:
        shutil.rmtree(var)
    assert result.returncode == 0, result.stderr
    if not allow_list:  # the probe does find a dumpable same-uid parent's secrets
        assert "DUMPABLE True" in result.stdout
        assert SECRET in result.stdout, result.stdout
    else:
        assert "DUMPABLE False" in result.stdout
        assert SECRET not in result.stdout, result.stdout
        assert "DENIED /proc/" in result.stdout
