"""deploy/: the systemd units run commands that exist, with the flags of scripts/uvicorn-flags,
the stop signals and timeouts deploy/README.md explains, and the hardening; the environment
file template lists every setting Tollgate reads from the environment (a new one without a line
there fails here) and, filled in, starts with `check --deploy` clean."""

from __future__ import annotations

import ast
import inspect
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from governance import config
from governance.config import uvicorn_flags

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNITS = ("tollgate-web@.service", "tollgate-worker.service", "tollgate-beat.service")
INSTALL_DIR = "/opt/tollgate"
ENV_FILE = "/etc/tollgate/tollgate.env"
ENV_TEMPLATE = DEPLOY / "tollgate.env.example"
VAR_DIR = "/var/lib/tollgate"
REQUIRED = {"SECRET_KEY", "ALLOWED_HOSTS", "TOLLGATE_BASE_URL", "DATABASE_URL", "REDIS_URL",
            "SECRET_ENCRYPTION_KEYS", "TRUSTED_PROXY_COUNT", "BEHIND_TLS_PROXY"}


def _unit(name: str) -> dict[str, dict[str, list[str]]]:
    """section → key → values (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in (DEPLOY / "systemd" / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None and "=" in line, f"{name}: not a unit line: {raw!r}"
        key, value = line.split("=", 1)
        current.setdefault(key, []).append(value)
    return sections


def _one(unit: dict, key: str) -> str:
    [value] = unit["Service"][key]
    return value


@pytest.mark.parametrize("name", UNITS)
def test_every_unit_runs_a_command_of_the_checkout_with_the_environment_file(name):
    unit = _unit(name)
    argv = shlex.split(_one(unit, "ExecStart"))
    assert argv[0].startswith(f"{INSTALL_DIR}/.venv/bin/")
    program = REPO / argv[0].removeprefix(f"{INSTALL_DIR}/")
    assert os.access(program, os.X_OK), f"{program} is not in the virtualenv"
    assert _one(unit, "WorkingDirectory") == INSTALL_DIR
    assert _one(unit, "EnvironmentFile") == ENV_FILE
    assert _one(unit, "User") == "tollgate"
    assert _one(unit, "Restart") == "on-failure"
    assert _one(unit, "KillSignal") == "SIGTERM"
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "PrivateTmp": "yes", "ProtectHome": "yes", "UMask": "0027"}.items():
        assert _one(unit, key) == value, key
    # The one writable place holds TOLLGATE_VAR_DIR and BUNDLE_LOCAL_DIR of the template.
    assert unit["Service"]["ReadWritePaths"] == [VAR_DIR]
    env = _template()
    assert env["TOLLGATE_VAR_DIR"] == VAR_DIR
    assert env["BUNDLE_LOCAL_DIR"].startswith(VAR_DIR + "/")
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_web_unit_runs_uvicorn_with_the_flags_of_scripts_uvicorn_flags():
    unit = _unit("tollgate-web@.service")
    argv = shlex.split(_one(unit, "ExecStart"))
    assert argv[:6] == [f"{INSTALL_DIR}/.venv/bin/uvicorn", "governance.asgi:application",
                        "--host", "127.0.0.1", "--port", "%i"]
    flags = uvicorn_flags()
    assert argv[6:6 + len(flags)] == flags
    assert argv[6 + len(flags):] == ["--log-level", "info"]
    # --log-config is relative to WorkingDirectory (the checkout).
    log_config = flags[flags.index("--log-config") + 1]
    assert (REPO / log_config).is_file()
    # Held long polls are answered at once on SIGTERM: a few seconds, plus margin, never the
    # whole BUNDLE_MAX_WAIT_SECONDS.
    assert 10 <= int(_one(unit, "TimeoutStopSec")) < 60
    assert _one(unit, "KillMode") == "mixed"


def test_the_worker_stops_warm_and_beat_is_plain_celery():
    worker = _unit("tollgate-worker.service")
    argv = shlex.split(_one(worker, "ExecStart"))
    assert argv[1:4] == ["-A", "governance", "worker"]
    # Warm shutdown: SIGTERM to the main process only; the running tasks may use their limit.
    assert _one(worker, "KillMode") == "mixed"
    assert int(_one(worker, "TimeoutStopSec")) > settings.CELERY_TASK_TIME_LIMIT
    beat = _unit("tollgate-beat.service")
    assert shlex.split(_one(beat, "ExecStart"))[1:4] == ["-A", "governance", "beat"]
    assert (REPO / "governance" / "celery.py").is_file()


def test_the_units_pass_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (the parsing above still ran)")
    env_file = tmp_path / "tollgate.env"
    env_file.write_text(ENV_TEMPLATE.read_text())
    names = []
    for name in UNITS:
        text = (DEPLOY / "systemd" / name).read_text()
        text = text.replace(ENV_FILE, str(env_file)).replace(INSTALL_DIR, str(REPO))
        name = name.replace("@.", "@8001.")
        (tmp_path / name).write_text(text)
        names.append(f"./{name}")
    result = subprocess.run([analyze, "verify", "--man=no", *names], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_tollgate_manage_runs_manage_py_as_the_units_do():
    script = DEPLOY / "tollgate-manage"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["sh", "-n", str(script)], timeout=30).returncode == 0
    text = script.read_text()
    unit = _unit("tollgate-worker.service")
    assert f'dir="${{TOLLGATE_DIR:-{_one(unit, "WorkingDirectory")}}}"' in text
    assert f'env_file="${{TOLLGATE_ENV_FILE:-{_one(unit, "EnvironmentFile")}}}"' in text
    assert f"--uid={_one(unit, 'User')}" in text and f"UMask={_one(unit, 'UMask')}" in text
    assert '"$dir/.venv/bin/python" manage.py "$@"' in text


# --- The environment file template ----------------------------------------------------------

def _name_parameters() -> dict[str, list[int]]:
    """governance.config reader → positions of its parameters that are variable names."""
    found = {}
    for attr, function in vars(config).items():
        if inspect.isfunction(function) and function.__module__ == config.__name__:
            params = list(inspect.signature(function).parameters)
            positions = [i for i, p in enumerate(params) if p == "name" or p.endswith("_name")]
            if positions:
                found[attr] = positions
    return found


def env_names_read() -> set[str]:
    """Every variable governance/settings.py reads: through the readers of governance.config
    (their ``name`` parameters) or os.environ / os.getenv directly."""
    readers = _name_parameters()
    names: set[str] = set()
    tree = ast.parse((REPO / "governance" / "settings.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else ast.unparse(func)
            positions = readers.get(called, [])
            if called in ("os.environ.get", "os.getenv", "environ.get"):
                positions = [0]
            for index in positions:
                if index < len(node.args) and isinstance(node.args[index], ast.Constant):
                    names.add(node.args[index].value)
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
            if isinstance(node.slice, ast.Constant):
                names.add(node.slice.value)
    return names


def _template_lines() -> list[tuple[str, str, bool, str]]:
    """(name, value, active, comment above) of each variable line of the template."""
    lines = ENV_TEMPLATE.read_text().splitlines()
    found = []
    for index, line in enumerate(lines):
        match = re.match(r"^(#?)([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            above = lines[index - 1] if index else ""
            found.append((match.group(2), match.group(3), not match.group(1), above))
    return found


def _template() -> dict[str, str]:
    return {name: value for name, value, active, _ in _template_lines() if active}


def test_the_reader_scan_finds_known_settings():
    names = env_names_read()
    # Spot checks of each way a variable is read (plain, old name, database, networks).
    assert {"SECRET_KEY", "BUNDLE_KEY_ENCRYPTION_KEYS", "SECRET_ENCRYPTION_KEYS",
            "DATABASE_URL", "METRICS_ALLOWED_NETWORKS", "BUNDLE_MAX_WAIT_SECONDS"} <= names
    assert "INFO" not in names and len(names) > 80


def test_the_environment_template_lists_every_setting_once_with_a_comment():
    listed = [name for name, *_ in _template_lines()]
    assert len(listed) == len(set(listed)), "a variable is listed twice"
    read = env_names_read()
    missing = sorted(read - set(listed))
    assert not missing, (f"add these to deploy/tollgate.env.example (one comment line each): "
                         f"{missing}")
    stale = sorted(set(listed) - read)
    assert not stale, f"deploy/tollgate.env.example lists variables nothing reads: {stale}"
    for name, _, _, above in _template_lines():
        assert above.startswith("# ") and len(above) > 10, f"{name}: no comment line above it"


def test_the_required_settings_are_marked_and_set():
    marked = {name for name, _, _, above in _template_lines() if "[required]" in above}
    assert marked == REQUIRED
    active = _template()
    assert REQUIRED <= set(active)
    assert active["TRUSTED_PROXY_COUNT"] == "1" and active["BEHIND_TLS_PROXY"] == "true"
    assert active["DEBUG"] == "false"


def test_the_filled_in_template_starts_with_check_deploy_clean(tmp_path):
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TZ")}
    env |= _template()
    env |= {"SECRET_KEY": "x8#kQ2!vN7@pL4$zR1^wT6&yH3*bM9(cF5)dJ0_gS2+eA8=uK7-iO4~nE1",
            "SECRET_ENCRYPTION_KEYS": "cHJvZHVjdGlvbi1idW5kbGUta2V5LWZvci10ZXN0cyE=",
            "TOLLGATE_VAR_DIR": str(tmp_path), "BUNDLE_LOCAL_DIR": str(tmp_path / "bundles")}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout
