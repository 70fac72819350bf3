"""The reference gateway under faults, end to end: the control plane (live server) with the demo
tenant, ``python -m gateway run`` as its own process in front of the demo's real stdio MCP
server, an agent on the official MCP SDK client, and between gateway and control plane a relay
the test controls (``Relay``, a small reverse proxy). The relay can be stopped (connections
refused: the control plane is down), can tamper with the bundle it passes on (the signed
content changed, so the signature no longer covers it), or can replay an older authentic
bundle. Status reports and everything else pass through untouched, so what the gateway reports
about the fault is what the fleet page shows."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from bundles.models import Bundle, Gateway
from bundles.publish import bundle_publish
from decision_logs.models import DecisionLog
from governance.audit.services import Actor
from governance.tenancy.models import Tenant
from registry import services as registry
from registry.models import Grant
from tests.bundle_support import tar_files, with_data_json
from tests.e2e_support import free_port
from tests.gateway_support import GatewayProcess, agent_view, start_gateway, wait_listening

pytestmark = pytest.mark.django_db(transaction=True)

BUNDLE_PATH = "/api/v1/gateway/bundles/acme"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "transfer-encoding", "upgrade", "content-length", "host"}

PASS, TAMPER, REPLAY = "pass", "tamper", "replay"


def _etag(body: bytes) -> str:
    return f'"{hashlib.sha256(body).hexdigest()}"'


def data_json_of(tarball: bytes) -> bytes:
    return tar_files(tarball)["mcp/data.json"]


class Relay:
    """A reverse proxy from ``url`` to the control plane ``upstream``, under the test's control.

    ``mode``: PASS forwards everything as it is. TAMPER answers the bundle poll with the control
    plane's bundle whose ``mcp/data.json`` is replaced by ``tamper_data`` (ETag: the SHA-256 of
    what it sends, and a 304 when the gateway already has that ETag, as a consistent server
    would). REPLAY answers the bundle poll with ``replay_tarball`` under its own ETag unless the
    gateway says it has seen it (then the poll goes to the control plane). Every other request
    (keys, status reports, decision logs) is always forwarded. ``stop()`` closes the port and
    cuts the connections in flight; ``start()`` opens it again on the same port."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.port = free_port()
        self.mode = PASS
        self.tamper_data: bytes = b""
        self.replay_tarball: bytes = b""
        self.lock = threading.Lock()
        self.tampered_sent = 0  # 200 answers carrying the tampered bundle
        self.replayed_sent = 0  # 200 answers carrying the replayed bundle
        self.bundle_polls: list[str] = []  # If-None-Match of every bundle poll
        self._server: ThreadingHTTPServer | None = None
        self._open: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- control -------------------------------------------------------------------------------

    def start(self) -> Relay:
        relay = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request, client_address):  # a cut connection: expected
                pass

        class Handler(BaseHTTPRequestHandler):
            def setup(self):
                super().setup()
                with relay.lock:
                    relay._open.add(self.connection)

            def finish(self):
                try:
                    super().finish()
                finally:
                    with relay.lock:
                        relay._open.discard(self.connection)

            def log_message(self, *args):
                pass

            def do_GET(self):
                relay.handle(self)

            do_POST = do_HEAD = do_PUT = do_DELETE = do_GET

        self._server = Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self.lock:
            cut, self._open = list(self._open), set()
        for connection in cut:  # the long poll held for the gateway ends now, not in 5 s
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # --- one request ---------------------------------------------------------------------------

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        known = request.headers.get("If-None-Match", "")
        is_poll = request.command == "GET" and request.path.split("?")[0] == BUNDLE_PATH
        if is_poll:
            with self.lock:
                self.bundle_polls.append(known)
        if is_poll and self.mode == REPLAY:
            etag = _etag(self.replay_tarball)
            if etag not in known:
                with self.lock:
                    self.replayed_sent += 1
                return self._send(request, 200, {"ETag": etag, "Content-Type":
                                                 "application/vnd.openpolicyagent.bundles"},
                                  self.replay_tarball)
        status, response_headers, content = self._forward(request.command, request.path,
                                                          headers, body)
        # The mode as it is when the answer goes out: a long poll held since before the test
        # switched to TAMPER is tampered with too.
        if is_poll and self.mode == TAMPER and status == 200:
            content = with_data_json(content, self.tamper_data)
            response_headers["ETag"] = _etag(content)
            if response_headers["ETag"] in known:
                return self._send(request, 304, {"ETag": response_headers["ETag"]}, b"")
            with self.lock:
                self.tampered_sent += 1
        self._send(request, status, response_headers, content)

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes
                 ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            connection.request(method, path, body=body or None, headers=headers)
            response = connection.getresponse()
            content = response.read()
            kept = {k: v for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP}
            return response.status, kept, content
        finally:
            connection.close()

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, headers: dict[str, str],
              content: bytes) -> None:
        request.send_response(status)
        for name, value in headers.items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(content)))
        request.end_headers()
        if request.command != "HEAD" and content:
            request.wfile.write(content)


# --- the world -------------------------------------------------------------------------------


@pytest.fixture
def demo(live_server, settings, tmp_path):
    """The demo tenant seeded (revision 1 published), a relay in front of the live server, and
    the gateway pulling through it; torn down in reverse."""
    settings.DEBUG = True  # seed_demo refuses to create its known passwords otherwise
    settings.VAR_DIR = tmp_path
    call_command("seed_demo", stdout=io.StringIO())
    relay = Relay(live_server.url).start()
    gateways: list[GatewayProcess] = []

    def gateway(**options: Any) -> GatewayProcess:
        gw = start_gateway(relay.url, tmp_path, token_file=tmp_path / "demo-gateway-token",
                           **options)
        gateways.append(gw)
        wait_listening(gw)
        return gw

    world = {"tenant": Tenant.objects.get(slug="acme"), "relay": relay, "gateway": gateway,
             "record": Gateway.objects.get(name="demo-gateway")}
    try:
        yield world
    finally:
        for gw in gateways:
            gw.stop()
        relay.stop()


def reported(record: Gateway) -> Gateway:
    return Gateway.objects.get(pk=record.pk)


def wait_reported(gw: GatewayProcess, record: Gateway, what: str,
                  test: Callable[[Gateway], bool]) -> Gateway:
    return gw.wait_for(lambda: (lambda g: g if test(g) else None)(reported(record)), what)


def text(result: Any) -> str:
    return json.dumps(result.model_dump(mode="json"))


def assert_revision_1_policy(gw: GatewayProcess) -> None:
    """The demo grant in force: the reads are listed and the lookup reaches the real upstream;
    adjust_salary is not granted and refused."""
    listed, lookup, adjust = agent_view(gw)
    assert listed == ["get_salary", "lookup_employee"]
    assert not lookup.is_error, text(lookup)
    assert "Ada Lovelace" in text(lookup)  # the real HR server's answer
    assert adjust.is_error
    assert "not approved" in adjust.content[0].text


def assert_grant_revoked_policy(gw: GatewayProcess) -> None:
    """Revision 2 (the grant revoked): nothing is listed and even the lookup is refused."""
    listed, lookup, adjust = agent_view(gw)
    assert listed == []
    assert lookup.is_error and "Ada Lovelace" not in text(lookup)
    assert "denied by Tollgate" in lookup.content[0].text
    assert adjust.is_error


def revoke_and_publish(tenant: Tenant) -> Bundle:
    """A registry change (the demo grant revoked) and its bundle published: revision 2."""
    grant = Grant.objects.for_tenant(tenant).get(agent__name="hr-assistant")
    registry.grant_revoke(tenant=tenant, actor=Actor.system("test"), grant=grant,
                          reason="fault test")
    bundle = bundle_publish(tenant=tenant, trigger="registry change")
    assert bundle is not None and bundle.revision_number == 2
    return bundle


def fleet_row(tenant: Tenant, record: Gateway) -> str:
    """The gateway's row of the fleet page, as the demo tenant's admin sees it."""
    client = Client()
    client.force_login(get_user_model().objects.get(username="admin"),
                       backend="django.contrib.auth.backends.ModelBackend")
    response = client.get(reverse("bundles:gateways", args=[tenant.slug]))
    assert response.status_code == 200
    page = response.content.decode()
    start = page.index(f'<tr id="gateway-{record.pk}"')
    return page[start:page.index("</tr>", start)]


def refused(url: str) -> bool:
    try:
        httpx2.get(url, timeout=30)
    except httpx2.ConnectError:
        return True
    return False


# --- 1. the control plane goes down ----------------------------------------------------------


def test_the_gateway_keeps_enforcing_while_the_control_plane_is_down_even_after_a_restart(
        demo):
    relay, record = demo["relay"], demo["record"]
    gw = demo["gateway"]()
    wait_reported(gw, record, "revision 1 reported", lambda g: g.active_revision == 1)
    assert_revision_1_policy(gw)

    relay.stop()
    assert refused(relay.url)  # the control plane is unreachable from here on
    gw.wait_for(lambda: "unreachable" in gw.output(20000), "the gateway to notice the outage")
    # The last bundle still decides: the grant allows the real upstream call, the rest is refused.
    assert_revision_1_policy(gw)

    # Restarted while the control plane is still down: it enforces at once from its disk.
    gw.stop()
    assert (gw.state_dir / "bundle" / "bundle.tar.gz").is_file()
    again = demo["gateway"](state_dir=gw.state_dir, name="restarted")
    assert_revision_1_policy(again)
    again.wait_for(lambda: "unreachable" in again.output(20000),
                   "the restarted gateway to find the control plane down")
    before = reported(record).last_status_at

    # The control plane is back and publishes a change: the gateway picks it up and reports.
    back_at = timezone.now()
    relay.start()
    revoke_and_publish(demo["tenant"])
    status = wait_reported(again, record, "revision 2 reported after the outage",
                           lambda g: g.active_revision == 2)
    assert status.last_status_at > back_at > before
    assert_grant_revoked_policy(again)

    # No decision was lost to the outage: those taken while the control plane was down (by
    # both processes: the queue is on disk) are uploaded once it is back, each once.
    fresh = DecisionLog.objects.exclude(decision_id__startswith="demo-")
    again.wait_for(lambda: fresh.count() >= 8, "the decision-log upload")
    assert sorted(fresh.values_list("tool", "outcome", "bundle_revision")) == sorted(
        [("lookup_employee", "allow", 1), ("adjust_salary", "deny", 1)] * 3
        + [("lookup_employee", "deny", 2), ("adjust_salary", "deny", 2)])


# --- 2. a tampered bundle --------------------------------------------------------------------


def test_a_tampered_bundle_is_refused_the_old_policy_kept_and_the_error_shown(demo):
    relay, record, tenant = demo["relay"], demo["record"], demo["tenant"]
    gw = demo["gateway"]()
    wait_reported(gw, record, "revision 1 reported", lambda g: g.active_revision == 1)
    first = Bundle.objects.for_tenant(tenant).get(revision_number=1)

    # In transit, revision 2's data.json is swapped for revision 1's, which still holds the
    # grant that revision 2 revokes; the manifest and signature stay those of revision 2.
    relay.tamper_data = data_json_of(bytes(first.blob.content))
    relay.mode = TAMPER
    second = revoke_and_publish(tenant)
    assert data_json_of(bytes(second.blob.content)) != relay.tamper_data

    status = wait_reported(gw, record, "the refusal reported",
                           lambda g: "hash_mismatch" in g.last_error)
    assert "'mcp/data.json' does not match its signed SHA-256" in status.last_error
    assert status.active_revision == 1  # accepted, the tampered bundle would run as r2
    assert relay.tampered_sent == 1
    assert_revision_1_policy(gw)  # revision 1 still decides (revision 2 refuses the lookup)

    row = fleet_row(tenant, record)
    assert "hash_mismatch" in row
    assert "does not match its signed SHA-256" in row
    assert "r1" in row and "of r2" in row and "1 behind" in row

    # The refused bundle is not downloaded again: later polls name its ETag.
    polls = len(relay.bundle_polls)
    gw.wait_for(lambda: len(relay.bundle_polls) >= polls + 2, "two more polls")
    assert relay.tampered_sent == 1
    tampered_etag = _etag(with_data_json(bytes(second.blob.content), relay.tamper_data))
    assert tampered_etag in relay.bundle_polls[-1]

    # The tampering stops: the authentic revision 2 is accepted and the error cleared.
    relay.mode = PASS
    wait_reported(gw, record, "revision 2 reported",
                  lambda g: g.active_revision == 2 and not g.last_error)
    assert_grant_revoked_policy(gw)
    row = fleet_row(tenant, record)
    assert "hash_mismatch" not in row and "up to date" in row


# --- 3. a replayed older bundle --------------------------------------------------------------


def test_a_replayed_older_bundle_is_refused_as_a_rollback(demo):
    relay, record, tenant = demo["relay"], demo["record"], demo["tenant"]
    gw = demo["gateway"]()
    wait_reported(gw, record, "revision 1 reported", lambda g: g.active_revision == 1)
    old = bytes(Bundle.objects.for_tenant(tenant).get(revision_number=1).blob.content)
    revoke_and_publish(tenant)
    wait_reported(gw, record, "revision 2 reported", lambda g: g.active_revision == 2)
    assert_grant_revoked_policy(gw)

    # Revision 1 is authentic (validly signed, unexpired) and still grants the lookup.
    relay.replay_tarball = old
    relay.mode = REPLAY
    status = wait_reported(gw, record, "the rollback reported",
                           lambda g: "rollback" in g.last_error)
    assert "revision 1 is older than the accepted revision 2" in status.last_error
    assert status.active_revision == 2
    assert_grant_revoked_policy(gw)  # revision 2 stays in force

    row = fleet_row(tenant, record)
    assert "rollback" in row and "older than the accepted revision 2" in row
    assert "r2" in row and "up to date" in row

    # Not fetched again; and on disk the newer bundle stays.
    polls = len(relay.bundle_polls)
    gw.wait_for(lambda: len(relay.bundle_polls) >= polls + 1, "another poll")
    assert relay.replayed_sent == 1
    assert _etag(old) in relay.bundle_polls[-1]
    state = json.loads((gw.state_dir / "bundle" / "state.json").read_text())
    assert state["revision"] == 2
    assert Path(gw.state_dir / "bundle" / "bundle.tar.gz").read_bytes() != old


