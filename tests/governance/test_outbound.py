"""The outbound guard (governance/outbound.py): SSRF targets are refused when a URL or host is
saved (services, API, forms) and again right before each connection (tool sync, notification
delivery, SIEM export), where DNS may have changed since (rebinding).

The suite allows loopback for its local receivers (tests/conftest.py); every test here turns
that off first (``strict``). DNS answers for made-up names come from a fake ``getaddrinfo``
(outside-machine DNS); the receivers and MCP servers are real and listen on 127.0.0.1.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx2
import pytest
from django.core.exceptions import ValidationError

from exports import services as exports
from exports.models import Exporter
from governance import outbound
from governance.audit.services import Actor
from notifications import services as notifications
from notifications.models import Channel, Delivery
from registry import services as registry
from registry import sync
from registry.models import McpServer, ServerSync, Tool
from tests.exports.test_exports import TOKEN, TcpReceiver
from tests.governance.test_settings_env import PROD_SECRET, _run

SYSTEM = Actor.system("test")
SECRET = "s3cret-signing-key-0123456789"
API = "/api/v1/t/alpha"
ROOT = Path(__file__).resolve().parents[2]
PUBLIC = "203.0.113.7"  # TEST-NET-3: public-looking, never routed

# (URL, address class) for URLs the URL fields' format check accepts, so only the guard can
# refuse them.
BLOCKED_URLS = [
    ("http://127.0.0.1:9/mcp", "loopback"),
    ("http://127.9.9.9/mcp", "loopback"),
    ("http://localhost:8080/mcp", "loopback"),
    ("http://good.example@127.0.0.1/mcp", "loopback"),
    ("http://[::1]:9/mcp", "loopback"),
    ("http://[::ffff:127.0.0.1]/mcp", "loopback"),
    ("http://[64:ff9b::7f00:1]/mcp", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
    ("http://100.100.100.200/latest/meta-data/", "metadata"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "metadata"),
    ("http://[::ffff:169.254.169.254]/latest/", "metadata"),
    ("http://169.254.10.20/mcp", "link-local"),
    ("http://[fe80::1]/mcp", "link-local"),
    ("http://0.0.0.0:8000/mcp", "unspecified"),
    ("http://[::]/mcp", "unspecified"),
    ("http://224.0.0.251/mcp", "multicast"),
    ("http://[ff02::1]/mcp", "multicast"),
    ("http://255.255.255.255/mcp", "broadcast"),
]
# Numeric IPv4 forms the C resolver reads as 127.0.0.1 (Django's URL validator already refuses
# them in URLs; a syslog host name can be one).
NUMERIC_LOOPBACK = ["2130706433", "0x7f.1", "0177.0.0.1", "127.1", "0x7f000001"]
ALLOWED_URLS = ["http://10.1.2.3:8080/mcp", "https://192.168.0.10/mcp", "http://172.16.5.5/mcp",
                "http://[fd12:3456::1]/mcp", f"https://{PUBLIC}/mcp", "https://[2001:db8::1]/mcp",
                "https://unresolvable.invalid/mcp"]


@pytest.fixture
def strict(settings):
    """Production default: nothing allowed."""
    settings.OUTBOUND_ALLOWED_NETWORKS = ""
    return settings


class FakeDns:
    """``socket.getaddrinfo`` answering for the names in ``answers`` (changeable at any time,
    like a rebinding DNS server), the real resolver for everything else."""

    def __init__(self, real) -> None:
        self.real = real
        self.answers: dict[str, list[str]] = {}
        self.later: dict[str, list[str]] = {}

    def rebind(self, name: str, first: str, then: str) -> None:
        """Answer ``first`` to the next lookup of ``name`` and ``then`` to every one after it:
        a DNS server rebinding between the guard's check and the connection."""
        self.answers[name], self.later[name] = [first], [then]

    def __call__(self, host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002
        name = host.decode() if isinstance(host, bytes) else host
        if name in self.later and name in self.answers:
            infos = []
            for address in self.answers[name]:
                infos += self.real(address, port, family, type, proto, flags)
            self.answers[name] = self.later[name]
            return infos
        if name in self.answers:
            infos = []
            for address in self.answers[name]:
                infos += self.real(address, port, family, type, proto, flags)
            return infos
        return self.real(host, port, family, type, proto, flags)


@pytest.fixture
def dns(monkeypatch):
    fake = FakeDns(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return fake


def _message(exc: ValidationError, field: str) -> str:
    return " ".join(exc.message_dict[field])


def _names(message: str, kind: str) -> bool:
    """The refusal names the address class (metadata host names are refused by name)."""
    return (f" {kind} address; outbound connections to loopback" in message
            or (kind == "metadata" and "is a cloud metadata host name;" in message))


# --- The guard itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "kind"), BLOCKED_URLS)
def test_every_blocked_form_is_refused_with_its_class(strict, url, kind):
    with pytest.raises(outbound.OutboundBlocked) as caught:
        outbound.check_url(url)
    assert caught.value.blocked.kind == kind
    assert _names(str(caught.value), kind) and "OUTBOUND_ALLOWED_NETWORKS" in str(caught.value)
    assert "/mcp" not in str(caught.value) and "meta-data" not in str(caught.value)  # no URL


@pytest.mark.parametrize("host", NUMERIC_LOOPBACK)
def test_numeric_ipv4_forms_are_read_as_the_resolver_reads_them(strict, host):
    with pytest.raises(outbound.OutboundBlocked) as caught:
        outbound.check_host(host, 514)
    assert (caught.value.blocked.address, caught.value.blocked.kind) == ("127.0.0.1", "loopback")
    assert str(caught.value).startswith(f"{host} resolves to 127.0.0.1, a loopback address;")


@pytest.mark.parametrize("url", ALLOWED_URLS)
def test_private_public_and_unresolvable_targets_pass(strict, url):
    outbound.check_url(url)  # private networks are allowed by default (documented)


def test_a_name_is_refused_if_any_of_its_addresses_is_blocked(strict, dns):
    dns.answers["api.partner.example"] = [PUBLIC, "127.0.0.1"]
    with pytest.raises(outbound.OutboundBlocked) as caught:
        outbound.check_url("https://api.partner.example/mcp")
    assert str(caught.value).startswith(
        "api.partner.example resolves to 127.0.0.1, a loopback address; outbound connections "
        "to loopback, link-local, metadata")
    dns.answers["api.partner.example"] = [PUBLIC]
    outbound.check_url("https://api.partner.example/mcp")


def test_allowed_networks_open_exactly_what_they_cover(settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = "127.0.0.0/8, 169.254.169.254/32"
    for url in ("http://127.0.0.1/", "http://[::ffff:127.0.0.1]/", "http://localhost/",
                "http://169.254.169.254/latest/"):
        outbound.check_url(url)
    for url, kind in (("http://[::1]/", "loopback"), ("http://169.254.10.20/", "link-local"),
                      ("http://metadata.google.internal/", "metadata")):  # names stay refused
        with pytest.raises(outbound.OutboundBlocked) as caught:
            outbound.check_url(url)
        assert caught.value.blocked.kind == kind


def test_a_malformed_allowed_network_stops_start_up(tmp_path):
    result = _run(["manage.py", "check"], tmp_path, SECRET_KEY=PROD_SECRET,
                  OUTBOUND_ALLOWED_NETWORKS="127.0.0.0/8,loopback")
    assert result.returncode == 2, result.stderr
    assert "OUTBOUND_ALLOWED_NETWORKS: 'loopback' is not a network" in result.stderr


# --- Save time: MCP servers ---------------------------------------------------------------------


@pytest.mark.parametrize(("url", "kind"), BLOCKED_URLS)
def test_a_server_url_is_refused_by_the_registry_service(strict, tenant_a, url, kind):
    with pytest.raises(ValidationError) as caught:
        registry.server_create(tenant=tenant_a, actor=SYSTEM, name="x",
                               transport="streamable-http", url=url)
    assert _names(_message(caught.value, "url"), kind)
    assert not McpServer.objects.exists()


def test_changing_a_servers_url_is_checked_but_other_edits_are_not(strict, tenant_a, dns):
    dns.answers["crm.acme.example"] = [PUBLIC]
    server = registry.server_create(tenant=tenant_a, actor=SYSTEM, name="crm", transport="sse",
                                    url="https://crm.acme.example/sse")
    with pytest.raises(ValidationError) as caught:
        registry.server_update(tenant=tenant_a, actor=SYSTEM, server=server,
                               url="http://169.254.169.254/")
    assert "169.254.169.254 is a metadata address" in _message(caught.value, "url")
    dns.answers["crm.acme.example"] = ["127.0.0.1"]  # the name moved: edits of other fields
    server = registry.server_update(tenant=tenant_a, actor=SYSTEM, server=server,
                                    description="CRM")  # … still save; the sync refuses it
    assert server.description == "CRM" and server.url == "https://crm.acme.example/sse"


def test_the_api_and_the_form_show_the_refusal_on_the_url(strict, admin, login, alice):
    response = admin.post(f"{API}/servers/", {
        "name": "crm", "transport": "streamable-http", "url": "http://[::ffff:127.0.0.1]:8080/mcp",
    }, format="json")
    assert response.status_code == 400
    assert "resolves to 127.0.0.1, a loopback address" in " ".join(response.json()["errors"]["url"])
    page = login(alice).post("/t/alpha/servers/new/", {
        "name": "crm", "transport": "sse", "url": "http://169.254.169.254/latest/",
        "risk_tier": "medium"})
    assert page.status_code == 400
    assert "169.254.169.254 is a metadata address" in page.content.decode()
    assert not McpServer.objects.exists()


def test_the_setting_allows_a_loopback_server(settings, tenant_a):
    settings.OUTBOUND_ALLOWED_NETWORKS = "127.0.0.0/8"
    server = registry.server_create(tenant=tenant_a, actor=SYSTEM, name="sidecar",
                                    transport="streamable-http", url="http://127.0.0.1:9000/mcp")
    assert server.pk


# --- Save time: notification channels and exporters --------------------------------------------


@pytest.mark.parametrize(("url", "kind"), BLOCKED_URLS)
@pytest.mark.parametrize("channel_kind", ["webhook", "slack"])
def test_a_webhook_or_slack_url_is_refused(strict, tenant_a, url, kind, channel_kind):
    with pytest.raises(ValidationError) as caught:
        notifications.channel_create(
            tenant=tenant_a, actor=SYSTEM, name="hook", kind=channel_kind, url=url,
            secret=SECRET if channel_kind == "webhook" else "")
    message = _message(caught.value, "url")
    assert _names(message, kind)
    assert not Channel.objects.exists()


def test_the_channel_api_refuses_a_loopback_webhook(strict, admin):
    response = admin.post(f"{API}/notification-channels/", {
        "name": "siem", "kind": "webhook", "url": "http://localhost:8080/in",
        "secret": SECRET}, format="json")
    assert response.status_code == 400
    assert "localhost resolves to 127.0.0.1, a loopback address" in " ".join(
        response.json()["errors"]["url"])


@pytest.mark.parametrize(("url", "kind"), BLOCKED_URLS)
def test_a_hec_url_is_refused(strict, tenant_a, url, kind):
    with pytest.raises(ValidationError) as caught:
        exports.exporter_create(tenant=tenant_a, actor=SYSTEM, name="splunk", kind="splunk_hec",
                                stream="audit", url=url, token=TOKEN)
    message = _message(caught.value, "url")
    assert _names(message, kind)
    assert not Exporter.objects.exists()


@pytest.mark.parametrize("kind", ["syslog_udp", "syslog_tcp"])
@pytest.mark.parametrize(("host", "address_class"), [
    *[(h, "loopback") for h in NUMERIC_LOOPBACK],
    ("127.0.0.1", "loopback"), ("localhost", "loopback"), ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"), ("[::ffff:7f00:1]", "loopback"),
    ("169.254.169.254", "metadata"), ("metadata.google.internal", "metadata"),
    ("fe80::1", "link-local"), ("0.0.0.0", "unspecified"),  # noqa: S104
    ("224.0.0.1", "multicast"),
])
def test_a_syslog_host_is_refused(strict, tenant_a, kind, host, address_class):
    with pytest.raises(ValidationError) as caught:
        exports.exporter_create(tenant=tenant_a, actor=SYSTEM, name="syslog", kind=kind,
                                stream="audit", host=host, port=514)
    message = _message(caught.value, "host")
    assert _names(message, address_class)
    assert not Exporter.objects.exists()


def test_the_exporter_form_shows_the_refusal(strict, login, alice):
    response = login(alice).post("/t/alpha/exports/new/", {
        "name": "syslog", "kind": "syslog_tcp", "stream": "audit", "start": "beginning",
        "enabled": "on", "host": "0x7f.1", "port": "514"})
    assert response.status_code == 400
    assert "0x7f.1 resolves to 127.0.0.1, a loopback address" in response.content.decode()
    assert not Exporter.objects.exists()


def test_the_setting_allows_loopback_exporters_and_channels(settings, tenant_a):
    settings.OUTBOUND_ALLOWED_NETWORKS = "127.0.0.0/8,::1/128"
    exports.exporter_create(tenant=tenant_a, actor=SYSTEM, name="syslog", kind="syslog_udp",
                            stream="audit", host="::1", port=514)
    notifications.channel_create(tenant=tenant_a, actor=SYSTEM, name="hook", kind="webhook",
                                 url="http://127.0.0.1:9/in", secret=SECRET)
    assert Exporter.objects.count() == Channel.objects.count() == 1


# --- Connection time: DNS rebinding after the save ------------------------------------------


class Requests(list):
    def __init__(self) -> None:
        super().__init__()
        self.hosts: list[str] = []


@pytest.fixture
def receiver():
    """A real HTTP server on 127.0.0.1 counting requests (webhook and HEC alike): their paths,
    and their Host headers in ``requests.hosts``."""
    requests = Requests()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            requests.hosts.append(self.headers.get("Host"))
            requests.append(self.path)
            body = b'{"text":"Success","code":0}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], requests
    server.shutdown()
    server.server_close()


def test_a_webhook_rebound_to_loopback_is_not_delivered(strict, tenant_a, dns, receiver,
                                                        django_capture_on_commit_callbacks):
    port, requests = receiver
    dns.answers["hooks.partner.example"] = [PUBLIC]
    notifications.channel_create(tenant=tenant_a, actor=SYSTEM, name="hook", kind="webhook",
                                 url=f"http://hooks.partner.example:{port}/in", secret=SECRET)
    dns.answers["hooks.partner.example"] = ["127.0.0.1"]  # rebinding
    with django_capture_on_commit_callbacks(execute=False):
        [delivery] = notifications.notify(tenant=tenant_a, event="approval.requested",
                                          subject="s", text="t", link="/t/alpha/approvals/")
    delivery = notifications.delivery_attempt(delivery_id=delivery.pk)
    assert delivery.attempts == 1 and delivery.status == Delivery.Status.PENDING  # retried
    assert delivery.last_error.startswith(
        "Not sent: hooks.partner.example resolves to 127.0.0.1, a loopback address")
    assert requests == []

    # Control: the same delivery reaches the receiver once loopback is allowed, so the refusal
    # above is the guard's doing, not a broken fake.
    strict.OUTBOUND_ALLOWED_NETWORKS = "127.0.0.0/8"
    delivery = notifications.delivery_attempt(delivery_id=delivery.pk)
    assert delivery.status == Delivery.Status.SENT and requests == ["/in"]


def test_a_hec_exporter_rebound_to_loopback_fails_and_keeps_its_cursor(strict, tenant_a, dns,
                                                                      receiver):
    port, requests = receiver
    dns.answers["splunk.partner.example"] = [PUBLIC]
    exp = exports.exporter_create(
        tenant=tenant_a, actor=SYSTEM, name="splunk", kind="splunk_hec", stream="audit",
        url=f"http://splunk.partner.example:{port}/services/collector/event", token=TOKEN)
    dns.answers["splunk.partner.example"] = ["127.0.0.1"]
    result = exports.exporter_run(exporter_id=exp.pk)
    exp.refresh_from_db()
    assert result.status == "failed" and exp.cursor == 0 and exp.consecutive_failures == 1
    assert exp.last_error.startswith(
        "Not sent: splunk.partner.example resolves to 127.0.0.1, a loopback address")
    assert requests == []
    probe = exports.exporter_test(tenant=tenant_a, actor=SYSTEM, exporter=exp)
    assert not probe.ok and "a loopback address" in probe.message and requests == []

    strict.OUTBOUND_ALLOWED_NETWORKS = "127.0.0.0/8"  # control
    result = exports.exporter_run(exporter_id=exp.pk, now=exp.next_attempt_at)
    assert result.status == "sent" and requests


def test_a_syslog_exporter_rebound_to_loopback_never_connects(strict, tenant_a, dns):
    tcp = TcpReceiver()
    try:
        dns.answers["syslog.partner.example"] = [PUBLIC]
        exp = exports.exporter_create(tenant=tenant_a, actor=SYSTEM, name="syslog",
                                      kind="syslog_tcp", stream="audit",
                                      host="syslog.partner.example", port=tcp.port)
        dns.answers["syslog.partner.example"] = ["127.0.0.1"]
        result = exports.exporter_run(exporter_id=exp.pk)
        exp.refresh_from_db()
        assert result.status == "failed" and exp.cursor == 0
        assert "syslog.partner.example resolves to 127.0.0.1, a loopback address" in (
            exp.last_error)

        strict.OUTBOUND_ALLOWED_NETWORKS = "127.0.0.0/8"  # control: the frames arrive
        result = exports.exporter_run(exporter_id=exp.pk, now=exp.next_attempt_at)
        assert result.status == "sent"
        assert len(tcp.connections) == 1  # only the allowed run connected
    finally:
        tcp.server.shutdown()
        tcp.server.server_close()


@pytest.mark.parametrize("when", ["before the check", "after the check"])
def test_a_server_rebound_to_loopback_fails_its_sync_without_connecting(strict, tenant_a, dns,
                                                                        when):
    """Before the check: the guard refuses the run. After it (the connection's own lookup gets
    127.0.0.1): the pinned connection refuses it; before connections were pinned, the MCP
    client resolved the name again and connected to the loopback listener."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    try:
        port = listener.getsockname()[1]
        dns.answers["mcp.partner.example"] = [PUBLIC]
        server = registry.server_create(tenant=tenant_a, actor=SYSTEM, name="partner",
                                        transport="streamable-http",
                                        url=f"http://mcp.partner.example:{port}/mcp")
        registry.server_transition(tenant=tenant_a, actor=SYSTEM, server=server,
                                   status="active")
        if when == "before the check":
            dns.answers["mcp.partner.example"] = ["127.0.0.1"]
        else:
            dns.rebind("mcp.partner.example", PUBLIC, "127.0.0.1")
        run, _ = sync.server_sync_request(tenant=tenant_a, actor=SYSTEM, server=server)
        run = sync.server_sync_execute(sync.server_sync_claim(run.pk))
        assert run.status == ServerSync.Status.FAILED
        assert run.error_code == sync.BLOCKED_ADDRESS == "blocked_address"
        assert run.error_message.startswith(
            "Not connected: mcp.partner.example resolves to 127.0.0.1, a loopback address")
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    finally:
        listener.close()


# --- Rebinding between the check and the connection (connections pinned to checked addresses) --


def test_a_webhook_rebound_after_the_check_is_not_delivered(strict, tenant_a, dns, receiver,
                                                          django_capture_on_commit_callbacks):
    """The sender's check sees a public address; the connection's own lookup, a moment later,
    gets 127.0.0.1. Before connections were pinned, the HTTP client resolved the name again
    itself and delivered to the loopback receiver."""
    port, requests = receiver
    dns.answers["hooks.partner.example"] = [PUBLIC]
    notifications.channel_create(tenant=tenant_a, actor=SYSTEM, name="hook", kind="webhook",
                                 url=f"http://hooks.partner.example:{port}/in", secret=SECRET)
    with django_capture_on_commit_callbacks(execute=False):
        [delivery] = notifications.notify(tenant=tenant_a, event="approval.requested",
                                          subject="s", text="t", link="/t/alpha/approvals/")
    dns.rebind("hooks.partner.example", PUBLIC, "127.0.0.1")
    delivery = notifications.delivery_attempt(delivery_id=delivery.pk)
    assert delivery.status == Delivery.Status.PENDING and requests == []
    assert delivery.last_error.startswith(
        "Not sent: hooks.partner.example resolves to 127.0.0.1, a loopback address")


def test_a_hec_exporter_rebound_after_the_check_sends_nothing(strict, tenant_a, dns, receiver):
    port, requests = receiver
    dns.answers["splunk.partner.example"] = [PUBLIC]
    exp = exports.exporter_create(
        tenant=tenant_a, actor=SYSTEM, name="splunk", kind="splunk_hec", stream="audit",
        url=f"http://splunk.partner.example:{port}/services/collector/event", token=TOKEN)
    dns.rebind("splunk.partner.example", PUBLIC, "127.0.0.1")
    result = exports.exporter_run(exporter_id=exp.pk)
    exp.refresh_from_db()
    assert result.status == "failed" and exp.cursor == 0 and requests == []
    assert exp.last_error.startswith(
        "Not sent: splunk.partner.example resolves to 127.0.0.1, a loopback address")


def test_pinned_connections_still_speak_to_the_name(strict, dns, receiver):
    """The request goes to the checked address but keeps the URL's host (Host header; TLS
    would send it as SNI and check the certificate against it)."""
    port, requests = receiver
    strict.OUTBOUND_ALLOWED_NETWORKS = "127.0.0.1/32"
    dns.answers["hooks.partner.example"] = ["127.0.0.1"]
    with httpx2.Client(transport=outbound.pinned_transport("test")) as client:
        response = client.post(f"http://hooks.partner.example:{port}/in", content=b"{}")
    assert response.status_code == 200 and requests == ["/in"]
    assert requests.hosts == [f"hooks.partner.example:{port}"]
    dns.answers["hooks.partner.example"] = ["127.0.0.2"]  # not allowed: refused, not connected
    with (httpx2.Client(transport=outbound.pinned_transport("test")) as client,
          pytest.raises(outbound.OutboundBlocked, match="127.0.0.2, a loopback address")):
        client.post(f"http://hooks.partner.example:{port}/in", content=b"{}")
    with (httpx2.Client(transport=outbound.pinned_transport("test")) as client,
          pytest.raises(httpx2.ConnectError, match="does not resolve")):
        client.post("http://nowhere.invalid/in", content=b"{}")
    assert requests == ["/in"]


def test_a_stdio_server_is_not_affected(strict, tenant_a, settings, everything_stdio_wrapper):
    """An operator-allowed stdio command (STDIO_DISCOVERY_COMMANDS) makes no connection."""
    settings.REGISTRY_SYNC_TIMEOUT = 30
    settings.STDIO_DISCOVERY_COMMANDS = [str(everything_stdio_wrapper)]
    server = registry.server_create(tenant=tenant_a, actor=SYSTEM, name="hr", transport="stdio",
                                    command=[str(everything_stdio_wrapper)])
    run, _ = sync.server_sync_request(tenant=tenant_a, actor=SYSTEM, server=server)
    run = sync.server_sync_execute(sync.server_sync_claim(run.pk))
    assert run.status == ServerSync.Status.SUCCEEDED, run.error_message
    assert Tool.objects.filter(server=server).exists()
