"""The reference gateway's bundle client and decision-log uploader (gateway/client.py,
gateway/logs.py) against the real control plane (pytest-django's live server), a closed port
standing for a control plane that is down, and small local HTTP servers started by the tests
for what the control plane never serves (a rolled-back bundle, a refused batch)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from bundles.models import Gateway
from bundles.publish import bundle_publish
from decision_logs.models import DecisionLog
from gateway import client as bundle_client
from gateway.client import BundleClient
from gateway.decision import ALLOW, DENY, Decision
from gateway.logs import DecisionLogUploader, decision_event
from gateway.verify import verify_bundle
from registry import services as registry
from tests.bundle_support import (
    SYSTEM,
    data_of,
    jwks_of,
    make_gateway,
    payroll_world,
    with_data_json,
)
from tests.e2e_support import free_port
from tests.gateway_support import StubServer

pytestmark = pytest.mark.django_db(transaction=True)

REPO = Path(__file__).resolve().parents[2]

SHA = "a" * 64


@pytest.fixture
def cp(live_server) -> str:
    return live_server.url


@pytest.fixture
def world(tenant_a):
    world = payroll_world(tenant_a)
    gateway, token = make_gateway(tenant_a)
    first = bundle_publish(tenant=tenant_a, trigger="test")
    return {**world, "gateway": gateway, "token": token, "first": first}


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def new_client(url: str, token: str, state_dir: Path, **options) -> BundleClient:
    options.setdefault("long_poll_seconds", 1)
    return BundleClient(url, "alpha", token, state_dir, **options)


def run(coroutine, *owners):
    """Run ``coroutine``, then close the HTTP clients of ``owners`` (a connection left open
    would keep a live-server thread waiting past the test)."""

    async def go():
        try:
            return await coroutine
        finally:
            for owner in owners:
                await owner.aclose()

    return asyncio.run(go())


async def poll(client: BundleClient) -> str:
    try:
        return await client.poll_once()
    finally:
        await client.aclose()


def rewrite_data(tarball: bytes, change) -> bytes:
    """The same bundle with mcp/data.json edited (its signature left as it was)."""
    data = data_of(tarball)
    change(data)
    return with_data_json(tarball, json.dumps(data, sort_keys=True,
                                              separators=(",", ":")).encode())


def test_the_client_and_uploader_load_no_django():
    # A gateway vendor runs these without the control plane's code.
    code = ("import sys, gateway.client, gateway.logs\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('django', 'governance', 'registry', 'approvals')))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=60, check=True)
    assert result.stdout == "[]\n"


# --- bundle client ------------------------------------------------------------------------------


def test_first_pull_verifies_persists_and_reports(cp, world, tmp_path):
    client = new_client(cp, world["token"], tmp_path / "state")
    assert client.current() is None
    assert client.load() is None  # nothing on disk yet

    assert run(poll(client)) == bundle_client.ACTIVATED
    active = client.current()
    assert active is not None
    assert active.revision_number == world["first"].revision_number
    assert set(active.data["tools"]) == {"payroll/pay"}

    state = json.loads((tmp_path / "state" / "state.json").read_text())
    tarball = (tmp_path / "state" / "bundle.tar.gz").read_bytes()
    assert state["revision"] == active.revision_number
    assert state["sha256"] == hashlib.sha256(tarball).hexdigest() == active.sha256
    assert state["etag"] == f'"{active.sha256}"'
    assert state["expires_at"] and state["activated_at"] and state["last_error"] is None
    # The stored bundle verifies on its own with the stored JWKS.
    stored_jwks = json.loads((tmp_path / "state" / "jwks.json").read_text())
    assert stored_jwks == jwks_of(world["gateway"].tenant)
    verify_bundle(tarball, jwks=stored_jwks, tenant="alpha")
    assert not list((tmp_path / "state").glob("*.tmp"))

    # The status report is the OPA shape and the control plane records the revision.
    report = client.status_report()
    entry = report["bundles"]["alpha"]
    assert entry["active_revision"] == str(active.revision_number)
    assert "code" not in entry and "errors" not in entry
    assert entry["last_successful_download"] and entry["last_successful_activation"]
    assert run(client.report_status(), client) is True
    gateway = Gateway.objects.get(pk=world["gateway"].pk)
    assert gateway.active_revision == active.revision_number
    assert gateway.last_error == ""
    assert gateway.last_report["bundles"]["alpha"]["name"] == "alpha"


def test_unchanged_bundle_is_a_304_and_a_new_revision_is_activated(cp, world, tmp_path):
    client = new_client(cp, world["token"], tmp_path)
    assert run(poll(client)) == bundle_client.ACTIVATED
    first = client.current()

    assert run(poll(client)) == bundle_client.NOT_MODIFIED  # long poll held 1 s, then 304
    assert client.current() is first

    tenant = world["gateway"].tenant
    registry.tool_approve(tenant=tenant, actor=SYSTEM, tool=world["tools"]["refund"])
    second = bundle_publish(tenant=tenant, trigger="registry change")
    assert run(poll(client)) == bundle_client.ACTIVATED
    active = client.current()
    assert active.revision_number == second.revision_number > first.revision_number
    assert set(active.data["tools"]) == {"payroll/pay", "payroll/refund"}
    assert json.loads((tmp_path / "state.json").read_text())["revision"] == \
        second.revision_number


def test_restart_without_the_control_plane_keeps_enforcing(cp, world, tmp_path):
    first = new_client(cp, world["token"], tmp_path)
    assert run(poll(first)) == bundle_client.ACTIVATED
    revision = first.current().revision_number

    restarted = new_client(closed_port_url(), world["token"], tmp_path)
    loaded = restarted.load()
    assert loaded is not None and loaded.revision_number == revision
    assert run(poll(restarted)) == bundle_client.FAILED
    assert restarted.last_error.code == "unreachable"
    assert restarted.current().revision_number == revision  # the last good bundle stays
    entry = restarted.status_report()["bundles"]["alpha"]
    assert entry["active_revision"] == str(revision)
    assert entry["code"] == "unreachable"


def test_an_expired_bundle_on_disk_fails_closed(cp, world, tmp_path):
    client = new_client(cp, world["token"], tmp_path)
    assert run(poll(client)) == bundle_client.ACTIVATED
    expires_at = client.current().expires_at
    after = expires_at + timedelta(seconds=1)
    assert client.current(now=after) is None  # the running gateway stops allowing

    restarted = new_client(closed_port_url(), world["token"], tmp_path)
    assert restarted.load(now=after) is None
    assert restarted.current(now=after) is None
    assert restarted.last_error.code == "expired"
    assert restarted.status_report(now=after)["bundles"]["alpha"]["code"] == "expired"


def test_a_tampered_bundle_on_disk_is_refused_at_load(cp, world, tmp_path):
    client = new_client(cp, world["token"], tmp_path)
    assert run(poll(client)) == bundle_client.ACTIVATED
    path = tmp_path / "bundle.tar.gz"
    path.write_bytes(rewrite_data(path.read_bytes(),
                                  lambda data: data["tools"].update(
                                      {"payroll/refund": data["tools"]["payroll/pay"]})))

    restarted = new_client(closed_port_url(), world["token"], tmp_path)
    assert restarted.load() is None
    assert restarted.current() is None
    assert restarted.last_error.code == "hash_mismatch"

    # The same, authentic revision from the control plane repairs it (not "nothing to do").
    restarted.control_plane = cp
    assert run(poll(restarted)) == bundle_client.ACTIVATED
    assert restarted.current().revision_number == world["first"].revision_number
    assert new_client(closed_port_url(), world["token"], tmp_path).load() is not None


def test_an_older_authentic_bundle_put_on_disk_is_refused_at_load(cp, world, tmp_path):
    tenant = world["gateway"].tenant
    registry.tool_approve(tenant=tenant, actor=SYSTEM, tool=world["tools"]["refund"])
    bundle_publish(tenant=tenant, trigger="registry change")
    client = new_client(cp, world["token"], tmp_path)
    assert run(poll(client)) == bundle_client.ACTIVATED
    (tmp_path / "bundle.tar.gz").write_bytes(bytes(world["first"].blob.content))

    restarted = new_client(closed_port_url(), world["token"], tmp_path)
    assert restarted.load() is None
    assert restarted.last_error.code == "rollback"


def test_a_bundle_over_the_size_limit_is_not_downloaded_whole(world, tmp_path):
    script = {("GET", "/api/v1/gateway/bundles/alpha"): [
        (200, {"ETag": '"huge"'}, b"\0" * (1024 * 1024 + 2048)),
        (304, {"ETag": '"huge"'}, b"")]}
    with StubServer(script) as stub:
        client = new_client(stub.url, world["token"], tmp_path, max_decompressed_bytes=1024)
        assert run(poll(client)) == bundle_client.REJECTED
        assert client.last_error.code == "too_large"
        assert client.current() is None
        # Not fetched again, and still the current bundle there: the error stays reported.
        assert run(poll(client)) == bundle_client.NOT_MODIFIED
        assert stub.requests[-1][2]["If-None-Match"] == '"huge"'
        assert client.last_error.code == "too_large"


def test_a_rollback_is_refused_and_the_newer_bundle_kept(cp, world, tmp_path):
    tenant = world["gateway"].tenant
    old = world["first"]
    registry.tool_approve(tenant=tenant, actor=SYSTEM, tool=world["tools"]["refund"])
    new = bundle_publish(tenant=tenant, trigger="registry change")
    client = new_client(cp, world["token"], tmp_path)
    assert run(poll(client)) == bundle_client.ACTIVATED
    assert client.current().revision_number == new.revision_number

    old_tarball = bytes(old.blob.content)
    old_etag = f'"{hashlib.sha256(old_tarball).hexdigest()}"'
    jwks = json.dumps(jwks_of(tenant)).encode()
    script = {
        ("GET", "/api/v1/gateway/bundles/alpha"): [
            (200, {"ETag": old_etag, "Content-Type": "application/gzip"}, old_tarball)],
        ("GET", "/api/v1/gateway/keys/alpha"): [(200, {"ETag": '"k"'}, jwks)],
    }
    with StubServer(script) as replay:
        client.control_plane = replay.url
        assert run(poll(client)) == bundle_client.REJECTED
        assert client.last_error.code == "rollback"
        assert client.current().revision_number == new.revision_number
        # The next poll says it has seen the refused bundle, so it is not downloaded again.
        run(poll(client))
        polls = [r for r in replay.requests if r[1].endswith("/bundles/alpha")]
        assert polls[-1][2]["If-None-Match"] == f'"{new.blob_id}", {old_etag}'

    # On disk the newer bundle stays; a restart activates it, not the old one.
    restarted = new_client(closed_port_url(), world["token"], tmp_path)
    assert restarted.load().revision_number == new.revision_number

    # The refusal reaches the fleet view.
    client.control_plane = cp
    assert run(client.report_status(), client) is True
    gateway = Gateway.objects.get(pk=world["gateway"].pk)
    assert gateway.active_revision == new.revision_number
    assert "rollback" in gateway.last_error

    # Back on the real control plane, whose bundle is the one running: the error is over.
    assert run(poll(client)) == bundle_client.NOT_MODIFIED
    assert client.last_error is None
    assert run(client.report_status(), client) is True
    assert Gateway.objects.get(pk=world["gateway"].pk).last_error == ""


def test_a_body_damaged_in_transit_does_not_hide_the_authentic_bundle(world, tmp_path):
    """The genuine ETag on a damaged body: the client must not later tell the server it holds
    that ETag, or the authentic bundle would never be fetched (until a newer revision)."""
    tenant = world["gateway"].tenant
    authentic = bytes(world["first"].blob.content)
    etag = f'"{hashlib.sha256(authentic).hexdigest()}"'
    damaged = rewrite_data(authentic, lambda data: data["grants"].clear())
    jwks = json.dumps(jwks_of(tenant)).encode()
    gz = {"ETag": etag, "Content-Type": "application/gzip"}
    script = {
        ("GET", "/api/v1/gateway/bundles/alpha"): [(200, gz, damaged), (200, gz, authentic)],
        ("GET", "/api/v1/gateway/keys/alpha"): [(200, {"ETag": '"k"'}, jwks)],
    }
    with StubServer(script) as server:
        client = new_client(server.url, world["token"], tmp_path)
        assert run(poll(client)) == bundle_client.REJECTED
        assert client.last_error.code == "hash_mismatch"
        assert run(poll(client)) == bundle_client.ACTIVATED
        polls = [r for r in server.requests if r[1].endswith("/bundles/alpha")]
        skipped = polls[1][2]["If-None-Match"]
        assert etag not in skipped
        assert skipped == f'"{hashlib.sha256(damaged).hexdigest()}"'
    assert client.current().revision_number == world["first"].revision_number
    assert client.last_error is None


def test_a_cleared_error_is_reported_at_once(cp, world, tmp_path):
    """Back on the authentic bundle after a refusal, a status report goes out after that poll,
    not at the next periodic report (an hour away here)."""
    client = new_client(cp, world["token"], tmp_path, status_interval=3600,
                        min_poll_interval=0.05)
    revision = world["first"].revision_number

    def fleet() -> tuple[int | None, str]:
        gateway = Gateway.objects.get(pk=world["gateway"].pk)
        return gateway.active_revision, gateway.last_error

    async def scenario() -> list[tuple[int | None, str]]:
        seen = []
        stop = asyncio.Event()
        task = asyncio.ensure_future(client.run(stop))
        try:
            for _ in range(100):  # the run loop's first report
                await asyncio.sleep(0.1)
                if (await asyncio.to_thread(fleet))[0] == revision:
                    break
            client._fail("rollback", "bundle refused: a replayed revision", None)
            await client.report_status()
            seen.append(await asyncio.to_thread(fleet))
            for _ in range(100):  # the next poll is a 304 for the running bundle
                await asyncio.sleep(0.1)
                if (await asyncio.to_thread(fleet))[1] == "":
                    break
            seen.append(await asyncio.to_thread(fleet))
        finally:
            stop.set()
            await task
        return seen

    reported, cleared = run(scenario(), client)
    assert reported[0] == revision and "rollback" in reported[1]
    assert cleared == (revision, "")


def test_an_unknown_key_makes_the_client_fetch_the_jwks_once_more(world, tmp_path):
    tenant = world["gateway"].tenant
    tarball = bytes(world["first"].blob.content)
    script = {
        ("GET", "/api/v1/gateway/bundles/alpha"): [(200, {"ETag": '"b"'}, tarball)],
        ("GET", "/api/v1/gateway/keys/alpha"): [
            (200, {"ETag": '"old"'}, b'{"keys": []}'),
            (200, {"ETag": '"new"'}, json.dumps(jwks_of(tenant)).encode())],
    }
    with StubServer(script) as stub:
        client = new_client(stub.url, world["token"], tmp_path)
        assert run(poll(client)) == bundle_client.ACTIVATED
        bundle_request = stub.requests[0][2]
        assert bundle_request["Authorization"] == f"Bearer {world['token']}"
        assert bundle_request["Prefer"] == "wait=1"
        assert "If-None-Match" not in bundle_request
        keys = [r for r in stub.requests if r[1].endswith("/keys/alpha")]
        assert len(keys) == 2
        assert "If-None-Match" not in keys[1][2]  # the second fetch asks for a fresh copy
    assert json.loads((tmp_path / "jwks.json").read_text())["keys"]


def test_run_loop_activates_reports_and_stops(cp, world, tmp_path):
    # No long poll: when stop is set, no request is left waiting on the live server.
    client = new_client(cp, world["token"], tmp_path, status_interval=3600, long_poll_seconds=0,
                        min_poll_interval=0.2)

    async def scenario():
        stop = asyncio.Event()
        task = asyncio.create_task(client.run(stop))
        for _ in range(400):
            if client.current() is not None:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 30)

    run(scenario())
    assert client.current().revision_number == world["first"].revision_number
    gateway = Gateway.objects.get(pk=world["gateway"].pk)
    assert gateway.active_revision == world["first"].revision_number


def test_run_loop_backs_off_when_the_control_plane_is_down(world, tmp_path):
    client = new_client(closed_port_url(), world["token"], tmp_path, backoff_base=0.01,
                        backoff_max=0.05)
    polls = []
    original = client.poll_once

    async def counting(now=None):
        polls.append(1)
        return await original(now)

    client.poll_once = counting

    async def scenario():
        stop = asyncio.Event()
        task = asyncio.create_task(client.run(stop))
        while len(polls) < 3:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 10)

    run(scenario())
    assert client.backoff.failures >= 2  # each failure waited longer (jittered)
    assert client.last_error.code == "unreachable"
    assert client.current() is None


def test_backoff_grows_with_jitter_and_respects_its_cap():
    backoff = bundle_client.Backoff(base=1.0, cap=8.0)
    delays = [backoff.next() for _ in range(6)]
    for attempt, delay in enumerate(delays):
        ceiling = min(8.0, 2.0 ** attempt)
        assert ceiling / 2 <= delay <= ceiling
    assert backoff.next(at_least=30.0) == 30.0  # a server's Retry-After wins
    backoff.reset()
    assert backoff.next() <= 1.0


# --- decision logs ------------------------------------------------------------------------------


def event(n: int, outcome: str = ALLOW, **overrides) -> dict:
    decision = Decision(outcome, "grant 1" if outcome == ALLOW else "no grant", None, "bot")
    built = decision_event(decision=decision, agent=None,
                           principal={"issuer": "https://idp.example", "subject": "bot"},
                           server="payroll", tool="pay", arguments_sha256=SHA,
                           bundle_revision=7, tenant="alpha", call_id=n,
                           labels={"gateway": "edge-1"})
    built.update(overrides)
    return built


def test_decision_event_shape():
    decision = Decision(ALLOW, "grant 12", "12", "bot")
    built = decision_event(decision=decision, agent=None, principal="bot@idp", server="payroll",
                           tool="pay", arguments_sha256=SHA, bundle_revision=3, tenant="alpha",
                           call_id="c-1", escalation_id="0b6f6f3e-8c7a-4d7e-9d55-4b1f0c9d2a11")
    assert built["input"] == {"agent": "bot", "principal": "bot@idp", "server": "payroll",
                              "tool": "pay", "arguments_sha256": SHA, "call_id": "c-1"}
    assert built["result"] == {"outcome": "allow", "reason": "grant 12", "grant": 12,
                               "escalation_id": "0b6f6f3e-8c7a-4d7e-9d55-4b1f0c9d2a11"}
    assert built["bundles"] == {"alpha": {"revision": "3"}}
    assert built["timestamp"].endswith("Z") and len(built["decision_id"]) == 36
    assert decision_event(decision=decision, agent="x", principal=None, server="s", tool="t",
                          arguments_sha256=SHA, bundle_revision=None,
                          tenant="alpha")["decision_id"] != built["decision_id"]


def test_events_are_uploaded_and_stored(cp, world, tmp_path):
    uploader = DecisionLogUploader(cp, world["token"], tmp_path / "queue", max_batch=2)
    events = [event(1), event(2, DENY), event(3)]
    for item in events:
        uploader.log(item)
    assert uploader.queued_events() == 3
    result = run(uploader.flush(), uploader)
    assert (result.accepted, result.duplicates, result.remaining, result.error) == (3, 0, 0, None)
    assert uploader.segments() == []
    rows = DecisionLog.objects.filter(tenant=world["gateway"].tenant)
    assert sorted(rows.values_list("decision_id", flat=True)) == \
        sorted(e["decision_id"] for e in events)
    denied = rows.get(decision_id=events[1]["decision_id"])
    assert (denied.outcome, denied.agent, denied.server, denied.tool, denied.bundle_revision,
            denied.gateway_id, denied.call_id) == ("deny", "bot", "payroll", "pay", 7,
                                                   world["gateway"].pk, "2")


def test_uploads_are_gzipped_and_5xx_is_retried(tmp_path):
    ok = json.dumps({"accepted": 2, "duplicates": 0}).encode()
    script = {("POST", "/api/v1/gateway/logs"): [
        (503, {"Retry-After": "0"}, b'{"code": "unavailable", "message": "again"}'),
        (200, {}, ok)]}
    with StubServer(script) as stub:
        uploader = DecisionLogUploader(stub.url, "tok", tmp_path, backoff_base=0.01)
        sent = [event(1), event(2)]
        for item in sent:
            uploader.log(item)
        result = run(uploader.flush(retries=3), uploader)
    assert (result.accepted, result.remaining, result.error) == (2, 0, None)
    assert len(stub.requests) == 2
    for _method, _path, headers, body in stub.requests:
        assert headers["Content-Encoding"] == "gzip"
        assert headers["Authorization"] == "Bearer tok"
        assert json.loads(gzip.decompress(body)) == sent


def test_control_plane_down_queues_on_disk_then_delivers_exactly_once(cp, world, tmp_path):
    queue = tmp_path / "queue"
    down = DecisionLogUploader(closed_port_url(), world["token"], queue, backoff_base=0.01)
    events = [event(n) for n in range(5)]
    for item in events:
        down.log(item)
    result = run(down.flush(retries=1), down)
    assert result.remaining == 5 and result.accepted == 0
    assert "failed" in result.error
    segments = down.segments()
    assert segments

    # A copy of the queue as it was: as if the 200 of the upload below were lost.
    replay = tmp_path / "replay"
    replay.mkdir()
    for segment in segments:
        shutil.copy(segment, replay / segment.name)

    up = DecisionLogUploader(cp, world["token"], queue)  # a restarted gateway, same queue
    result = run(up.flush(), up)
    assert (result.accepted, result.remaining) == (5, 0)
    for saved in replay.iterdir():
        shutil.copy(saved, queue / saved.name)
    result = run(up.flush(), up)
    assert (result.accepted, result.duplicates, result.remaining) == (0, 5, 0)
    stored = DecisionLog.objects.filter(tenant=world["gateway"].tenant)
    assert stored.count() == 5
    assert set(stored.values_list("decision_id", flat=True)) == {e["decision_id"] for e in events}


def test_the_queue_bound_drops_the_oldest_events_and_counts_them(cp, world, tmp_path):
    queue = tmp_path / "queue"
    uploader = DecisionLogUploader(cp, world["token"], queue, max_batch=5,
                                   max_queue_bytes=8000)
    events = [event(n) for n in range(60)]
    for item in events:
        uploader.log(item)
    assert uploader.queued_bytes() <= 8000
    assert uploader.dropped > 0
    assert uploader.dropped + uploader.queued_events() == 60
    assert uploader.stats()["dropped"] == uploader.dropped
    # The counters travel in the gateway's status report, which the control plane accepts.
    reporter = new_client(cp, world["token"], tmp_path / "state", decision_logs=uploader)
    assert reporter.status_report()["decision_logs"]["dropped"] == uploader.dropped
    assert run(reporter.report_status(), reporter) is True
    assert Gateway.objects.get(pk=world["gateway"].pk).last_report["decision_logs"][
        "dropped"] == uploader.dropped

    restarted = DecisionLogUploader(cp, world["token"], queue, max_batch=5,
                                    max_queue_bytes=8000)
    assert restarted.dropped == uploader.dropped  # the counter survives a restart
    result = run(restarted.flush(), restarted)
    assert result.remaining == 0
    stored = set(DecisionLog.objects.filter(tenant=world["gateway"].tenant)
                 .values_list("decision_id", flat=True))
    kept = [e["decision_id"] for e in events[uploader.dropped:]]
    assert stored == set(kept)  # the newest survived, the oldest were dropped


def test_a_malformed_batch_is_set_aside_and_the_rest_delivered(cp, world, tmp_path):
    queue = tmp_path / "queue"
    uploader = DecisionLogUploader(cp, world["token"], queue, max_batch=1)
    bad = event(1)
    bad["input"]["arguments_sha256"] = "not a hash"
    good = event(2)
    uploader.log(bad)
    uploader.log(good)
    result = run(uploader.flush(), uploader)
    assert (result.accepted, result.rejected, result.remaining) == (1, 1, 0)
    aside = list((queue / "rejected").glob("*.jsonl"))
    assert len(aside) == 1
    assert json.loads(aside[0].read_text())["decision_id"] == bad["decision_id"]
    reason = json.loads(next((queue / "rejected").glob("*.reason.json")).read_text())
    assert reason["status"] == 400 and "arguments_sha256" in reason["message"]
    assert uploader.stats()["rejected"] == 1
    assert list(DecisionLog.objects.filter(tenant=world["gateway"].tenant)
                .values_list("decision_id", flat=True)) == [good["decision_id"]]


def test_a_line_cut_short_by_a_crash_is_skipped(cp, world, tmp_path):
    uploader = DecisionLogUploader(cp, world["token"], tmp_path)
    whole = event(1)
    uploader.log(whole)
    with uploader.segments()[-1].open("ab") as handle:
        handle.write(b'{"decision_id": "cut sho')
    result = run(uploader.flush(), uploader)
    assert (result.accepted, result.remaining) == (1, 0)
    assert uploader.dropped == 1
