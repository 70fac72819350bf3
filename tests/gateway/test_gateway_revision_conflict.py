"""One revision number, two bundles (issue 20): offered another bundle under the revision it
runs (a control plane restored from an older backup that issued that number again), the
reference gateway does not say "nothing to do". It refuses it as ``revision_conflict``, keeps
enforcing its verified bundle, logs a warning and reports the error with its bundle's
``active_sha256``; it takes the next higher revision normally. ``gateway.verify --state``
applies the same rule with the hash the gateway's state.json keeps."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bundles.packaging import bundle_json, generate_key, package, public_jwk
from gateway import client as bundle_client
from gateway.client import BundleClient
from gateway.verify import BundleRejected, SameRevision, verify_bundle
from tests.gateway_support import StubServer

REPO = Path(__file__).resolve().parents[2]
KEY = generate_key()
JWKS = {"keys": [public_jwk(KEY.public_key(), "k1")]}
BUNDLES = "/api/v1/gateway/bundles/alpha"
KEYS = "/api/v1/gateway/keys/alpha"


def bundle(revision: int, note: str) -> bytes:
    issued = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    data = {"agents": {}, "servers": {}, "tools": {}, "scopes": {}, "grants": [], "note": note}
    files = {"mcp/data.json": bundle_json(data), "mcp/policy.cedar": b"",
             "mcp/schema.cedarschema": b"{}"}
    return package(files, scope="alpha", revision_number=revision, issued_at=issued,
                   expires_at=issued + timedelta(hours=24), issuer="https://cp.example",
                   kid="k1", private_key=KEY)


def sha(tarball: bytes) -> str:
    return hashlib.sha256(tarball).hexdigest()


def served(*tarballs: bytes) -> dict:
    """A control plane serving ``tarballs`` one poll after the other (the last repeats)."""
    return {("GET", BUNDLES): [(200, {"ETag": f'"{sha(t)}"', "Content-Type": "application/gzip"},
                                t) for t in tarballs],
            ("GET", KEYS): [(200, {"ETag": '"k"'}, json.dumps(JWKS).encode())],
            ("POST", "/api/v1/gateway/status"): [(204, {}, b"")]}


def poll(client: BundleClient) -> str:
    async def go() -> str:
        try:
            return await client.poll_once()
        finally:
            await client.aclose()
    return asyncio.run(go())


def test_another_bundle_under_the_running_revision_is_a_reported_conflict(tmp_path, caplog):
    ours, restored, next_one = bundle(30, "before"), bundle(30, "after restore"), bundle(31, "x")
    with StubServer(served(ours, restored, restored, next_one)) as server:
        client = BundleClient(server.url, "alpha", "t", tmp_path, long_poll_seconds=0)
        assert poll(client) == bundle_client.ACTIVATED
        with caplog.at_level(logging.WARNING, logger="gateway.client"):
            assert poll(client) == bundle_client.REJECTED
        assert client.last_error.code == "revision_conflict"
        assert client.last_error.message == (
            f"bundle refused: revision 30 offered is another bundle ({sha(restored)[:12]}…) "
            f"than the active one ({sha(ours)[:12]}…); keeping the active one")
        assert any("revision_conflict" in r.getMessage() for r in caplog.records)
        assert (client.current().revision_number, client.current().sha256) == (30, sha(ours))

        entry = client.status_report()["bundles"]["alpha"]
        assert (entry["active_revision"], entry["active_sha256"], entry["code"]) == (
            "30", sha(ours), "revision_conflict")
        asyncio.run(client.report_status())
        posted = json.loads([r for r in server.requests if r[0] == "POST"][-1][3])
        assert posted["bundles"]["alpha"]["active_sha256"] == sha(ours)

        # The refused bundle is not downloaded again: the next poll names its ETag.
        poll(client)
        polls = [r for r in server.requests if r[1] == BUNDLES]
        assert f'"{sha(restored)}"' in polls[-1][2]["If-None-Match"]
        # The next higher revision is taken normally, and the error is over.
        assert poll(client) == bundle_client.ACTIVATED
    assert client.current().revision_number == 31 and client.last_error is None
    assert "code" not in client.status_report()["bundles"]["alpha"]
    # On disk too: a restart runs r31.
    restarted = BundleClient(server.url, "alpha", "t", tmp_path)
    assert restarted.load().revision_number == 31


def test_the_same_bundle_under_the_running_revision_is_nothing_to_do(tmp_path):
    ours = bundle(30, "before")
    with StubServer(served(ours, ours)) as server:
        client = BundleClient(server.url, "alpha", "t", tmp_path, long_poll_seconds=0)
        assert poll(client) == bundle_client.ACTIVATED
        assert poll(client) == bundle_client.SAME_REVISION
    assert client.last_error is None


def test_a_lower_revision_stays_a_rollback(tmp_path):
    with StubServer(served(bundle(30, "before"), bundle(28, "restored"))) as server:
        client = BundleClient(server.url, "alpha", "t", tmp_path, long_poll_seconds=0)
        assert poll(client) == bundle_client.ACTIVATED
        assert poll(client) == bundle_client.REJECTED
    assert client.last_error.code == "rollback"
    assert client.status_report()["bundles"]["alpha"]["code"] == "rollback"


def test_the_verifier_tells_a_conflict_from_the_same_bundle():
    ours, other = bundle(30, "before"), bundle(30, "after restore")
    with pytest.raises(SameRevision):
        verify_bundle(ours, jwks=JWKS, tenant="alpha", last_revision=30, last_sha256=sha(ours))
    with pytest.raises(SameRevision):  # without the hash it cannot tell (older state files)
        verify_bundle(other, jwks=JWKS, tenant="alpha", last_revision=30)
    with pytest.raises(BundleRejected) as caught:
        verify_bundle(other, jwks=JWKS, tenant="alpha", last_revision=30,
                      last_sha256=sha(ours).upper())
    assert not isinstance(caught.value, SameRevision)
    assert (caught.value.code, caught.value.message) == (
        "revision_conflict", "revision 30 is another bundle than the one accepted under that "
        "number")


def run_cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.verify", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)


def test_cli_state_refuses_another_bundle_under_the_accepted_revision(tmp_path):
    ours, other, newer = bundle(30, "before"), bundle(30, "after restore"), bundle(31, "x")
    paths = {}
    for name, content in (("ours", ours), ("other", other), ("newer", newer)):
        paths[name] = tmp_path / f"{name}.tar.gz"
        paths[name].write_bytes(content)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(JWKS))
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"tenant": "alpha", "revision": 30, "sha256": sha(ours)}))

    same = run_cli(paths["ours"], "--jwks", jwks, "--state", state)
    assert (same.returncode, same.stdout) == (
        0, "revision 30 of tenant alpha is already accepted: nothing to do\n")
    conflict = run_cli(paths["other"], "--jwks", jwks, "--state", state)
    assert (conflict.returncode, conflict.stderr) == (
        1, "rejected: revision_conflict: revision 30 is another bundle than the one accepted "
        "under that number\n")
    assert json.loads(state.read_text())["sha256"] == sha(ours)
    accepted = run_cli(paths["newer"], "--jwks", jwks, "--state", state)
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(state.read_text())["sha256"] == sha(newer)


def test_a_refusal_after_an_outage_does_not_wait_out_the_outage_backoff(tmp_path, monkeypatch):
    """A control plane back from a restore first offers its older bundle: once it answers, the
    backoff the outage built up starts over, so the bundle published above the gateway's
    revision straight after is fetched without the outage's long wait."""
    ours, restored, above = bundle(30, "before"), bundle(28, "restored"), bundle(31, "above")
    script = served(ours, restored, above)
    down = (503, {}, b'{"code": "unavailable", "message": "restoring"}')
    script[("GET", BUNDLES)][1:1] = [down, down, down]
    counts: list[int] = []
    original = bundle_client.Backoff.next

    def next_delay(self, at_least: float = 0.0) -> float:
        counts.append(self.failures)
        return original(self, at_least)

    monkeypatch.setattr(bundle_client.Backoff, "next", next_delay)

    async def scenario(client: BundleClient) -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(client.run(stop))
        for _ in range(600):
            await asyncio.sleep(0.05)
            if client.revision == 31:
                break
        stop.set()
        await task

    with StubServer(script) as server:
        client = BundleClient(server.url, "alpha", "t", tmp_path, long_poll_seconds=0,
                              backoff_base=0.01, backoff_max=0.05, min_poll_interval=0.01)
        asyncio.run(scenario(client))
    assert client.revision == 31
    # Three failed polls back off 1, 2, 3 steps; the refusal that follows starts again at 0.
    assert counts == [0, 1, 2, 0]
