"""Decision-log ingestion (DESIGN.md §5 ``POST logs``): uploads plain and gzipped, idempotency
on decision_id, whole-batch rejection naming the event and field, size limits against gzip
bombs, the 2xx only after commit, concurrent overlapping uploads on PostgreSQL, the hourly
roll-up, the retention purge (audited) and the selectors the dashboard and alerts read."""

from __future__ import annotations

import gzip
import io
import json
import threading
import uuid
import zlib
from datetime import UTC, timedelta

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.conf import settings
from django.db import connection, transaction

from bundles import gateway_body
from bundles import services as bundle_services
from decision_logs import selectors, services, tasks
from decision_logs.models import DecisionLog, DecisionRollup
from governance.asgi import application
from governance.audit.models import AuditEvent
from tests.bundle_support import SYSTEM, make_gateway
from tests.clock_support import away_from_a_minute_boundary
from tests.decision_support import DAY, HOUR, event, sha, upload


@pytest.fixture
def gateway(tenant_a):
    return make_gateway(tenant_a)


@pytest.fixture
def token(gateway):
    return gateway[1]


def rollup(tenant) -> dict:
    return {(r.hour, r.outcome): r.count for r in DecisionRollup.objects.for_tenant(tenant)}


# --- Uploads -------------------------------------------------------------------------------------

def test_a_plain_upload_stores_every_field(tenant_a, gateway):
    gw, token = gateway
    escalation = uuid.uuid4()
    response = upload(token, [event(1, grant="42"),
                              event(2, outcome="escalate", escalation_id=escalation, grant=7,
                                    reason="approval required")])
    assert response.status_code == 200
    assert response.json() == {"accepted": 2, "duplicates": 0}
    row = DecisionLog.objects.get(decision_id="d-1")
    assert row.tenant == tenant_a and row.gateway == gw
    assert row.timestamp == HOUR.replace(minute=15, second=30, microsecond=123456)
    assert row.bundle_revision == 3
    assert (row.agent, row.server, row.tool, row.call_id) == ("bot", "payroll", "read", "call-1")
    assert row.principal == "bot (https://idp.example)"
    assert row.arguments_sha256 == sha(1)
    assert row.arguments == {"employee": "[redacted]", "amount": 1}
    assert (row.outcome, row.reason, row.grant_id, row.escalation_id) == ("allow", "granted",
                                                                           42, None)
    assert row.labels == {"id": "5b3c6e0a-gw", "version": "0.70.0", "region": "eu"}
    other = DecisionLog.objects.get(decision_id="d-2")
    assert (other.outcome, other.grant_id, other.escalation_id) == ("escalate", 7, escalation)
    assert rollup(tenant_a) == {(HOUR, "allow"): 1, (HOUR, "escalate"): 1}


def test_optional_fields_may_be_absent(tenant_a, token):
    bare = {"decision_id": "bare", "timestamp": f"{DAY}T12:00:00+02:00",
            "input": {"server": "payroll", "tool": "read", "arguments_sha256": sha(0),
                      "principal": "spiffe://example.org/bot", "call_id": 17},
            "result": {"outcome": "deny"}}
    assert upload(token, [bare]).json() == {"accepted": 1, "duplicates": 0}
    row = DecisionLog.objects.get(decision_id="bare")
    assert row.timestamp == HOUR
    assert (row.agent, row.reason, row.bundle_revision, row.grant_id) == ("", "", None, None)
    assert (row.arguments, row.labels, row.call_id) == (None, {}, "17")
    assert row.principal == "spiffe://example.org/bot"


def test_a_gateways_resource_decision_is_stored_under_its_method(tenant_a, token):
    from gateway.decision import Decision
    from gateway.logs import decision_event

    logged = decision_event(
        decision=Decision("deny", "resources of server payroll are not forwarded", agent="bot"),
        agent="bot", principal={"issuer": "https://idp.example", "subject": "bot"},
        server="payroll", tool="resources/read", arguments_sha256=sha(5), bundle_revision=3,
        tenant="alpha", target="note://salaries")
    assert logged["input"]["target"] == "note://salaries"
    assert upload(token, [logged]).json() == {"accepted": 1, "duplicates": 0}
    row = DecisionLog.objects.get(decision_id=logged["decision_id"])
    assert (row.tool, row.outcome, row.agent) == ("resources/read", "deny", "bot")


def test_a_gzip_upload_with_several_members(tenant_a, token):
    first = gzip.compress(f'[{{"decision_id": "z-1", "timestamp": "{DAY}T10:00:00Z", '.encode())
    rest = b'"input": {"server": "s", "tool": "t", "arguments_sha256": "' + sha(1).encode() + \
        b'"}, "result": {"outcome": "deny"}}]'
    response = upload(token, first + gzip.compress(rest), encoding="gzip")
    assert response.status_code == 200, response.content
    assert response.json() == {"accepted": 1, "duplicates": 0}
    response = upload(token, [event(n) for n in range(50)], gzipped=True)
    assert response.json() == {"accepted": 50, "duplicates": 0}
    assert DecisionLog.objects.for_tenant(tenant_a).count() == 51


def test_bundle_revision_is_the_numbered_bundle(token):
    upload(token, [event(1, bundles={"system": {"revision": "abc-opaque"},
                                     "tollgate": {"revision": "12"}}),
                   event(2, bundles={"system": {}})])
    assert DecisionLog.objects.get(decision_id="d-1").bundle_revision == 12
    assert DecisionLog.objects.get(decision_id="d-2").bundle_revision is None


def test_a_long_reason_is_cut_not_refused(token):
    upload(token, [event(1, reason="x" * 5000)])
    reason = DecisionLog.objects.get(decision_id="d-1").reason
    assert len(reason) == 1000 and reason.endswith("…")


# --- Idempotency ---------------------------------------------------------------------------------

def test_duplicates_within_and_across_batches_are_stored_and_counted_once(tenant_a, token):
    batch = [event(1), event(2, outcome="deny"), event(1, outcome="deny")]
    assert upload(token, batch).json() == {"accepted": 2, "duplicates": 1}
    assert DecisionLog.objects.get(decision_id="d-1").outcome == "allow"  # the first one wins
    assert rollup(tenant_a) == {(HOUR, "allow"): 1, (HOUR, "deny"): 1}
    again = [event(1), event(2, outcome="deny"), event(3, outcome="deny")]
    assert upload(token, again, gzipped=True).json() == {"accepted": 1, "duplicates": 2}
    assert upload(token, again).json() == {"accepted": 0, "duplicates": 3}
    assert DecisionLog.objects.for_tenant(tenant_a).count() == 3
    assert rollup(tenant_a) == {(HOUR, "allow"): 1, (HOUR, "deny"): 2}


def test_the_same_decision_id_in_two_tenants_is_two_decisions(tenant_a, tenant_b, token):
    _, token_b = make_gateway(tenant_b, name="b-edge")
    assert upload(token, [event(1)]).json()["accepted"] == 1
    assert upload(token_b, [event(1, outcome="deny")]).json()["accepted"] == 1
    assert DecisionLog.objects.for_tenant(tenant_a).get().outcome == "allow"
    assert DecisionLog.objects.for_tenant(tenant_b).get().outcome == "deny"


def test_rows_land_in_the_tokens_tenant_and_stay_invisible_to_others(tenant_a, tenant_b, token):
    gw_b, token_b = make_gateway(tenant_b, name="b-edge")
    upload(token_b, [event(n, agent="b-bot") for n in range(3)])
    upload(token, [event(10)])
    assert set(DecisionLog.objects.for_tenant(tenant_b).values_list("gateway", flat=True)) == \
        {gw_b.pk}
    assert [d.decision_id for d in selectors.search(tenant_a, {})] == ["d-10"]
    assert list(selectors.search(tenant_a, {"agent": "b-bot"})) == []
    assert list(selectors.search(tenant_a, {"gateway": gw_b.pk})) == []
    assert [d.decision_id for d in selectors.decisions_since(tenant_a, 0, 100)] == ["d-10"]
    assert selectors.outcome_totals(tenant_a) == {("alpha", "allow"): 1}
    assert selectors.outcome_totals() == {("alpha", "allow"): 1, ("bravo", "allow"): 3}


@pytest.mark.django_db(transaction=True)
def test_an_upload_through_the_production_asgi_app_in_several_body_chunks(tenant_a, gateway):
    """governance.asgi routes the upload through the gateway chain; the body arrives in pieces,
    as from a real socket."""
    gw, token = gateway
    body = gzip.compress(json.dumps([event(n) for n in range(300)]).encode())
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/api/v1/gateway/logs",
             "raw_path": b"/api/v1/gateway/logs", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {token}".encode()),
                         (b"content-type", b"application/json"),
                         (b"content-encoding", b"gzip"),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}

    async def run():
        comm = ApplicationCommunicator(application, scope)
        for start in range(0, len(body), 4096):
            await comm.send_input({"type": "http.request", "body": body[start:start + 4096],
                                   "more_body": start + 4096 < len(body)})
        head = await comm.receive_output(30)
        answer = b""
        while True:
            message = await comm.receive_output(30)
            answer += message.get("body", b"")
            if not message.get("more_body"):
                break
        await comm.wait(10)
        return head, answer

    head, answer = async_to_sync(run)()
    headers = {k.decode().lower(): v.decode() for k, v in head["headers"]}
    assert head["status"] == 200, answer
    assert json.loads(answer) == {"accepted": 300, "duplicates": 0}
    assert headers["cache-control"] == "no-store" and "x-request-id" in headers
    assert DecisionLog.objects.filter(tenant=tenant_a, gateway=gw).count() == 300


# --- Malformed batches ---------------------------------------------------------------------------

def _without(path):
    def change(doc):
        *parents, last = path.split(".")
        for p in parents:
            doc = doc[p]
        del doc[last]
    return change


def _set(path, value):
    def change(doc):
        *parents, last = path.split(".")
        for p in parents:
            doc = doc[p]
        doc[last] = value
    return change


BAD_EVENTS = [
    (_without("decision_id"), "event 2: decision_id: required"),
    (_set("decision_id", 17), "event 2: decision_id: must be a string"),
    (_set("decision_id", ""), "event 2: decision_id: must not be empty"),
    (_set("decision_id", "x" * 101), "event 2 (decision_id " + "x" * 100 + "): decision_id: "
     "must be at most 100 characters"),
    (_without("timestamp"), "event 2 (decision_id d-2): timestamp: required"),
    (_set("timestamp", f"{DAY} 10:00"), "event 2 (decision_id d-2): timestamp: must be an "
     "RFC 3339 date-time with a time zone, e.g. 2026-01-31T12:00:00.123Z"),
    (_set("timestamp", f"{DAY}T10:00:00"), "event 2 (decision_id d-2): timestamp: must be "
     "an RFC 3339 date-time with a time zone, e.g. 2026-01-31T12:00:00.123Z"),
    (_set("timestamp", f"{HOUR.year}-02-30T10:00:00Z"), "event 2 (decision_id d-2): timestamp: "
     "is not a valid date and time"),
    (_set("timestamp", 1772360000), "event 2 (decision_id d-2): timestamp: must be an RFC 3339 "
     "date-time with a time zone, e.g. 2026-01-31T12:00:00.123Z"),
    (_set("labels", ["eu"]), "event 2 (decision_id d-2): labels: must be an object"),
    (_set("bundles", "tollgate"), "event 2 (decision_id d-2): bundles: must be an object keyed "
     "by bundle name"),
    (_set("bundles", {"tollgate": {"revision": 3}}), "event 2 (decision_id d-2): "
     "bundles.tollgate.revision: must be a string"),
    (_without("input"), "event 2 (decision_id d-2): input: required"),
    (_set("input", "call"), "event 2 (decision_id d-2): input: must be an object"),
    (_without("input.server"), "event 2 (decision_id d-2): input.server: required"),
    (_without("input.tool"), "event 2 (decision_id d-2): input.tool: required"),
    (_set("input.tool", ["read"]), "event 2 (decision_id d-2): input.tool: must be a string"),
    (_set("input.agent", 5), "event 2 (decision_id d-2): input.agent: must be a string"),
    (_set("input.server", "p\x00"), "event 2 (decision_id d-2): input.server: must not contain "
     "NUL characters"),
    (_set("input.principal", {"issuer": "x"}), "event 2 (decision_id d-2): input.principal: "
     "must be a string or an object with string issuer and subject"),
    (_without("input.arguments_sha256"), "event 2 (decision_id d-2): input.arguments_sha256: "
     "required"),
    (_set("input.arguments_sha256", "A" * 64), "event 2 (decision_id d-2): "
     "input.arguments_sha256: must be 64 lowercase hexadecimal characters"),
    (_set("input.arguments_sha256", "ab"), "event 2 (decision_id d-2): input.arguments_sha256: "
     "must be 64 lowercase hexadecimal characters"),
    (_set("input.arguments", "a=1"), "event 2 (decision_id d-2): input.arguments: must be an "
     "object"),
    (_set("input.arguments", {"note": "a\x00b"}), "event 2 (decision_id d-2): input.arguments: "
     "must not contain NUL (\\u0000) characters"),
    (_set("input.call_id", 1.5), "event 2 (decision_id d-2): input.call_id: must be a string "
     "or an integer"),
    (_without("result"), "event 2 (decision_id d-2): result: required"),
    (_set("result", True), "event 2 (decision_id d-2): result: must be an object"),
    (_without("result.outcome"), "event 2 (decision_id d-2): result.outcome: required"),
    (_set("result.outcome", "maybe"), "event 2 (decision_id d-2): result.outcome: must be one "
     "of allow, deny, escalate"),
    (_set("result.outcome", ["allow"]), "event 2 (decision_id d-2): result.outcome: must be one "
     "of allow, deny, escalate"),
    (_set("result.reason", 3), "event 2 (decision_id d-2): result.reason: must be a string"),
    (_set("result.grant", "g-1"), "event 2 (decision_id d-2): result.grant: must be a grant id "
     "(a positive integer, or one as a string)"),
    (_set("result.grant", 0), "event 2 (decision_id d-2): result.grant: must be a grant id "
     "(a positive integer, or one as a string)"),
    (_set("result.escalation_id", "not-a-uuid"), "event 2 (decision_id d-2): "
     "result.escalation_id: must be a UUID string"),
]


@pytest.mark.parametrize(("change", "message"), BAD_EVENTS, ids=[m for _, m in BAD_EVENTS])
def test_a_malformed_event_rejects_the_whole_batch(tenant_a, token, change, message):
    batch = [event(n) for n in range(5)]
    change(batch[2])
    for gzipped in (False, True):
        response = upload(token, batch, gzipped=gzipped)
        assert response.status_code == 400
        assert response.json() == {"code": "invalid", "message": message}
    assert DecisionLog.objects.count() == 0 and DecisionRollup.objects.count() == 0


@pytest.mark.parametrize(("body", "message"), [
    (b'{"decision_id": "d-1"}', "The body must be a JSON array of decision-log events."),
    (b"[1, 2]", "event 0: must be an object"),
    (b'[{"decision_id": "d-1"', "The body is not valid JSON: "),
    (b"\xff\xfe[]", "The body is not valid JSON: "),
    (b"", "The body is not valid JSON: "),
    (b'[{"x": NaN}]', "The body is not valid JSON: "),
])
def test_a_body_that_is_not_an_array_of_events_is_refused(token, body, message):
    response = upload(token, body)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert response.json()["message"].startswith(message)
    assert DecisionLog.objects.count() == 0


def test_integers_beyond_64_bits_are_kept_as_numbers(token):
    big = event(1)
    big["input"]["arguments"] = {"account": 123456789012345678901234567890}
    assert upload(token, [big]).json() == {"accepted": 1, "duplicates": 0}
    # JSON parsed by orjson: a number this large becomes a float (as documented).
    assert float(DecisionLog.objects.get().arguments["account"]) == 1.2345678901234568e29


def test_bad_or_truncated_gzip_is_refused(token):
    response = upload(token, b"[not gzip]", encoding="gzip")
    assert response.status_code == 400
    assert response.json()["message"].startswith("The body is not valid gzip: ")
    whole = gzip.compress(b"[" + b'{"a": 1},' * 2000 + b"{}]")
    response = upload(token, whole[:len(whole) // 2], encoding="gzip")
    assert response.status_code == 400
    assert response.json() == {"code": "invalid", "message": "The gzip body is truncated."}
    response = upload(token, whole + b"trailing junk", encoding="gzip")
    assert response.status_code == 400
    assert DecisionLog.objects.count() == 0


def test_other_encodings_and_methods_are_refused(token):
    response = upload(token, [event(1)], encoding="br")
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_encoding"
    from django.test import Client
    response = Client().get("/api/v1/gateway/logs", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 405 and response["Allow"] == "POST"


# --- Limits --------------------------------------------------------------------------------------

class _CountingZlib:
    """zlib as the endpoint uses it, counting every byte the inflater produces."""

    def __init__(self) -> None:
        self.produced = 0
        self.error = zlib.error
        self.MAX_WBITS = zlib.MAX_WBITS

    def decompressobj(self, **kwargs):
        real = zlib.decompressobj(**kwargs)
        spy = self

        class Inflater:
            def decompress(self, data, max_length=0):
                out = real.decompress(data, max_length)
                spy.produced += len(out)
                return out

            def __getattr__(self, name):
                return getattr(real, name)

        return Inflater()


def _bomb(size: int) -> bytes:
    """``size`` zero bytes, gzipped by streaming (never held in memory)."""
    out = io.BytesIO()
    deflater = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    for _ in range(size // len(block)):
        out.write(deflater.compress(block))
    out.write(deflater.flush())
    return out.getvalue()


def test_a_gzip_bomb_is_stopped_without_being_inflated(token, monkeypatch):
    bomb = _bomb(1024 ** 3)  # 1 GiB of zeros
    assert len(bomb) < settings.DECISION_LOG_MAX_BODY_BYTES
    spy = _CountingZlib()
    monkeypatch.setattr(gateway_body, "zlib", spy)
    response = upload(token, bomb, encoding="gzip")
    assert response.status_code == 413
    assert response.json() == {"code": "too_large", "message": "The decompressed body is over "
                               f"{settings.DECISION_LOG_MAX_DECOMPRESSED_BYTES} bytes "
                               "(DECISION_LOG_MAX_DECOMPRESSED_BYTES)."}
    assert spy.produced == settings.DECISION_LOG_MAX_DECOMPRESSED_BYTES + 1
    assert DecisionLog.objects.count() == 0


def test_the_decompressed_limit_is_configurable(token, settings):
    settings.DECISION_LOG_MAX_DECOMPRESSED_BYTES = 4096
    small = [event(n) for n in range(3)]
    assert upload(token, small, gzipped=True).status_code == 200
    big = [event(n) for n in range(10, 30)]
    assert upload(token, big, gzipped=True).status_code == 413
    assert upload(token, big).status_code == 413  # the same limit, uncompressed
    assert DecisionLog.objects.count() == 3


def test_the_body_and_batch_limits(token, settings):
    settings.DECISION_LOG_MAX_BODY_BYTES = 2048
    response = upload(token, [event(n) for n in range(20)])
    assert response.status_code == 413
    assert response.json()["message"] == ("The body is over 2048 bytes "
                                          "(DECISION_LOG_MAX_BODY_BYTES).")
    settings.DECISION_LOG_MAX_BODY_BYTES = 8 * 1024 * 1024
    settings.DECISION_LOG_MAX_EVENTS = 5
    response = upload(token, [event(n) for n in range(6)], gzipped=True)
    assert response.status_code == 413
    assert response.json()["message"] == ("The batch has 6 events; at most 5 are taken per "
                                          "upload (DECISION_LOG_MAX_EVENTS).")
    assert upload(token, [event(n) for n in range(5)]).json()["accepted"] == 5


# --- Authentication ------------------------------------------------------------------------------

def test_no_unknown_or_revoked_tokens_get_401(tenant_a, gateway,
                                              django_capture_on_commit_callbacks):
    gw, token = gateway
    for bad in (None, "tgw_not-a-real-token"):
        response = upload(bad, [event(1)])
        assert response.status_code == 401
        assert response["WWW-Authenticate"].startswith("Bearer")
    [record] = gw.tokens.all()
    with django_capture_on_commit_callbacks(execute=True):
        bundle_services.gateway_token_revoke(tenant=tenant_a, actor=SYSTEM, token=record)
    assert upload(token, [event(1)]).status_code == 401
    assert DecisionLog.objects.count() == 0


def test_uploads_count_against_the_gateway_rate_limit(token, settings):
    settings.GATEWAY_RATE_LIMIT_PER_MINUTE = 2
    away_from_a_minute_boundary()  # the window is a UTC minute
    assert upload(token, [event(1)]).status_code == 200
    assert upload(token, [event(2)]).status_code == 200
    response = upload(token, [event(3)])
    assert response.status_code == 429 and int(response["Retry-After"]) >= 0
    assert DecisionLog.objects.count() == 2


# --- Service -------------------------------------------------------------------------------------

def test_validation_is_pure_and_names_the_first_bad_event():
    rows = services.validate_events([event(1), event(2, outcome="deny")])
    assert [r.decision_id for r in rows] == ["d-1", "d-2"]
    assert rows[1].outcome == "deny" and rows[0].timestamp.tzinfo == UTC
    with pytest.raises(services.BatchInvalid) as raised:
        services.validate_events([event(1), {"decision_id": "x"}, {}])
    assert raised.value.messages == ["event 1 (decision_id x): timestamp: required"]


def test_the_service_ingests_without_a_gateway(tenant_a):
    result = services.decisions_ingest(tenant_id=tenant_a.pk, gateway_id=None,
                                       events=[event(1), event(1)])
    assert result == services.IngestResult(accepted=1, duplicates=1)
    assert DecisionLog.objects.get().gateway is None


def test_large_batches_span_several_statements(tenant_a, token, settings):
    settings.DECISION_LOG_INSERT_ROWS = 7
    batch = [event(n, outcome=("allow", "deny", "escalate")[n % 3]) for n in range(100)]
    assert upload(token, batch + batch[:10]).json() == {"accepted": 100, "duplicates": 10}
    assert DecisionLog.objects.count() == 100
    assert sum(rollup(tenant_a).values()) == 100


def test_no_audit_event_is_written_per_batch(tenant_a, token):
    before = AuditEvent.objects.filter(tenant=tenant_a).count()
    upload(token, [event(n) for n in range(10)])
    assert AuditEvent.objects.filter(tenant=tenant_a).count() == before


def test_the_rollup_buckets_by_hour_and_outcome(tenant_a, token):
    upload(token, [event(1, timestamp=f"{DAY}T10:59:59.999Z"),
                   event(2, timestamp=f"{DAY}T11:00:00Z"),
                   event(3, timestamp=f"{DAY}T12:30:00+01:00", outcome="deny"),
                   event(4, timestamp=f"{DAY}T11:10:00Z", outcome="deny")])
    eleven = HOUR + timedelta(hours=1)
    assert rollup(tenant_a) == {(HOUR, "allow"): 1, (eleven, "allow"): 1, (eleven, "deny"): 2}
    assert selectors.outcome_series(tenant_a, since=HOUR, until=eleven) == [
        {"hour": HOUR, "outcome": "allow", "count": 1}]
    assert selectors.outcome_series(tenant_a, since=HOUR, until=HOUR + timedelta(hours=2)) == [
        {"hour": HOUR, "outcome": "allow", "count": 1},
        {"hour": eleven, "outcome": "allow", "count": 1},
        {"hour": eleven, "outcome": "deny", "count": 2}]


# --- The 2xx only after commit, and concurrency (PostgreSQL) --------------------------------------

@pytest.fixture
def poison_trigger(postgres_only):
    """A PostgreSQL trigger that fails the insert of decision ``d-poison``."""
    with connection.cursor() as cursor:
        cursor.execute("""
            CREATE FUNCTION tollgate_test_poison() RETURNS trigger AS $$
            BEGIN
              IF NEW.decision_id = 'd-poison' THEN RAISE EXCEPTION 'poisoned row'; END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql;
            CREATE TRIGGER tollgate_test_poison BEFORE INSERT ON decisions_decisionlog
              FOR EACH ROW EXECUTE FUNCTION tollgate_test_poison();""")


def test_a_batch_failing_in_the_database_midway_keeps_nothing(tenant_a, token, settings,
                                                             poison_trigger, caplog):
    settings.DECISION_LOG_INSERT_ROWS = 10  # the failure comes after several statements ran
    batch = [event(n) for n in range(100)] + [event("poison")]
    response = upload(token, batch)
    assert response.status_code == 503
    assert response.json() == {"code": "unavailable", "message": "The batch could not be stored "
                               "and nothing of it was kept; send it again."}
    assert response["Retry-After"] == "5"
    assert DecisionLog.objects.count() == 0 and DecisionRollup.objects.count() == 0
    assert "decision-log batch not stored" in caplog.text
    assert upload(token, batch[:100]).json() == {"accepted": 100, "duplicates": 0}


@pytest.mark.django_db(transaction=True)
def test_concurrent_overlapping_uploads_store_each_decision_once(tenant_a, gateway,
                                                                  postgres_only):
    """A holds its transaction open after inserting 0..599; B uploads 300..899 meanwhile (over
    HTTP) and must wait on A's uncommitted keys, then skip them once A commits."""
    gw, token = gateway
    first = services.validate_events([event(n) for n in range(600)])
    inserted, release = threading.Event(), threading.Event()
    results: dict = {}

    def hold_open():
        try:
            with transaction.atomic():
                results["a"] = services.decisions_store(tenant_id=tenant_a.pk,
                                                        gateway_id=gw.pk, events=first)
                inserted.set()
                release.wait(30)
        finally:
            connection.close()

    def upload_b():
        try:
            results["b"] = upload(token, [event(n, outcome="deny") for n in range(300, 900)],
                                  gzipped=True)
        finally:
            connection.close()

    a = threading.Thread(target=hold_open)
    a.start()
    assert inserted.wait(30)
    b = threading.Thread(target=upload_b)
    b.start()
    b.join(1.0)
    assert b.is_alive(), "B must wait for A's uncommitted decision ids"
    release.set()
    a.join(30)
    b.join(30)
    assert results["a"] == services.IngestResult(accepted=600, duplicates=0)
    assert results["b"].status_code == 200
    assert results["b"].json() == {"accepted": 300, "duplicates": 300}
    assert DecisionLog.objects.for_tenant(tenant_a).count() == 900
    assert DecisionLog.objects.filter(outcome="deny").count() == 300
    assert rollup(tenant_a) == {(HOUR, "allow"): 600, (HOUR, "deny"): 300}


@pytest.mark.django_db(transaction=True)
def test_many_concurrent_uploads_of_the_same_events_neither_deadlock_nor_duplicate(
        tenant_a, gateway, postgres_only):
    _, token = gateway
    outcomes = ("allow", "deny", "escalate")
    batch = [event(n, outcome=outcomes[n % 3]) for n in range(400)]
    responses = []

    def send(order):
        try:
            responses.append(upload(token, order, gzipped=True))
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(batch if i % 2 else batch[::-1],))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(r.status_code for r in responses) == [200] * 4
    assert sum(r.json()["accepted"] for r in responses) == 400
    assert sum(r.json()["duplicates"] for r in responses) == 1200
    assert DecisionLog.objects.for_tenant(tenant_a).count() == 400
    assert sum(rollup(tenant_a).values()) == 400


# --- Retention -----------------------------------------------------------------------------------

def test_the_purge_deletes_expired_rows_per_tenant_and_audits_once(tenant_a, tenant_b, settings):
    settings.DECISION_LOG_PURGE_CHUNK = 3  # several chunks
    tenant_a.decision_log_retention_days = 30
    tenant_a.save()
    now = HOUR + timedelta(hours=2, minutes=30)  # in the past, by the real clock

    def at(days):
        return (now - timedelta(days=days)).isoformat()

    services.decisions_ingest(tenant_id=tenant_a.pk, gateway_id=None, events=[
        *[event(n, timestamp=at(40)) for n in range(7)], event(100, timestamp=at(29))])
    services.decisions_ingest(tenant_id=tenant_b.pk, gateway_id=None, events=[
        event(1, timestamp=at(60)), event(2, timestamp=at(100))])  # B keeps 90 days
    audited = AuditEvent.objects.filter(action="decisions.purged")
    assert services.decisions_purge_expired(now=now) == {"alpha": 7, "bravo": 1}
    assert list(DecisionLog.objects.for_tenant(tenant_a).values_list("decision_id", flat=True)) \
        == ["d-100"]
    assert list(DecisionLog.objects.for_tenant(tenant_b).values_list("decision_id", flat=True)) \
        == ["d-1"]
    assert [r.hour for r in DecisionRollup.objects.for_tenant(tenant_a)] == [
        HOUR + timedelta(days=-29, hours=2)]
    [event_a] = audited.filter(tenant=tenant_a)
    assert event_a.actor_type == "system"
    assert event_a.after == {"deleted": 7, "cutoff": (now - timedelta(days=30)).isoformat(),
                             "retention_days": 30, "rollup_rows_deleted": 1}
    assert audited.filter(tenant=tenant_b).count() == 1
    # Nothing left to purge: no deletion, no new audit event.
    assert services.decisions_purge_expired(now=now) == {}
    assert audited.count() == 2


def test_the_purge_task_and_its_beat_entry(tenant_a):
    tenant_a.decision_log_retention_days = 1
    tenant_a.save()
    services.decisions_ingest(tenant_id=tenant_a.pk, gateway_id=None, events=[
        event(1, timestamp=(HOUR - timedelta(days=2)).isoformat())])
    assert tasks.purge.apply().get() == {"alpha": 1}
    assert DecisionLog.objects.count() == 0
    entry = settings.CELERY_BEAT_SCHEDULE["decisions-purge"]
    assert entry["task"] == "governance.decisions.tasks.purge"  # frozen task name
    assert entry["schedule"] == timedelta(hours=1)
    assert tasks.purge.name == entry["task"]


# --- Selectors -----------------------------------------------------------------------------------

def test_denial_selectors(tenant_a, tenant_b):
    since = HOUR
    events = [event(n, outcome="deny", agent="bot") for n in range(3)]
    events += [event(n, outcome="deny", agent="intern") for n in range(10, 15)]
    events += [event(20, outcome="deny", agent="bot", timestamp=f"{DAY}T09:59:59Z"),
               event(21, outcome="allow", agent="bot"), event(22, outcome="deny", agent="")]
    services.decisions_ingest(tenant_id=tenant_a.pk, gateway_id=None, events=events)
    services.decisions_ingest(tenant_id=tenant_b.pk, gateway_id=None,
                              events=[event(n, outcome="deny", agent="bot") for n in range(9)])
    assert selectors.top_denied_agents(tenant_a, since=since) == [("intern", 5), ("bot", 3),
                                                                  ("", 1)]
    assert selectors.top_denied_agents(tenant_a, since=since, limit=1) == [("intern", 5)]
    assert selectors.denials_by_agent(tenant_a, since=since) == {"intern": 5, "bot": 3, "": 1}


def test_decisions_since_walks_by_id(tenant_a):
    services.decisions_ingest(tenant_id=tenant_a.pk, gateway_id=None,
                              events=[event(n) for n in range(5)])
    first = selectors.decisions_since(tenant_a, 0, 3)
    assert len(first) == 3 and [d.pk for d in first] == sorted(d.pk for d in first)
    rest = selectors.decisions_since(tenant_a, first[-1].pk, 10)
    assert len(rest) == 2 and rest[0].pk > first[-1].pk
    assert selectors.decisions_since(tenant_a, rest[-1].pk, 10) == []
