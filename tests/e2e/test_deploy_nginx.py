"""deploy/ as an operator uses it: Debian's nginx, with the configuration `manage.py
deploy_config nginx` renders (deploy/nginx/tollgate.conf), in front of two web processes started
with the flags of scripts/uvicorn-flags, BUNDLE_ACCEL_REDIRECT on and TRUSTED_PROXY_COUNT=1.

Through nginx: the gateway contract's ETag/304 with the application's ETag; a held long poll
answered by a new bundle (and 304, not an HTML 504, at the end of its wait); bundle bodies sent
by nginx from the web processes' copies (group-readable, in a setgid directory of nginx's
workers' group) with the application's ETag and X-Bundle-Revision; a browser's sign-in passing
the CSRF origin check with the client address nginx saw; and a SIGKILLed web process costing no
request.

The working directory is under /tmp, readable by nginx's workers (www-data when run as root;
pytest's tmp_path is private to root), and removed afterwards.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests
from django.db import connection

from bundles import publish
from bundles.models import BundleBlob
from governance.audit.models import AuditEvent
from governance.config import uvicorn_flags
from tests.bundle_support import make_gateway, small_registry
from tests.e2e_support import free_port, stop_process
from tests.nginx_support import Nginx, main_conf, nginx_binary, worker_user

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[2]
ACCEL = "/_bundles/"
BUNDLES = "/api/v1/gateway/bundles/alpha"


def _database_url() -> str:
    s = connection.settings_dict
    return f"postgres://{s['USER']}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


class Web:
    """One web process as tollgate-web@.service starts it (uvicorn, scripts/uvicorn-flags)."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.port = free_port()
        self.log = workdir / f"web-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "governance.asgi:application", "--host",
             "127.0.0.1", "--port", str(self.port), *uvicorn_flags(), "--log-level", "warning"],
            cwd=REPO, env=self.env, stdout=self.log.open("a"), stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"uvicorn exited:\n{self.output()}")
            try:
                requests.get(f"{self.url}/healthz", timeout=5)
                return
            except requests.RequestException:
                if time.monotonic() > deadline:
                    pytest.fail(f"uvicorn did not answer within 120 s:\n{self.output()}")
                time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)

    def stop(self) -> None:
        stop_process(self.proc)


class Stack:
    def __init__(self, workdir: Path, bundle_dir: Path, webs: list[Web], nginx: Nginx,
                 url: str) -> None:
        self.workdir, self.bundle_dir, self.webs, self.nginx, self.url = (
            workdir, bundle_dir, webs, nginx, url)

    def get(self, path: str, token: str | None = None, base: str | None = None,
            **headers: str) -> requests.Response:
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return requests.get(f"{base or self.url}{path}", headers=headers, timeout=120)

    def diagnostics(self) -> str:
        return "\n".join([f"--- nginx error.log ---\n{self.nginx.error_log()}",
                          *(f"--- web {w.port} ---\n{w.output()}" for w in self.webs)])


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker):
    """collectstatic, two web processes, the rendered configuration, nginx; stopped after."""
    nginx_binary()  # fails with the install command when nginx is missing
    with django_db_blocker.unblock():
        if connection.vendor != "postgresql":
            pytest.skip("needs PostgreSQL: set DATABASE_URL=postgres://…")
        database_url = _database_url()
    if not os.environ.get("REDIS_URL"):
        pytest.skip("needs REDIS_URL (the web processes and this test share Redis pub/sub)")
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-deploy-"))
    workdir.chmod(0o755)  # noqa: S103 - nginx's workers reach the static files and bundles
    webs: list[Web] = []
    nginx = None
    try:
        var = workdir / "var"
        var.mkdir(mode=0o755)
        # deploy/README.md: owned by the web processes' user, group nginx's workers' group,
        # setgid (every copy takes that group), nothing for others.
        bundle_dir = var / "bundles"
        bundle_dir.mkdir()
        user = worker_user()
        if user is not None:
            os.chown(bundle_dir, -1, user.pw_gid)
        bundle_dir.chmod(0o2750)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BUNDLE_")} | {
            "DATABASE_URL": database_url, "DEBUG": "false", "ALLOWED_HOSTS": "127.0.0.1",
            # Plain HTTP here (TLS is nginx's job in production): cookies without Secure.
            "SECURE_SSL_REDIRECT": "false", "SECURE_COOKIES": "false",
            "TOLLGATE_VAR_DIR": str(var),
            "BUNDLE_LOCAL_DIR": str(bundle_dir), "BUNDLE_ACCEL_REDIRECT": ACCEL,
            "TRUSTED_PROXY_COUNT": "1", "PYTHONUNBUFFERED": "1",
        }
        subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
                       cwd=REPO, env=env, check=True, timeout=300)
        webs = [Web(env, workdir), Web(env, workdir)]
        for web in webs:
            web.start()
        port = free_port()
        rendered = subprocess.run(
            [sys.executable, "manage.py", "deploy_config", "nginx",
             *(arg for web in webs for arg in ("--upstream", f"127.0.0.1:{web.port}")),
             "--listen", f"127.0.0.1:{port}", "--server-name", "127.0.0.1"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert rendered.returncode == 0, rendered.stderr
        include = workdir / "tollgate.conf"
        include.write_text(rendered.stdout)
        nginx = Nginx(main_conf(workdir / "nginx", include))
        url = f"http://127.0.0.1:{port}"
        nginx.start(f"{url}/healthz")
        yield Stack(workdir, bundle_dir, webs, nginx, url)
    finally:
        if nginx is not None:
            nginx.stop()
        for web in webs:
            web.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def published(stack, transactional_db, tenant_a):
    """alpha's r1 and a gateway token (committed: the web processes read them)."""
    small_registry(tenant_a)
    _, token = make_gateway(tenant_a)
    bundle = publish.bundle_publish(tenant=tenant_a, trigger="test")
    return bundle, token


def _etag(bundle) -> str:
    return f'"{bundle.blob_id}"'


def test_etag_and_304_through_nginx_are_the_applications(stack, published):
    bundle, token = published
    first = stack.get(BUNDLES, token)
    assert first.status_code == 200, stack.diagnostics()
    assert first.headers["ETag"] == _etag(bundle)
    assert hashlib.sha256(first.content).hexdigest() == bundle.blob_id
    again = stack.get(BUNDLES, token, **{"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304, stack.diagnostics()
    assert again.headers["ETag"] == _etag(bundle)
    assert again.content == b""
    # Static files come from STATIC_ROOT through nginx, not from the application.
    css = stack.get("/static/css/tollgate.css")
    assert css.status_code == 200
    assert css.content == (REPO / "static" / "css" / "tollgate.css").read_bytes()
    assert "X-Request-ID" not in css.headers  # the application would have set one


def test_a_held_long_poll_is_answered_by_the_next_bundle_not_by_a_504(stack, published,
                                                                      tenant_a):
    bundle, token = published
    result: dict[str, requests.Response] = {}

    def poll() -> None:
        result["poll"] = stack.get(BUNDLES, token, **{"If-None-Match": _etag(bundle),
                                                      "Prefer": "wait=120"})

    poller = threading.Thread(target=poll)
    poller.start()
    poller.join(timeout=2)
    assert poller.is_alive(), "the poll was answered at once instead of being held"
    second = publish.bundle_publish(tenant=tenant_a, trigger="test", force=True)
    poller.join(timeout=120)
    response = result["poll"]
    assert response.status_code == 200, stack.diagnostics()
    assert response.headers["ETag"] == _etag(second) != _etag(bundle)
    assert response.headers["X-Bundle-Revision"] == "2"
    assert response.headers["Content-Type"] == "application/vnd.openpolicyagent.bundles"
    assert hashlib.sha256(response.content).hexdigest() == second.blob_id

    # Nothing new: the application answers 304 at the end of the wait (nginx waits longer).
    ended = stack.get(BUNDLES, token, **{"If-None-Match": _etag(second), "Prefer": "wait=2"})
    assert ended.status_code == 304, stack.diagnostics()
    assert ended.headers["ETag"] == _etag(second)


def test_bundle_bodies_are_sent_by_nginx_from_group_readable_copies(stack, published):
    bundle, token = published
    # Straight to a web process: an empty body and the redirect nginx acts on.
    direct = stack.get(BUNDLES, token, base=stack.webs[0].url)
    assert direct.status_code == 200 and direct.content == b""
    assert direct.headers["X-Accel-Redirect"] == f"{ACCEL}{bundle.blob_id}.tar.gz"

    via = stack.get(BUNDLES, token)
    assert via.status_code == 200, stack.diagnostics()
    assert via.content == bytes(BundleBlob.objects.get(pk=bundle.blob_id).content)
    assert via.headers["ETag"] == _etag(bundle)
    assert via.headers["X-Bundle-Revision"] == str(bundle.revision_number)
    assert via.headers["Content-Type"] == "application/gzip"
    assert via.headers["Cache-Control"] == "no-cache"
    assert "X-Accel-Redirect" not in via.headers

    # nginx's workers read the copy as their own user, through the directory's group only.
    copy = stack.bundle_dir / f"{bundle.blob_id}.tar.gz"
    info = copy.stat()
    assert stat.S_IMODE(info.st_mode) == 0o640
    user = worker_user()
    if user is not None:
        assert stack.nginx.worker_uids() == {user.pw_uid}
        assert info.st_uid != user.pw_uid and info.st_gid == user.pw_gid
    # The internal location is not reachable from outside.
    assert stack.get(f"{ACCEL}{bundle.blob_id}.tar.gz").status_code == 404


def test_a_browser_sign_in_through_nginx_passes_csrf_and_records_the_address_nginx_saw(
        stack, transactional_db):
    """The Host nginx forwards keeps its port (a browser's Origin names it: CSRF), and with
    TRUSTED_PROXY_COUNT=1 the address is the one nginx appended, never the client's own entry."""
    session = requests.Session()
    page = session.get(f"{stack.url}/login/", timeout=120)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = session.post(f"{stack.url}/login/", data={
        "username": "nobody-here", "password": "wrong", "csrfmiddlewaretoken": token,
    }, headers={"Origin": stack.url, "X-Forwarded-For": "203.0.113.9"}, allow_redirects=False,
        timeout=120)
    assert response.status_code == 400, stack.diagnostics()  # the form's error, not CSRF's 403
    [ip] = AuditEvent.objects.filter(action="auth.login_failed").values_list("ip", flat=True)
    assert ip == "127.0.0.1"


def test_a_killed_web_process_costs_no_request(stack, published):
    bundle, token = published
    killed = stack.webs[0]
    killed.kill()
    try:
        statuses = []
        for i in range(20):
            if i % 2:
                statuses.append(stack.get(BUNDLES, token).status_code)
            else:
                statuses.append(stack.get("/login/").status_code)
        assert statuses == [200] * 20, stack.diagnostics()
        # A request did meet the dead process, and went on to the other one.
        assert f"127.0.0.1:{killed.port}" in stack.nginx.error_log()
    finally:
        killed.start()
