"""SIEM exporters: formats, at-least-once delivery with a stored cursor, backoff, the settle
window, tenant isolation, lag, and the pages and API.

Every receiver is real and local, started by the test: a UDP socket and a TCP server that parse
RFC 5424 + CEF (octet counting on TCP), an HTTP server checking the Splunk HEC format and token,
and files in a temporary export directory.
"""

from __future__ import annotations

import json
import os
import re
import socket
import socketserver
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from decision_logs.models import DecisionLog
from exports import formats, selectors, services, tasks
from exports.models import Exporter
from governance.audit.api.serializers import AuditEventOut
from governance.audit.models import AuditEvent
from governance.audit.services import Actor, audit_record
from governance.secrets import decrypt_text, encrypt_text

SYSTEM = Actor.system("test")
TOKEN = "3f1c9a2e-0b7d-4c55-9e61-7a8b9c0d1e2f"
API = "/api/v1/t/alpha"
WEB = "/t/alpha/exports"
NASTY = "pipe|back\\slash=eq\nnew line"


@pytest.fixture(autouse=True)
def _export_dir(settings, tmp_path):
    settings.EXPORT_FILE_DIR = tmp_path / "exports"
    return settings.EXPORT_FILE_DIR


# --- Local receivers ---------------------------------------------------------------------------


def _wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("the receiver never got what was expected")


class UdpReceiver:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.datagrams: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                self.datagrams.append(self.sock.recv(65535))
            except TimeoutError:
                continue

    def wait_for(self, count: int) -> list[bytes]:
        _wait(lambda: len(self.datagrams) >= count)
        return self.datagrams


@pytest.fixture
def udp():
    receiver = UdpReceiver()
    yield receiver
    receiver.stop.set()
    receiver.thread.join(timeout=2)
    receiver.sock.close()


class TcpReceiver:
    """Reads each connection to its end; ``connections`` holds the raw bytes of each."""

    def __init__(self) -> None:
        self.connections: list[bytes] = []
        rec = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                rec.connections.append(self.rfile.read())

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def frames(self) -> list[bytes]:
        return [frame for data in self.connections for frame in octet_frames(data)]


@pytest.fixture
def tcp():
    receiver = TcpReceiver()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


class HecReceiver:
    """A Splunk HEC look-alike: checks the path and ``Authorization: Splunk <token>``, records
    each request, answers queued ``(status, body)`` pairs, then ``{"text":"Success","code":0}``."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.answers: list[tuple[int, bytes]] = []
        self.delay = 0.0
        self.url = ""

    def events(self) -> list[dict]:
        """Every HEC event of every request the receiver accepted, in order."""
        return [e for r in self.requests if r["accepted"] for e in json_objects(r["body"])]


@pytest.fixture
def hec():
    rec = HecReceiver()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if rec.delay:
                time.sleep(rec.delay)
            if self.path != "/services/collector/event":
                status, answer = 404, b'{"text":"Not found","code":404}'
            elif self.headers.get("Authorization") != f"Splunk {TOKEN}":
                status, answer = 401, b'{"text":"Invalid token","code":4}'
            else:
                with lock:
                    status, answer = (rec.answers.pop(0) if rec.answers
                                      else (200, b'{"text":"Success","code":0}'))
            rec.requests.append({"headers": dict(self.headers), "body": body,
                                 "accepted": status == 200 and b'"code":0' in answer})
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/services/collector/event"
    yield rec
    server.shutdown()
    server.server_close()


# --- Wire-format parsers (independent of the code under test) ----------------------------------


def octet_frames(data: bytes) -> list[bytes]:
    """RFC 6587 octet counting; fails unless the counts tile the stream exactly."""
    frames, i = [], 0
    while i < len(data):
        space = data.index(b" ", i)
        length = int(data[i:space])
        frames.append(data[space + 1:space + 1 + length])
        i = space + 1 + length
        assert frames[-1].startswith(b"<"), "a frame length did not match"
    assert i == len(data)
    return frames


SYSLOG_HEAD = re.compile(rb"<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) ")


def parse_syslog(raw: bytes) -> dict:
    """RFC 5424: PRI, VERSION, TIMESTAMP, HOSTNAME, APP-NAME, PROCID, MSGID, SD, MSG."""
    match = SYSLOG_HEAD.match(raw)
    assert match, raw[:80]
    pri, stamp, host, app, procid, msgid = match.groups()
    text = raw[match.end():].decode()
    assert text.startswith("["), text[:40]
    i = text.index(" ")
    sd_id, params = text[1:i], {}
    while text[i] == " ":
        eq = text.index("=", i)
        key, i, value = text[i + 1:eq], eq + 2, []
        while text[i] != '"':
            if text[i] == "\\":
                i += 1
            value.append(text[i])
            i += 1
        params[key] = "".join(value)
        i += 1
    assert text[i] == "]" and text[i + 1] == " "
    return {"pri": int(pri), "timestamp": stamp.decode(), "hostname": host.decode(),
            "app": app.decode(), "procid": procid.decode(), "msgid": msgid.decode(),
            "sd_id": sd_id, "sd": params, "msg": text[i + 2:]}


def parse_cef(text: str) -> tuple[list[str], dict[str, str]]:
    """Seven header fields (``\\|`` and ``\\\\`` unescaped) and the extension (``\\=``,
    ``\\\\``, ``\\n`` unescaped; a key is the word before an unescaped ``=``)."""
    header, buf, i = [], [], 0
    while len(header) < 7:
        c = text[i]
        if c == "\\":
            buf.append(text[i + 1])
            i += 2
        elif c == "|":
            header.append("".join(buf))
            buf, i = [], i + 1
        else:
            buf.append(c)
            i += 1
    extension, key, buf = {}, None, []
    rest = text[i:]
    j = 0
    while j < len(rest):
        c = rest[j]
        if c == "\\":
            nxt = rest[j + 1]
            buf.append({"n": "\n", "r": "\r"}.get(nxt, nxt))
            j += 2
            continue
        if c == "=":
            before = "".join(buf)
            value, _, new_key = before.rpartition(" ")
            if key is not None:
                extension[key] = value
            key, buf = new_key, []
        else:
            buf.append(c)
        j += 1
    if key is not None:
        extension[key] = "".join(buf)
    return header, extension


def json_objects(body: bytes) -> list[dict]:
    """HEC's batch: JSON objects one after the other."""
    decoder, text, i, found = json.JSONDecoder(), body.decode(), 0, []
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i == len(text):
            return found
        obj, i = decoder.raw_decode(text, i)
        found.append(obj)


# --- Helpers ------------------------------------------------------------------------------------


def audit(tenant, repr_: str = "thing", action: str = "thing.changed") -> AuditEvent:
    with transaction.atomic():
        return audit_record(tenant=tenant, actor=Actor.system("sentinel"), action=action,
                            object_type="test.thing", object_id="7", object_repr=repr_,
                            after={"colour": "blue"})


def audit_ids(tenant) -> list[int]:
    return list(AuditEvent.objects.filter(tenant=tenant).order_by("id")
                .values_list("id", flat=True))


_n = iter(range(1, 10**6))


def decision(tenant, *, received_at=None, outcome="deny", reason="no grant", **fields):
    n = next(_n)
    now = timezone.now()
    return DecisionLog.objects.create(
        tenant=tenant, decision_id=fields.pop("decision_id", f"dec-{n}"),
        timestamp=now - timedelta(minutes=2), received_at=received_at or now - timedelta(
            minutes=1), agent="payroll-bot", principal="spiffe://alpha/payroll-bot",
        server="payroll", tool="read_salary", call_id=f"call-{n}", arguments_sha256="ab" * 32,
        outcome=outcome, reason=reason, **fields)


def exporter(tenant, kind="jsonl", stream="audit", **kwargs) -> Exporter:
    defaults = {"jsonl": {"path": f"{stream}.jsonl"}, "splunk_hec": {"token": TOKEN}}
    return services.exporter_create(tenant=tenant, actor=SYSTEM, name=kwargs.pop("name", kind),
                                    kind=kind, stream=stream,
                                    **(defaults.get(kind, {}) | kwargs))


def caught_up(exp: Exporter) -> Exporter:
    """Skip what is stored, its own creation event included."""
    Exporter.objects.filter(pk=exp.pk).update(cursor=selectors.stream_head(exp.tenant,
                                                                           exp.stream))
    exp.refresh_from_db()
    return exp


def run(exp: Exporter, now=None, **kwargs) -> services.RunResult:
    result = services.exporter_run(exporter_id=exp.pk, now=now, **kwargs)
    exp.refresh_from_db()
    return result


def file_lines(settings, tenant, name) -> list[dict]:
    path = settings.EXPORT_FILE_DIR / tenant.slug / name
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def actions(tenant) -> list[str]:
    return list(AuditEvent.objects.filter(tenant=tenant, action__startswith="exporter.")
                .order_by("seq").values_list("action", flat=True))


# --- JSON lines ---------------------------------------------------------------------------------


def test_jsonl_appends_each_audit_event_in_full_and_moves_the_cursor(settings, tenant_a):
    audit(tenant_a, "first")
    exp = exporter(tenant_a)
    audit(tenant_a, NASTY)
    result = run(exp)
    ids = audit_ids(tenant_a)
    assert (result.status, result.sent) == ("sent", len(ids))
    lines = file_lines(settings, tenant_a, "audit.jsonl")
    assert [line["id"] for line in lines] == ids
    raw = (settings.EXPORT_FILE_DIR / "alpha" / "audit.jsonl").read_bytes()
    assert raw.count(b"\n") == len(ids)  # one object per line, the newline inside escaped
    last = AuditEvent.objects.get(pk=ids[-1])
    expected = {"type": "audit", "tenant": "alpha",
                **json.loads(json.dumps(AuditEventOut(last).data))}
    assert lines[-1] == expected
    assert lines[-1]["object_repr"] == NASTY and lines[-1]["hash"] == last.hash
    assert (exp.cursor, exp.exported_total, exp.consecutive_failures) == (ids[-1], len(ids), 0)
    assert exp.last_success_at is not None and exp.status == "ok"

    # Caught up: nothing is written twice; a new event follows on its own line.
    assert run(exp).status == "idle"
    new = audit(tenant_a, "third")
    assert run(exp).sent == 1
    assert [line["id"] for line in file_lines(settings, tenant_a, "audit.jsonl")] == [*ids,
                                                                                      new.pk]


def test_jsonl_decision_lines_carry_every_column(settings, tenant_a):
    row = decision(tenant_a, arguments={"employee": "e-17"}, labels={"region": "eu"},
                   bundle_revision=12, grant_id=4, outcome="escalate",
                   escalation_id="6a1f0f5e-3b1c-4a53-9d0e-0c7c3d6f1a22")
    exp = exporter(tenant_a, stream="decisions")
    assert run(exp).sent == 1
    [line] = file_lines(settings, tenant_a, "decisions.jsonl")
    columns = {f.attname for f in DecisionLog._meta.concrete_fields} - {"tenant_id"}
    assert set(line) == columns | {"type", "tenant"}
    assert line["tenant"] == "alpha" and line["type"] == "decision"
    assert (line["id"], line["decision_id"], line["outcome"]) == (row.pk, row.decision_id,
                                                                  "escalate")
    assert line["arguments"] == {"employee": "e-17"} and line["labels"] == {"region": "eu"}
    assert line["escalation_id"] == "6a1f0f5e-3b1c-4a53-9d0e-0c7c3d6f1a22"
    assert (line["bundle_revision"], line["grant_id"], line["gateway_id"]) == (12, 4, None)
    assert line["timestamp"] == row.timestamp.isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize("name", ["../audit.jsonl", "../../etc/cron.d/x", "/etc/passwd",
                                  "logs/audit.jsonl", "a\\b.jsonl", "..", "x..y", ".hidden",
                                  "", "café.jsonl"])
def test_a_file_name_can_never_leave_the_export_directory(tenant_a, name, _export_dir):
    with pytest.raises(ValidationError) as caught:
        exporter(tenant_a, path=name)
    assert list(caught.value.error_dict) == ["path"]
    assert not Exporter.objects.exists()
    assert not _export_dir.exists()


def test_a_symlink_planted_at_the_file_name_is_not_followed(settings, tenant_a, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    exp = exporter(tenant_a)
    directory = settings.EXPORT_FILE_DIR / "alpha"
    directory.mkdir(parents=True)
    os.symlink(outside, directory / "audit.jsonl")
    result = run(exp)
    assert result.status == "failed" and "Cannot open alpha/audit.jsonl" in result.error
    assert outside.read_text() == "precious\n"
    assert exp.cursor == 0 and exp.consecutive_failures == 1


def test_a_line_torn_by_a_crash_is_closed_before_the_batch_is_sent_again(settings, tenant_a):
    exp = exporter(tenant_a)
    directory = settings.EXPORT_FILE_DIR / "alpha"
    directory.mkdir(parents=True)
    (directory / "audit.jsonl").write_bytes(b'{"id": 1, "half')
    run(exp)
    lines = (directory / "audit.jsonl").read_bytes().splitlines()
    assert lines[0] == b'{"id": 1, "half'
    assert [json.loads(line)["id"] for line in lines[1:]] == audit_ids(tenant_a)


# --- Syslog CEF ---------------------------------------------------------------------------------


def test_udp_syslog_is_rfc5424_carrying_escaped_cef(udp, tenant_a):
    exp = caught_up(exporter(tenant_a, kind="syslog_udp", host="127.0.0.1", port=udp.port))
    event = audit(tenant_a, NASTY)
    assert run(exp).sent == 1
    [raw] = udp.wait_for(1)
    message = parse_syslog(raw)
    assert message["pri"] == 13 * 8 + 6  # facility "log audit", severity informational
    assert (message["app"], message["procid"], message["msgid"]) == ("tollgate", "-", "audit")
    assert message["timestamp"] == event.created_at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    assert message["hostname"] == formats.hostname()
    assert message["sd_id"] == "tollgate@32473"
    assert message["sd"] == {"tenant": "alpha", "id": str(event.pk)}

    cef = message["msg"]
    # Header: | and \ escaped, the line break flattened; extension: \ and = escaped, \n.
    assert cef.startswith(f"CEF:0|Tollgate|Tollgate|{formats.product_version()}|thing.changed|"
                          "thing.changed pipe\\|back\\\\slash=eq new line|3|")
    assert "msg=pipe|back\\\\slash\\=eq\\nnew line" in cef
    assert "\n" not in cef
    header, ext = parse_cef(cef)
    assert header[4:] == ["thing.changed", "thing.changed pipe|back\\slash=eq new line", "3"]
    assert ext["msg"] == NASTY
    assert ext["rt"] == str(int(event.created_at.timestamp() * 1000))
    assert (ext["act"], ext["suser"], ext["externalId"]) == ("thing.changed", "sentinel",
                                                            str(event.pk))
    assert (ext["cs1Label"], ext["cs1"]) == ("tenant", "alpha")
    assert (ext["cs6Label"], ext["cs6"]) == ("hash", event.hash)
    assert (ext["cn1Label"], ext["cn1"]) == ("seq", str(event.seq))


def test_a_datagram_never_exceeds_the_size_limit_and_stays_parseable(settings, udp, tenant_a):
    settings.EXPORT_SYSLOG_UDP_MAX_BYTES = 600
    exp = caught_up(exporter(tenant_a, kind="syslog_udp", host="127.0.0.1", port=udp.port))
    audit(tenant_a, "=" * 300)  # each = is escaped: 600 bytes of message text alone
    run(exp)
    [raw] = udp.wait_for(1)
    assert len(raw) <= 600
    _, ext = parse_cef(parse_syslog(raw)["msg"])
    assert ext["msg"] and set(ext["msg"]) == {"="} and len(ext["msg"]) < 300


def test_tcp_syslog_frames_decisions_with_octet_counting(tcp, tenant_a):
    exp = exporter(tenant_a, kind="syslog_tcp", stream="decisions", host="127.0.0.1",
                   port=tcp.port)
    rows = [decision(tenant_a, reason="Grünes Licht verweigert: kein Grant"),
            decision(tenant_a, outcome="allow", reason=""),
            decision(tenant_a, outcome="escalate", reason="needs a human=yes")]
    assert run(exp).sent == 3
    frames = tcp.frames()  # the counts are bytes: the ü above makes it matter
    assert len(tcp.connections) == 1 and len(frames) == 3
    for frame, row in zip(frames, rows, strict=True):
        message = parse_syslog(frame)
        severity = {"allow": 6, "escalate": 5, "deny": 5}[row.outcome]
        assert message["pri"] == 10 * 8 + severity and message["msgid"] == "decision"
        assert message["sd"] == {"tenant": "alpha", "id": str(row.pk)}
        header, ext = parse_cef(message["msg"])
        assert header[4:6] == [row.outcome, f"{row.outcome} payroll/read_salary"]
        assert (ext["act"], ext["outcome"], ext["externalId"]) == (row.outcome, row.outcome,
                                                                   row.decision_id)
        assert ext["suser"] == "spiffe://alpha/payroll-bot"
        assert ext["requestClientApplication"] == "payroll-bot"
        assert (ext["cs2"], ext["cs3"], ext["cs4"]) == ("payroll", "read_salary", "ab" * 32)
        assert ext["rt"] == str(int(row.timestamp.timestamp() * 1000))
        assert ext.get("msg", "") == row.reason
    assert "needs a human\\=yes" in frames[2].decode()
    assert exp.cursor == rows[-1].pk


def test_a_refused_tcp_connection_is_a_failure_that_keeps_the_cursor(tenant_a):
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    exp = exporter(tenant_a, kind="syslog_tcp", host="127.0.0.1", port=port)
    result = run(exp)
    assert result.status == "failed"
    assert exp.last_error == f"tcp://127.0.0.1:{port} refused the connection (nothing " \
                             "listening?)."
    assert exp.cursor == 0 and exp.consecutive_failures == 1


# --- Splunk HEC ---------------------------------------------------------------------------------


def test_hec_posts_batches_in_the_hec_format_with_the_splunk_token(settings, hec, tenant_a):
    settings.EXPORT_BATCH_SIZE = 2
    exp = exporter(tenant_a, kind="splunk_hec", url=hec.url, index="tollgate_audit")
    audit(tenant_a, "one")
    audit(tenant_a, "two")
    result = run(exp)
    ids = audit_ids(tenant_a)
    assert result.sent == len(ids) and len(hec.requests) == (len(ids) + 1) // 2
    for request in hec.requests:
        assert request["headers"]["Authorization"] == f"Splunk {TOKEN}"
        assert request["headers"]["Content-Type"] == "application/json"
    events = hec.events()
    assert [e["event"]["id"] for e in events] == ids
    for event in events:
        assert set(event) == {"time", "host", "source", "sourcetype", "index", "event"}
        assert (event["source"], event["sourcetype"], event["index"]) == (
            "tollgate", "tollgate:audit", "tollgate_audit")
        assert isinstance(event["time"], float) and event["host"] == formats.hostname()
        row = AuditEvent.objects.get(pk=event["event"]["id"])
        assert event["time"] == round(row.created_at.timestamp(), 3)
        assert event["event"]["hash"] == row.hash and event["event"]["tenant"] == "alpha"


def test_hec_decisions_have_their_own_sourcetype_and_no_index_unless_set(hec, tenant_a):
    row = decision(tenant_a)
    exp = exporter(tenant_a, kind="splunk_hec", stream="decisions", url=hec.url)
    run(exp)
    [event] = hec.events()
    assert "index" not in event and event["sourcetype"] == "tollgate:decision"
    assert event["event"]["decision_id"] == row.decision_id
    assert event["time"] == round(row.timestamp.timestamp(), 3)


def test_failures_back_off_keep_the_cursor_and_lose_nothing(settings, hec, tenant_a):
    """At least once: every event arrives, in id order, however many attempts it took."""
    settings.EXPORT_BATCH_SIZE = 3
    exp = exporter(tenant_a, kind="splunk_hec", url=hec.url)
    for n in range(4):
        audit(tenant_a, f"event {n}")
    hec.answers = [(500, b'{"text":"Internal error","code":8}'),
                   (200, b'{"text":"Server is busy","code":9}'),
                   (503, b'{"text":"Server is busy","code":9}')]
    t0 = timezone.now()

    first = run(exp, now=t0)
    assert first.status == "failed" and first.error.startswith("HTTP 500:")
    assert (exp.cursor, exp.consecutive_failures, exp.exported_total) == (0, 1, 0)
    assert exp.last_error.startswith("HTTP 500:") and exp.last_error_at == t0
    assert exp.next_attempt_at == t0 + timedelta(seconds=30) and exp.status == "failing"
    assert selectors.due_exporter_ids(t0) == []

    # Not due yet: a stray task message sends nothing.
    assert run(exp, now=t0 + timedelta(seconds=29)).status == "not_due"
    assert len(hec.requests) == 1

    audit(tenant_a, "arrived while failing")
    t1 = t0 + timedelta(seconds=30)
    assert selectors.due_exporter_ids(t1) == [exp.pk]
    second = run(exp, now=t1)
    assert second.status == "failed" and "HEC did not accept the batch" in second.error
    assert exp.next_attempt_at == t1 + timedelta(seconds=60) and exp.cursor == 0

    t2 = t1 + timedelta(seconds=60)
    assert run(exp, now=t2).status == "failed"
    assert exp.consecutive_failures == 3 and exp.next_attempt_at == t2 + timedelta(seconds=120)

    t3 = t2 + timedelta(seconds=120)
    result = run(exp, now=t3)
    ids = audit_ids(tenant_a)
    assert (result.status, result.sent) == ("sent", len(ids))
    assert (exp.cursor, exp.consecutive_failures, exp.status) == (ids[-1], 0, "ok")
    assert exp.last_success_at == t3 and exp.next_attempt_at == t3
    # Every attempt re-sent the same first batch; nothing was skipped or reordered.
    sent_first = [[e["event"]["id"] for e in json_objects(r["body"])] for r in hec.requests]
    assert sent_first[:4] == [ids[:3]] * 4
    assert [e["event"]["id"] for e in hec.events()] == ids


def test_hec_needs_code_0_in_a_200(hec, tenant_a):
    exp = exporter(tenant_a, kind="splunk_hec", url=hec.url)
    hec.answers = [(200, b"OK")]
    assert run(exp).error == "HTTP 200 but not a HEC answer (no JSON): OK"
    exp.token_encrypted = encrypt_text("wrong-token-123")
    exp.next_attempt_at = timezone.now()
    exp.save()
    assert run(exp).error == 'HTTP 401: {"text":"Invalid token","code":4}'
    assert exp.cursor == 0 and exp.consecutive_failures == 2


def test_the_backoff_doubles_up_to_the_cap(settings):
    settings.EXPORT_RETRY_BASE_SECONDS, settings.EXPORT_RETRY_MAX_SECONDS = 30, 900
    assert [services.retry_delay(n) for n in range(1, 9)] == [30, 60, 120, 240, 480, 900, 900,
                                                              900]


def test_a_run_sends_at_most_its_budget_and_says_more_is_ready(settings, tenant_a):
    settings.EXPORT_BATCH_SIZE = 2
    exp = exporter(tenant_a)
    for n in range(6):
        audit(tenant_a, f"e{n}")
    total = len(audit_ids(tenant_a))
    first = run(exp, max_batches=2)
    assert (first.status, first.sent, first.more) == ("sent", 4, True)
    rest = run(exp)
    assert rest.sent == total - 4 and not rest.more


# --- Decision-log settle window -----------------------------------------------------------------


def test_decisions_are_exported_only_after_the_settle_window(settings, tenant_a):
    settings.EXPORT_SETTLE_SECONDS = 5
    exp = exporter(tenant_a, stream="decisions")
    now = timezone.now()
    old = decision(tenant_a, received_at=now - timedelta(minutes=1))
    fresh = decision(tenant_a, received_at=now - timedelta(seconds=1))
    # A higher id that is already old (another upload's clock): still held back behind the
    # fresh row, so the cursor never jumps over a row that is not settled.
    later = decision(tenant_a, received_at=now - timedelta(minutes=1))

    result = run(exp, now=now)
    assert (result.status, result.sent, result.more) == ("sent", 1, False)
    assert exp.cursor == old.pk
    assert selectors.exporter_lag(exp, now=now)["rows_behind"] == 2

    assert run(exp, now=now + timedelta(seconds=3)).status == "idle"
    assert run(exp, now=now + timedelta(seconds=5)).sent == 2
    assert [line["id"] for line in file_lines(settings, tenant_a, "decisions.jsonl")] == [
        old.pk, fresh.pk, later.pk]


def test_audit_events_need_no_settle_window(settings, tenant_a):
    settings.EXPORT_SETTLE_SECONDS = 3600
    exp = caught_up(exporter(tenant_a))
    event = audit(tenant_a)
    assert run(exp).sent == 1 and exp.cursor == event.pk


# --- Tenants, lag, configuration ----------------------------------------------------------------


def test_exporters_of_two_tenants_never_see_each_others_events(settings, hec, tenant_a,
                                                               tenant_b):
    exp_a, exp_b = exporter(tenant_a), exporter(tenant_b)
    hec_b = exporter(tenant_b, kind="splunk_hec", url=hec.url)
    audit(tenant_a, "alpha secret")
    audit(tenant_b, "bravo thing")
    decision(tenant_a, decision_id="same-id")
    decision(tenant_b, decision_id="same-id")
    dec_a = exporter(tenant_a, stream="decisions", name="decisions")
    for exp in (exp_a, exp_b, hec_b, dec_a):
        run(exp)
    lines_a = file_lines(settings, tenant_a, "audit.jsonl")
    lines_b = file_lines(settings, tenant_b, "audit.jsonl")
    assert [line["id"] for line in lines_a] == audit_ids(tenant_a)
    assert [line["id"] for line in lines_b] == audit_ids(tenant_b)
    assert {line["tenant"] for line in lines_a} == {"alpha"}
    assert {line["tenant"] for line in lines_b} == {"bravo"}
    assert "alpha secret" not in (settings.EXPORT_FILE_DIR / "bravo" / "audit.jsonl").read_text()
    assert {e["event"]["tenant"] for e in hec.events()} == {"bravo"}
    assert [line["tenant"] for line in file_lines(settings, tenant_a, "decisions.jsonl")] == [
        "alpha"]
    assert not (settings.EXPORT_FILE_DIR / "bravo" / "decisions.jsonl").exists()


def test_lag_counts_rows_behind_and_the_age_of_the_oldest(tenant_a):
    exp = exporter(tenant_a, start="now")
    assert selectors.exporter_lag(exp)["rows_behind"] == 1  # its own creation event
    run(exp)
    assert selectors.exporter_lag(exp) == {"rows_behind": 0, "seconds_behind": None}
    first = audit(tenant_a)
    audit(tenant_a)
    audit(tenant_a)
    at = first.created_at + timedelta(seconds=90)
    assert selectors.exporter_lag(exp, now=at) == {"rows_behind": 3, "seconds_behind": 90.0}
    assert ("alpha", "jsonl", "jsonl", "audit", 3, 90.0) in selectors.all_exporter_lags(now=at)
    run(exp)
    assert selectors.exporter_lag(exp, now=at) == {"rows_behind": 0, "seconds_behind": None}
    assert selectors.all_exporter_lags(now=at) == [("alpha", "jsonl", "jsonl", "audit", 0,
                                                    None)]


def test_decision_lag_is_measured_from_receipt(tenant_a):
    exp = exporter(tenant_a, stream="decisions")
    row = decision(tenant_a)
    at = row.received_at + timedelta(seconds=12.5)
    assert selectors.exporter_lag(exp, now=at) == {"rows_behind": 1, "seconds_behind": 12.5}


def test_only_new_starts_after_the_newest_row_and_reset_moves_the_cursor(settings, tenant_a):
    audit(tenant_a, "old")
    head = audit_ids(tenant_a)[-1]
    exp = exporter(tenant_a, start="now")
    assert exp.cursor == head  # its own creation event comes after: it is the first one sent
    run(exp)
    assert [line["action"] for line in file_lines(settings, tenant_a, "audit.jsonl")] == [
        "exporter.created"]

    services.exporter_reset_cursor(tenant=tenant_a, actor=SYSTEM, exporter=exp, start="beginning")
    exp.refresh_from_db()
    assert exp.cursor == 0
    run(exp)
    assert len(file_lines(settings, tenant_a, "audit.jsonl")) == 1 + len(audit_ids(tenant_a))
    head, sent_up_to = audit_ids(tenant_a)[-1], exp.cursor
    services.exporter_reset_cursor(tenant=tenant_a, actor=SYSTEM, exporter=exp, start="now")
    exp.refresh_from_db()
    assert exp.cursor == head
    reset = (AuditEvent.objects.filter(tenant=tenant_a, action="exporter.cursor_reset")
             .order_by("seq").last())
    assert (reset.before, reset.after) == ({"cursor": sent_up_to},
                                           {"cursor": head, "start": "now"})


def test_configuration_changes_are_audited_and_runs_are_not(tenant_a, hec):
    exp = exporter(tenant_a, kind="splunk_hec", url=hec.url)
    services.exporter_update(tenant=tenant_a, actor=SYSTEM, exporter=exp, index="main")
    services.exporter_update(tenant=tenant_a, actor=SYSTEM, exporter=exp, index="main",
                             token="")  # nothing changed: nothing audited
    services.exporter_update(tenant=tenant_a, actor=SYSTEM, exporter=exp, enabled=False)
    services.exporter_update(tenant=tenant_a, actor=SYSTEM, exporter=exp, enabled=True)
    services.exporter_reset_cursor(tenant=tenant_a, actor=SYSTEM, exporter=exp, start="now")
    assert actions(tenant_a) == ["exporter.created", "exporter.updated", "exporter.disabled",
                                 "exporter.enabled", "exporter.cursor_reset"]
    updated = AuditEvent.objects.get(tenant=tenant_a, action="exporter.updated")
    assert (updated.before["index"], updated.after["index"]) == ("", "main")
    assert TOKEN not in json.dumps([[e.before, e.after] for e in AuditEvent.objects.filter(
        tenant=tenant_a)])

    services.exporter_reset_cursor(tenant=tenant_a, actor=SYSTEM, exporter=exp,
                                   start="beginning")
    count = AuditEvent.objects.filter(tenant=tenant_a).count()
    assert run(Exporter.objects.get(pk=exp.pk)).status == "sent"
    assert AuditEvent.objects.filter(tenant=tenant_a).count() == count  # telemetry only

    services.exporter_delete(tenant=tenant_a, actor=SYSTEM, exporter=exp)
    assert actions(tenant_a)[-1] == "exporter.deleted" and not Exporter.objects.exists()


def test_the_stream_cannot_change_and_the_kind_switch_clears_the_old_target(tenant_a, udp):
    exp = exporter(tenant_a, kind="splunk_hec", url="https://splunk.example.com:8088/x")
    with pytest.raises(ValidationError, match="stream cannot change"):
        services.exporter_update(tenant=tenant_a, actor=SYSTEM, exporter=exp, stream="decisions")
    exp = services.exporter_update(tenant=tenant_a, actor=SYSTEM, exporter=exp,
                                   kind="syslog_udp", host="127.0.0.1", port=udp.port)
    assert (exp.url, exp.token_encrypted, exp.token_hint) == ("", "", "")
    assert exp.target == f"udp://127.0.0.1:{udp.port}"


@pytest.mark.parametrize(("fields", "field", "message"), [
    ({"kind": "syslog_udp", "host": "bad host!", "port": 514}, "host", "host name or IP"),
    ({"kind": "syslog_tcp", "host": "siem.example.com", "port": 70000}, "port", "1–65535"),
    ({"kind": "syslog_tcp", "host": "siem.example.com"}, "port", "1–65535"),
    ({"kind": "splunk_hec", "url": "ftp://splunk.example.com/", "token": TOKEN}, "url",
     "http(s)://"),
    ({"kind": "splunk_hec", "url": "file:///etc/passwd", "token": TOKEN}, "url", "http(s)://"),
    ({"kind": "splunk_hec", "url": "https://splunk.example.com/"}, "token", "needs its token"),
    ({"kind": "splunk_hec", "url": "https://s.example.com/", "token": "a b\r\nX-Evil: 1"},
     "token", "no spaces"),
    ({"kind": "splunk_hec", "url": "https://s.example.com/", "token": TOKEN, "index": "a b"},
     "index", "index name"),
    ({"kind": "kafka"}, "kind", "Use one of"),
])
def test_targets_are_validated_per_kind(tenant_a, fields, field, message):
    with pytest.raises(ValidationError) as caught:
        services.exporter_create(tenant=tenant_a, actor=SYSTEM, name="x", stream="audit",
                                 **fields)
    assert list(caught.value.error_dict) == [field]
    assert message in " ".join(caught.value.messages)


def test_names_are_unique_per_tenant(tenant_a, tenant_b):
    exporter(tenant_a, name="siem")
    exporter(tenant_b, name="siem")
    with pytest.raises(ValidationError, match="already exists"):
        exporter(tenant_a, name="siem", path="other.jsonl")


def test_the_hec_token_is_encrypted_and_only_its_hint_is_kept(tenant_a):
    exp = exporter(tenant_a, kind="splunk_hec", url="https://splunk.example.com:8088/e")
    row = Exporter.objects.get(pk=exp.pk)
    assert TOKEN not in row.token_encrypted and decrypt_text(row.token_encrypted) == TOKEN
    assert row.token_hint == "…1e2f"
    kept = services.exporter_update(tenant=tenant_a, actor=SYSTEM, exporter=exp, token="",
                                    name="renamed")
    assert decrypt_text(kept.token_encrypted) == TOKEN
    assert services.exporters_reencrypt() == 1
    assert decrypt_text(Exporter.objects.get(pk=exp.pk).token_encrypted) == TOKEN


# --- Test connection, sweep ---------------------------------------------------------------------


def test_test_connection_sends_one_message_and_reports_it(udp, hec, tcp, tenant_a):
    over_udp = exporter(tenant_a, kind="syslog_udp", host="127.0.0.1", port=udp.port)
    over_tcp = exporter(tenant_a, kind="syslog_tcp", host="127.0.0.1", port=tcp.port)
    over_hec = exporter(tenant_a, kind="splunk_hec", url=hec.url, stream="decisions")
    to_file = exporter(tenant_a, path="probe.jsonl")
    for exp in (over_udp, over_tcp, over_hec, to_file):
        assert services.exporter_test(tenant=tenant_a, actor=SYSTEM, exporter=exp).ok
    header, ext = parse_cef(parse_syslog(udp.wait_for(1)[0])["msg"])
    assert header[4] == "exporter.test" and ext["cat"] == "test"
    assert parse_syslog(tcp.frames()[0])["msgid"] == "test"
    [event] = hec.events()
    assert event["event"]["type"] == "test" and event["sourcetype"] == "tollgate:decision"
    for exp in (over_udp, over_tcp, over_hec, to_file):
        exp.refresh_from_db()
        assert (exp.cursor, exp.exported_total, exp.consecutive_failures) == (0, 0, 0)
    assert actions(tenant_a).count("exporter.tested") == 4

    hec.answers = [(500, b"down")]
    failed = services.exporter_test(tenant=tenant_a, actor=SYSTEM, exporter=over_hec)
    assert failed == services.ProbeResult(False, "HTTP 500: down")
    last = (AuditEvent.objects.filter(tenant=tenant_a, action="exporter.tested")
            .order_by("seq").last())
    assert last.after == {"ok": False, "message": "HTTP 500: down"}


def test_the_sweep_runs_due_exporters_only(settings, hec, tenant_a, tenant_b):
    # Through Django's settings (Celery reads them live): writing app.conf directly would leave
    # an override behind that shadows every later test's settings.
    settings.CELERY_TASK_ALWAYS_EAGER = True
    due = exporter(tenant_a, kind="splunk_hec", url=hec.url, name="due")
    off = exporter(tenant_a, name="off")
    services.exporter_update(tenant=tenant_a, actor=SYSTEM, exporter=off, enabled=False)
    backing_off = exporter(tenant_b, name="later")
    Exporter.objects.filter(pk=backing_off.pk).update(
        next_attempt_at=timezone.now() + timedelta(minutes=5), consecutive_failures=2)
    assert selectors.due_exporter_ids() == [due.pk]
    assert tasks.sweep.apply().get() == 1
    due.refresh_from_db()
    assert due.cursor == audit_ids(tenant_a)[-1]
    assert [e["event"]["id"] for e in hec.events()] == audit_ids(tenant_a)
    assert Exporter.objects.get(pk=off.pk).cursor == 0
    assert Exporter.objects.get(pk=backing_off.pk).cursor == 0


def test_a_disabled_or_deleted_exporter_is_not_run(tenant_a):
    exp = exporter(tenant_a, enabled=False)
    assert run(exp).status == "disabled"
    exp.delete()
    assert services.exporter_run(exporter_id=exp.pk).status == "gone"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_workers_never_send_the_same_exporters_rows(postgres_only, hec, tenant_a):
    exp = exporter(tenant_a, kind="splunk_hec", url=hec.url)
    for n in range(5):
        audit(tenant_a, f"e{n}")
    hec.delay = 0.5  # the first worker is still sending when the second looks
    results: list[services.RunResult] = []
    started = threading.Barrier(2)

    def worker():
        from django.db import connection

        started.wait()
        try:
            results.append(services.exporter_run(exporter_id=exp.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(r.status for r in results) == ["busy", "sent"]
    assert len(hec.requests) == 1
    assert [e["event"]["id"] for e in hec.events()] == audit_ids(tenant_a)


@pytest.fixture
def shared_broker():
    """The worker must consume from the broker this process publishes to: Redis."""
    if not os.environ.get("REDIS_URL"):
        pytest.skip("needs REDIS_URL (the worker and this test share the Redis broker)")
    return os.environ["REDIS_URL"]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_exports_everything_the_sweep_finds(shared_broker, celery_worker_process,
                                                          hec, tcp, tenant_a, tenant_b):
    """A Celery worker on PostgreSQL + Redis; the test plays beat (tasks.sweep every second).
    The HEC receiver fails the first attempt: the worker backs off, retries, and every audit
    event arrives in order; the decisions reach the TCP syslog receiver likewise."""
    worker = celery_worker_process(EXPORT_SETTLE_SECONDS="0", EXPORT_RETRY_BASE_SECONDS="1",
                                   EXPORT_RETRY_MAX_SECONDS="2", EXPORT_BATCH_SIZE="4")
    hec.answers = [(500, b'{"text":"Internal error","code":8}')]
    to_splunk = exporter(tenant_a, kind="splunk_hec", url=hec.url)
    for n in range(9):
        audit(tenant_a, f"event {n}")
        audit(tenant_b, f"other tenant {n}")
    rows = [decision(tenant_a, received_at=timezone.now()) for _ in range(6)]
    decision(tenant_b)
    to_syslog = exporter(tenant_a, kind="syslog_tcp", stream="decisions", host="127.0.0.1",
                         port=tcp.port)
    expected_audit = audit_ids(tenant_a)
    expected_decisions = [row.pk for row in rows]
    last_sweep = [0.0]

    def delivered() -> bool:
        if time.monotonic() - last_sweep[0] >= 1:
            tasks.sweep.delay()
            last_sweep[0] = time.monotonic()
        audit_seen = {e["event"]["id"] for e in hec.events()}
        decisions_seen = {int(parse_syslog(f)["sd"]["id"]) for f in tcp.frames()}
        return (audit_seen >= set(expected_audit)
                and decisions_seen >= set(expected_decisions))

    worker.wait_until(delivered, timeout=90)
    # At least once and in order: the accepted events, duplicates dropped, are exactly the
    # tenant's events in id order; the other tenant's never appear.
    arrived = list(dict.fromkeys(e["event"]["id"] for e in hec.events()))
    assert arrived == expected_audit
    assert not hec.requests[0]["accepted"]  # the first attempt failed and was retried
    framed = list(dict.fromkeys(int(parse_syslog(f)["sd"]["id"]) for f in tcp.frames()))
    assert framed == expected_decisions

    def settled() -> bool:
        # The worker moves a cursor once the receiver has answered: a moment after the last
        # event arrived.
        to_splunk.refresh_from_db()
        to_syslog.refresh_from_db()
        return (to_splunk.cursor, to_syslog.cursor) == (expected_audit[-1],
                                                        expected_decisions[-1])

    worker.wait_until(settled, timeout=30)
    assert (to_splunk.cursor, to_splunk.consecutive_failures) == (expected_audit[-1], 0)
    assert to_splunk.last_error.startswith("HTTP 500") and to_splunk.last_success_at
    assert (to_syslog.cursor, to_syslog.exported_total) == (expected_decisions[-1], 6)


# --- Pages --------------------------------------------------------------------------------------


def test_the_list_shows_kind_stream_target_status_lag_and_errors(login, alice, tenant_a):
    client = login(alice)
    empty = client.get(f"{WEB}/")
    assert empty.status_code == 200 and b'id="exporters-empty"' in empty.content
    ok = exporter(tenant_a, name="archive")
    run(ok)
    broken = exporter(tenant_a, kind="syslog_tcp", host="127.0.0.1", port=9, name="soc")
    audit(tenant_a)
    run(broken)
    page = client.get(f"{WEB}/").content.decode()
    assert "archive" in page and "JSON lines file" in page and "alpha/audit.jsonl" in page
    assert "soc" in page and "tcp://127.0.0.1:9" in page and "Syslog CEF over TCP" in page
    assert "failing" in page and "1 failure in a row" in page
    assert "refused the connection" in page
    behind = selectors.exporter_lag(Exporter.objects.get(pk=ok.pk))["rows_behind"]
    assert behind == 2 and "2 events behind" in page and "oldest" in page
    fragment = client.get(f"{WEB}/", HTTP_HX_REQUEST="true")
    assert b"<html" not in fragment.content and b"exporters-table" in fragment.content


def test_adding_an_exporter_through_the_form(login, alice, tenant_a):
    client = login(alice)
    assert client.get(f"{WEB}/new/").status_code == 200
    response = client.post(f"{WEB}/new/", {
        "name": "splunk", "kind": "splunk_hec", "stream": "decisions", "enabled": "on",
        "start": "now", "url": "https://splunk.example.com:8088/services/collector/event",
        "token": TOKEN, "index": "mcp"})
    assert response.status_code == 302 and response["Location"] == f"{WEB}/"
    exp = Exporter.objects.get(name="splunk")
    assert (exp.kind, exp.stream, exp.index, exp.created_by) == ("splunk_hec", "decisions",
                                                                 "mcp", alice)
    assert decrypt_text(exp.token_encrypted) == TOKEN
    created = AuditEvent.objects.get(tenant=tenant_a, action="exporter.created")
    assert created.actor_label == "alice" and created.after["start"] == "now"
    page = client.get(f"{WEB}/{exp.pk}/edit/").content.decode()
    assert TOKEN not in page and "ends …1e2f" in page


@pytest.mark.parametrize(("fields", "message"), [
    ({"kind": "jsonl", "path": "../../etc/cron.d/evil"}, "A file name only, without folders"),
    ({"kind": "jsonl", "path": "..hidden"}, "is not allowed in the file name"),
    ({"kind": "syslog_udp", "host": "bad host!", "port": "514"}, "host name or IP address"),
    ({"kind": "splunk_hec", "url": "gopher://x/", "token": TOKEN}, "http(s)://"),
])
def test_the_form_shows_what_is_wrong_and_keeps_the_input(login, alice, tenant_a, fields,
                                                          message):
    data = {"name": "my exporter", "stream": "audit", "start": "beginning", "enabled": "on",
            **fields}
    response = login(alice).post(f"{WEB}/new/", data)
    page = response.content.decode()
    assert response.status_code == 400 and message in page
    assert 'value="my exporter"' in page
    kept = fields.get("path") or fields.get("host") or fields.get("url")
    assert f'value="{kept}"' in page
    assert not Exporter.objects.exists()


def test_editing_keeps_the_token_and_the_stream(login, alice, tenant_a, hec):
    exp = exporter(tenant_a, kind="splunk_hec", url=hec.url, stream="decisions")
    response = login(alice).post(f"{WEB}/{exp.pk}/edit/", {
        "name": "renamed", "kind": "splunk_hec", "stream": "audit", "enabled": "on",
        "url": hec.url, "token": "", "index": ""})
    assert response.status_code == 302
    exp.refresh_from_db()
    assert (exp.name, exp.stream) == ("renamed", "decisions")
    assert decrypt_text(exp.token_encrypted) == TOKEN


def test_delete_asks_first(login, alice, tenant_a):
    exp = exporter(tenant_a)
    client = login(alice)
    page = client.get(f"{WEB}/{exp.pk}/delete/")
    assert page.status_code == 200 and b"Delete exporter jsonl?" in page.content
    assert Exporter.objects.filter(pk=exp.pk).exists()
    assert client.post(f"{WEB}/{exp.pk}/delete/").status_code == 302
    assert not Exporter.objects.filter(pk=exp.pk).exists()
    assert actions(tenant_a)[-1] == "exporter.deleted"


def test_send_now_cuts_the_backoff_short_and_queues_a_run(login, alice, tenant_a,
                                                          django_capture_on_commit_callbacks):
    exp = exporter(tenant_a)
    later = timezone.now() + timedelta(minutes=10)
    Exporter.objects.filter(pk=exp.pk).update(next_attempt_at=later, consecutive_failures=3)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = login(alice).post(f"{WEB}/{exp.pk}/run/", follow=True)
    assert b"Queued a run of jsonl" in response.content
    assert len(callbacks) == 1
    exp.refresh_from_db()
    assert exp.next_attempt_at < later and exp.pk in selectors.due_exporter_ids()
    assert actions(tenant_a)[-1] == "exporter.run_requested"
    services.exporter_update(tenant=tenant_a, actor=SYSTEM, exporter=exp, enabled=False)
    refused = login(alice).post(f"{WEB}/{exp.pk}/run/", follow=True)
    assert b"disabled; enable it first" in refused.content


def test_test_connection_shows_the_result(login, alice, tenant_a, udp):
    good = exporter(tenant_a, kind="syslog_udp", host="127.0.0.1", port=udp.port)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    bad = exporter(tenant_a, kind="syslog_tcp", host="127.0.0.1", port=closed, name="bad")
    client = login(alice)
    ok = client.post(f"{WEB}/{good.pk}/test/", follow=True).content.decode()
    assert "Test of syslog_udp succeeded: Sent a test datagram" in ok
    assert len(udp.wait_for(1)) == 1
    failed = client.post(f"{WEB}/{bad.pk}/test/", follow=True).content.decode()
    assert f"Test of bad failed: tcp://127.0.0.1:{closed} refused the connection" in failed


def test_reset_cursor_asks_which_way(login, alice, tenant_a):
    exp = exporter(tenant_a)
    run(exp)
    client = login(alice)
    page = client.get(f"{WEB}/{exp.pk}/reset/")
    assert page.status_code == 200 and b"From the beginning" in page.content
    assert client.post(f"{WEB}/{exp.pk}/reset/", {"start": "sideways"}).status_code == 400
    assert client.post(f"{WEB}/{exp.pk}/reset/", {"start": "beginning"}).status_code == 302
    exp.refresh_from_db()
    assert exp.cursor == 0 and actions(tenant_a)[-1] == "exporter.cursor_reset"


def test_enable_and_disable_from_the_list(login, alice, tenant_a):
    exp = exporter(tenant_a)
    client = login(alice)
    client.post(f"{WEB}/{exp.pk}/enabled/", {"enabled": "off"})
    assert not Exporter.objects.get(pk=exp.pk).enabled
    client.post(f"{WEB}/{exp.pk}/enabled/", {"enabled": "on"})
    assert Exporter.objects.get(pk=exp.pk).enabled
    assert actions(tenant_a)[-2:] == ["exporter.disabled", "exporter.enabled"]


PAGES = [("get", "/"), ("get", "/new/"), ("post", "/new/"), ("get", "/{id}/edit/"),
         ("post", "/{id}/edit/"), ("get", "/{id}/delete/"), ("post", "/{id}/delete/"),
         ("post", "/{id}/enabled/"), ("post", "/{id}/run/"), ("post", "/{id}/test/"),
         ("get", "/{id}/reset/"), ("post", "/{id}/reset/")]


@pytest.mark.parametrize(("method", "path"), PAGES)
def test_pages_are_404_for_outsiders_and_403_below_admin(login, cast, tenant_a, method, path):
    exp = exporter(tenant_a)
    url = WEB + path.format(id=exp.pk)
    assert getattr(login(cast["oscar"]), method)(url).status_code == 404
    for name in ("audrey", "victor", "bob", "dave"):
        assert getattr(login(cast[name]), method)(url).status_code == 403, name
    assert Exporter.objects.get(pk=exp.pk).enabled  # nothing happened


# --- API ----------------------------------------------------------------------------------------


def test_the_api_manages_exporters_and_never_returns_the_token(admin, tenant_a, hec):
    created = admin.post(f"{API}/exporters/", {
        "name": "splunk", "kind": "splunk_hec", "stream": "audit", "url": hec.url,
        "token": TOKEN, "start": "now"}, format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert "token" not in body and TOKEN not in json.dumps(body)
    assert body["token_hint"] == "…1e2f" and body["target"] == hec.url
    assert body["status"] == "new" and body["lag"]["rows_behind"] == 1  # its creation event
    pk = body["id"]
    listed = admin.get(f"{API}/exporters/").json()
    assert [e["id"] for e in listed["results"]] == [pk]
    assert TOKEN not in json.dumps(listed)

    patched = admin.patch(f"{API}/exporters/{pk}/", {"index": "main", "enabled": False},
                          format="json")
    assert patched.status_code == 200 and patched.json()["index"] == "main"
    assert patched.json()["status"] == "disabled"
    refused = admin.post(f"{API}/exporters/{pk}/run/")
    assert refused.status_code == 400 and "enable it first" in refused.json()["message"]
    admin.patch(f"{API}/exporters/{pk}/", {"enabled": True}, format="json")
    assert admin.post(f"{API}/exporters/{pk}/run/").status_code == 202

    probe = admin.post(f"{API}/exporters/{pk}/test/")
    assert probe.status_code == 200 and probe.json()["ok"] is True
    reset = admin.post(f"{API}/exporters/{pk}/reset-cursor/", {"start": "beginning"},
                       format="json")
    assert reset.status_code == 200 and reset.json()["cursor"] == 0
    assert admin.get(f"{API}/exporters/{pk}/").json()["lag"]["rows_behind"] == len(
        audit_ids(tenant_a))
    assert admin.delete(f"{API}/exporters/{pk}/").status_code == 204
    assert actions(tenant_a) == ["exporter.created", "exporter.updated", "exporter.disabled",
                                 "exporter.enabled", "exporter.run_requested",
                                 "exporter.tested", "exporter.cursor_reset", "exporter.deleted"]


def test_api_errors_name_the_field(admin, tenant_a):
    bad = admin.post(f"{API}/exporters/", {"name": "f", "kind": "jsonl", "stream": "audit",
                                           "path": "../../../etc/passwd"}, format="json")
    assert bad.status_code == 400 and bad.json()["errors"]["path"] == [
        "A file name only, without folders (it is written to the tenant's export directory)."]
    exp = exporter(tenant_a)
    stream = admin.patch(f"{API}/exporters/{exp.pk}/", {"stream": "decisions"}, format="json")
    assert stream.status_code == 400 and "stream" in stream.json()["errors"]
    start = admin.patch(f"{API}/exporters/{exp.pk}/", {"start": "now"}, format="json")
    assert start.status_code == 400 and "start" in start.json()["errors"]


@pytest.mark.parametrize(("method", "path"), [
    ("get", "/"), ("post", "/"), ("get", "/{id}/"), ("patch", "/{id}/"), ("delete", "/{id}/"),
    ("post", "/{id}/run/"), ("post", "/{id}/test/"), ("post", "/{id}/reset-cursor/")])
def test_the_api_is_404_for_outsiders_and_403_below_admin(api, token_for, as_user, cast,
                                                          tenant_a, tenant_b, method, path):
    exp = exporter(tenant_a)
    url = f"{API}/exporters" + path.format(id=exp.pk)
    outsider = api(token_for(cast["oscar"], tenant_b))
    assert getattr(outsider, method)(url, {}, format="json").status_code == 404
    for name in ("audrey", "victor"):
        response = getattr(as_user(cast[name]), method)(url, {}, format="json")
        assert response.status_code == 403, name
    assert Exporter.objects.filter(pk=exp.pk, enabled=True).exists()
