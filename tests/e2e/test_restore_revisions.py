"""Restoring an older backup never splits the fleet (issue 20), with real processes: the control
plane (uvicorn, DEBUG off) and a Celery worker on a PostgreSQL database this test creates, the
reference gateway (``python -m gateway run``) in front of the demo's stdio MCP server, and the
backup taken with ``pg_dump`` and restored with ``pg_restore`` into a fresh database, as
docs/operations.md ("Backup and restore") says: load the dump, empty Tollgate's Redis database,
start the processes on it.

The backup is taken at r1; the gateway then runs r4. After the restore the control plane's
newest is r1 again, and an admin revokes the demo agent's grant. The gateway refuses the
restored bundle as a rollback and reports its r4 (with its hash); the control plane learns that
number, shows the conflict on the fleet page, raises the alert, and publishes above it: the
gateway ends up enforcing r5, which carries the revocation — no number names two bundles.
The worker is started only once the conflict has been seen, so that window is observable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
import requests
from mcp.client.session import ClientSession

from gateway.client import STATE_FILE
from tests.e2e_support import stop_process
from tests.gateway_support import AGENT_TOKEN, GatewayProcess, gateway_bundle, start_gateway
from tests.mcp_support import as_agent
from tests.outage_support import PYTHON, REPO, ControlPlane

pytestmark = pytest.mark.e2e

DATABASE_URL = os.environ.get("DATABASE_URL", "")
REDIS_URL = os.environ.get("REDIS_URL", "")
PG_TOOLS = [shutil.which(tool) for tool in ("pg_dump", "pg_restore", "psql")]

PUBLISH = """
import json
from bundles.publish import bundle_publish
from governance.tenancy.models import Tenant
bundle = bundle_publish(tenant=Tenant.objects.get(slug="acme"), trigger="before the restore",
                        force=True)
print(json.dumps({"revision": bundle.revision_number}))
"""

REVOKE = """
import json
from governance.audit.services import Actor
from governance.tenancy.models import Tenant
from registry import services as registry
from registry.models import Grant
acme = Tenant.objects.get(slug="acme")
grant = Grant.objects.for_tenant(acme).get(agent__name="hr-assistant", status="active")
registry.grant_revoke(tenant=acme, actor=Actor.system("restore test"), grant=grant,
                      reason="revoked after the restore")
print(json.dumps({"grant": grant.pk}))
"""

SESSION = """
import json
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
client = Client()
client.force_login(get_user_model().objects.get(username="admin"))
name = settings.SESSION_COOKIE_NAME
print(json.dumps({"name": name, "value": client.cookies[name].value}))
"""

FACTS = """
import json
from alerts.models import Alert
from alerts.services import alerts_evaluate_tenant
from bundles.models import Gateway, PublishState
from governance.audit.models import AuditEvent
from governance.tenancy.models import Tenant
acme = Tenant.objects.get(slug="acme")
if EVALUATE:
    alerts_evaluate_tenant(tenant=acme)
state = PublishState.objects.select_related("current").get(tenant=acme)
print(json.dumps({
    "last_revision": state.last_revision, "conflict_revision": state.conflict_revision,
    "current": state.current.revision_number,
    "gateway": Gateway.objects.get(tenant=acme, name="demo-gateway").active_revision,
    "alerts": list(Alert.objects.filter(tenant=acme, rule_kind="revision_conflict")
                   .values("status", "subject")),
    "conflicts": [e.after for e in AuditEvent.objects.filter(
        tenant=acme, action="bundle.revision_conflict").order_by("seq")],
    "publishes": list(AuditEvent.objects.filter(tenant=acme, action="bundle.published")
                      .order_by("seq").values_list("after__revision_number", "after__trigger")),
}, default=str))
"""


def _skip_reason() -> str | None:
    if urlsplit(DATABASE_URL).scheme not in ("postgres", "postgresql"):
        return "needs DATABASE_URL on PostgreSQL (the test creates its own databases there)"
    if not REDIS_URL:
        return "needs REDIS_URL"
    if not all(PG_TOOLS):
        return "needs pg_dump, pg_restore and psql"
    return None


def _database(name: str) -> str:
    return urlunsplit(urlsplit(DATABASE_URL)._replace(path=f"/{name}"))


def _pg(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)  # noqa: S603
    assert result.returncode == 0, f"{argv[0]} failed: {result.stdout}{result.stderr}"


def _psql(sql: str) -> None:
    _pg("psql", _database("postgres"), "-v", "ON_ERROR_STOP=1", "-qc", sql)


class Worker:
    """``celery worker`` in the control plane's environment, in a session of its own."""

    def __init__(self, server: ControlPlane) -> None:
        self.log = server.workdir / "worker.log"
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(  # noqa: S603 - fixed argv
                [PYTHON, "-m", "celery", "-A", "governance", "worker", "--pool", "solo",
                 "--loglevel", "INFO", "--without-gossip", "--without-mingle",
                 "--without-heartbeat"],
                cwd=REPO, env=server.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        _wait(lambda: "ready." in self.log.read_text(errors="replace"), "the worker",
              self.output)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        stop_process(self.proc)


def _wait(predicate: Callable[[], Any], what: str, output: Callable[[], str],
          timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"gave up waiting for {what}:\n{output()}")


def _held_revision(gw: GatewayProcess) -> int | None:
    """The revision in the gateway's own state.json (what it has accepted)."""
    try:
        return json.loads((gw.state_dir / "bundle" / STATE_FILE).read_text())["revision"]
    except (OSError, ValueError, KeyError):
        return None


def _agent(gw: GatewayProcess) -> tuple[list[str], bool, str]:
    """(tools listed, whether lookup_employee was refused, its text) for the demo agent."""

    async def work(session: ClientSession):
        listed = sorted(t.name for t in (await session.list_tools()).tools)
        result = await session.call_tool("lookup_employee", {"employee_id": "E100"})
        return listed, bool(result.is_error), " ".join(
            getattr(c, "text", "") for c in result.content)

    return as_agent(gw.url, AGENT_TOKEN, work)


def _gateway_row(fleet_html: str) -> str:
    match = re.search(r'<tr id="gateway-\d+"[^>]*>(.*?)</tr>', fleet_html, re.S)
    assert match, fleet_html[-3000:]
    return match.group(1)


@pytest.fixture
def databases() -> Iterator[tuple[str, str]]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    base = urlsplit(DATABASE_URL).path.strip("/")
    names = (f"{base}_rst_{uuid.uuid4().hex[:8]}", f"{base}_rst_{uuid.uuid4().hex[:8]}")
    _psql(f'CREATE DATABASE "{names[0]}"')
    try:
        yield names
    finally:
        for name in names:
            _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_revocation_after_restoring_an_older_backup_reaches_the_gateway(databases, tmp_path):
    original, restored = databases
    redis.Redis.from_url(REDIS_URL).flushdb()
    (tmp_path / "cp").mkdir()
    server = ControlPlane(tmp_path / "cp", _database(original), REDIS_URL)
    worker = gw = None
    try:
        server.manage("migrate", "--noinput", "-v0", timeout=300)
        server.manage("seed_demo", "--force")  # publishes r1
        server.start()
        worker = Worker(server)
        gw = start_gateway(server.url, tmp_path, token_file=server.var / "demo-gateway-token")
        _wait(lambda: _held_revision(gw) == 1, "the gateway at r1", gw.output)
        listed, refused, _ = _agent(gw)
        assert (listed, refused) == (["get_salary", "lookup_employee"], False)

        # The backup, at r1.
        dump = tmp_path / "tollgate.dump"
        _pg("pg_dump", "--format=custom", "--file", str(dump), _database(original))

        # Three more revisions after it; the gateway follows to r4.
        assert [server.script(PUBLISH)["revision"] for _ in range(3)] == [2, 3, 4]
        _wait(lambda: _held_revision(gw) == 4, "the gateway at r4", gw.output)
        held = gateway_bundle(gw)
        assert held.revision_number == 4

        # Disaster: restore the backup into an empty database, empty Redis, start again on it.
        _psql(f'CREATE DATABASE "{restored}"')
        _pg("pg_restore", "--no-owner", "--exit-on-error", "--dbname", _database(restored),
            str(dump))
        worker.stop()
        server.stop()
        redis.Redis.from_url(REDIS_URL).flushdb()
        server.env["DATABASE_URL"] = _database(restored)
        facts = server.script(FACTS.replace("EVALUATE", "False"))
        assert (facts["current"], facts["last_revision"]) == (1, 1)
        server.start()

        # After the restore an admin revokes the agent's grant. No worker runs yet: the build it
        # schedules waits in the broker.
        server.script(REVOKE)

        # The gateway refuses the restored r1 as a rollback and reports its r4 with its hash:
        # the fleet page shows the conflict, never "up to date".
        session = server.script(SESSION)
        cookies = {session["name"]: session["value"]}

        def fleet() -> str:
            response = requests.get(f"{server.url}/t/acme/gateways/", cookies=cookies,
                                    timeout=30)
            assert response.status_code == 200, response.text[-2000:]
            return response.text

        def conflict_shown() -> str | None:
            html = fleet()
            return html if "revision conflict" in html else None

        page = _wait(conflict_shown, "the fleet page to show the conflict", gw.output)
        row = _gateway_row(page)
        assert re.search(r'<td>r4 <span class="muted">of r1</span></td>', row), row
        assert "up to date" not in row
        assert 'id="conflict-count"' in page
        facts = server.script(FACTS.replace("EVALUATE", "False"))
        assert (facts["last_revision"], facts["conflict_revision"], facts["current"]) == (4, 4, 1)
        [conflict] = facts["conflicts"]
        assert (conflict["reason"], conflict["reported_revision"], conflict["reported_sha256"],
                conflict["our_sha256"]) == ("ahead", 4, held.sha256, None)
        [alert] = facts["alerts"]
        assert alert["status"] == "open"
        assert alert["subject"] == ("Gateway demo-gateway runs r4, ahead of this control "
                                    "plane's newest r1: the next bundle is published above r4")
        assert _held_revision(gw) == 4  # still enforcing its own verified r4

        # The worker builds the revocation, numbered above everything the fleet has seen.
        worker = Worker(server)
        _wait(lambda: _held_revision(gw) == 5, "the gateway at r5", gw.output)
        bundle = gateway_bundle(gw)
        assert bundle.revision_number == 5 and bundle.data["grants"] == []
        listed, refused, text = _agent(gw)
        assert (listed, refused) == ([], True)
        assert text == "denied by Tollgate: no grant of hr-assistant covers acme-hr/lookup_employee"

        # The fleet catches up; the alert resolves at the next evaluation.
        _wait(lambda: "up to date" in _gateway_row(fleet()), "the fleet page up to date",
              gw.output)
        facts = server.script(FACTS.replace("EVALUATE", "True"))
        assert (facts["current"], facts["gateway"], facts["last_revision"]) == (5, 5, 5)
        # The restored history: r1, then one build (the revocation's, or the conflict's if the
        # report came first) numbered r5 — r2 to r4 are never issued again.
        assert [revision for revision, _ in facts["publishes"]] == [1, 5]
        assert [a["status"] for a in facts["alerts"]] == ["resolved"]
        assert len(facts["conflicts"]) == 1
    finally:
        for process in (gw, worker, server):
            if process is not None:
                process.stop()
