"""The reference gateway's escalation hold (gateway/escalations.py) against the real control
plane: a live server answering the escalation API, a bundle published and verified, a real
upstream MCP server, the proxy served by uvicorn and the official SDK client as the agent.
Approvers decide through the approvals service (the Chromium path is in test_gateway_cli).
A human deciding while the call is held means two threads writing: PostgreSQL only (SQLite's
shared in-memory test database locks tables across threads)."""

# ruff: noqa: F811 - the proxy tests' fixtures are imported and requested by name
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from django.db import connections
from django.utils import timezone

from approvals import services as approvals
from approvals.models import Escalation
from bundles import selectors
from bundles.publish import bundle_publish
from gateway.client import BundleClient
from gateway.escalations import Escalations, HeldCall
from gateway.verify import VerifiedBundle, verify_bundle
from governance.audit.models import AuditEvent
from registry import services as registry
from registry.models import Grant
from tests.bundle_support import make_gateway
from tests.e2e_support import free_port
from tests.gateway.test_gateway_proxy import (  # noqa: F401 - fixtures
    BOT_TOKEN,
    SERVER,
    SYSTEM,
    bundle,
    serve_gateway,
    text_of,
    upstream,
    upstream_served,
)
from tests.mcp_support import as_agent

pytestmark = pytest.mark.django_db(transaction=True)
REFUND = {"id": "order-77"}


@pytest.fixture
def token(tenant_a) -> str:
    return make_gateway(tenant_a)[1]


@pytest.fixture
def escalating(live_server, token, tenant_a, tmp_path):
    """``make(bundle_source, **options)`` → a served gateway whose escalations go to the live
    control plane, with its ``Escalations`` on ``.escalations``."""
    from tests.gateway.test_gateway_proxy import Gateway

    def make(serve_gateway, source: VerifiedBundle | Callable[[], VerifiedBundle | None],
             **options: Any) -> Gateway:
        # Receipts are verified with the key set fetched like the bundle client fetches it.
        keys = BundleClient(live_server.url, tenant_a.slug, token, tmp_path / "bundle").keys
        options.setdefault("max_hold", 30)
        options.setdefault("wait_seconds", 5)
        options.setdefault("state_file", tmp_path / "escalations.json")
        escalations = Escalations(options.pop("control_plane", live_server.url), token,
                                  tenant_a.slug, keys=options.pop("keys", keys), **options)
        bundle_source = source if callable(source) else (lambda: source)
        gateway = serve_gateway(bundle_source, escalations=escalations)
        gateway.escalations = escalations
        return gateway

    return make


def decide_when_asked(tenant, approver, outcome: str = "approve", reason: str = "",
                      count: int = 1) -> threading.Thread:
    """An approver who decides the ``count``-th escalation as soon as it exists."""
    def run() -> None:
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                found = list(Escalation.objects.order_by("created_at"))
                if len(found) >= count:
                    approvals.escalation_decide(tenant=tenant, actor=SYSTEM,
                                                escalation=found[count - 1], approver=approver,
                                                outcome=outcome, reason=reason)
                    return
                time.sleep(0.1)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def refund(arguments: dict[str, Any] | None = None):
    async def work(session):
        return await session.call_tool("refund", arguments or REFUND)
    return work


def outcomes(events: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(e["outcome"], e.get("escalation_id")) for e in events]


# --- approved, denied -------------------------------------------------------------------------


def test_an_approved_call_is_held_then_forwarded_exactly_once(bundle, serve_gateway, upstream,
                                                               escalating, tenant_a, bob,
                                                               postgres_only):
    gateway = escalating(serve_gateway, bundle)
    approver = decide_when_asked(tenant_a, bob)
    result = as_agent(gateway.url, BOT_TOKEN, refund())
    approver.join(10)
    assert not result.is_error, text_of(result)
    assert text_of(result) == 'upstream refund done: {"id": "order-77"}'
    assert upstream[0].calls == [("refund", REFUND)]
    escalation = Escalation.objects.get()
    assert escalation.consumed_at is not None
    assert (escalation.agent.name, escalation.server, escalation.tool, escalation.arguments) == (
        "bot", SERVER, "refund", REFUND)
    # Two decisions for the one call: escalate (with its escalation), then allow.
    assert outcomes(gateway.events) == [("escalate", str(escalation.pk)),
                                        ("allow", str(escalation.pk))]
    assert len({e["call_id"] for e in gateway.events}) == 1
    assert "approved by a human" in gateway.events[-1]["reason"]
    assert AuditEvent.objects.filter(action="escalation.consumed").count() == 1
    assert gateway.escalations.attached == 0

    # The approval was spent: the same call again asks again (a new escalation).
    second = decide_when_asked(tenant_a, bob, "deny", reason="once is enough", count=2)
    again = as_agent(gateway.url, BOT_TOKEN, refund())
    second.join(10)
    assert again.is_error and "once is enough" in text_of(again)
    assert Escalation.objects.count() == 2
    assert upstream[0].calls == [("refund", REFUND)]


def test_a_denied_call_is_a_tool_error_that_says_why(bundle, serve_gateway, upstream,
                                                     escalating, tenant_a, bob, postgres_only):
    gateway = escalating(serve_gateway, bundle)
    approver = decide_when_asked(tenant_a, bob, "deny", reason="refunds are frozen")
    result = as_agent(gateway.url, BOT_TOKEN, refund())
    approver.join(10)
    assert result.is_error
    assert "approval denied: refunds are frozen" in text_of(result)
    assert result.meta["tollgate/escalation"]["status"] == "denied"
    assert upstream[0].calls == []
    escalation = Escalation.objects.get()
    assert escalation.consumed_at is None
    assert outcomes(gateway.events) == [("escalate", str(escalation.pk)),
                                        ("deny", str(escalation.pk))]


# --- the hold's maximum, retries, restarts ------------------------------------------------------


def test_a_hold_past_its_maximum_is_pending_and_a_retry_reattaches(bundle, serve_gateway,
                                                                   upstream, escalating,
                                                                   tenant_a, bob, tmp_path):
    gateway = escalating(serve_gateway, bundle, max_hold=1, wait_seconds=1)
    pending = as_agent(gateway.url, BOT_TOKEN, refund())
    escalation = Escalation.objects.get()
    assert pending.is_error
    assert text_of(pending).startswith("pending approval: waiting for a human decision")
    assert "call the tool again with the same arguments" in text_of(pending)
    meta = pending.meta["tollgate/escalation"]
    assert (meta["id"], meta["status"]) == (str(escalation.pk), "pending")
    assert upstream[0].calls == []

    # A retry with the same call re-attaches: still one escalation.
    as_agent(gateway.url, BOT_TOKEN, refund())
    assert Escalation.objects.count() == 1
    # Other arguments are another call: another escalation.
    as_agent(gateway.url, BOT_TOKEN, refund({"id": "order-78"}))
    assert Escalation.objects.count() == 2

    # The gateway restarts (a new process: only the state file remains); a human approves;
    # the agent's retry re-attaches, is forwarded once, and the approval is spent.
    restarted = escalating(serve_gateway, bundle, max_hold=5, wait_seconds=1,
                           state_file=tmp_path / "escalations.json")
    approvals.escalation_decide(tenant=tenant_a, actor=SYSTEM, escalation=escalation,
                                approver=bob, outcome="approve")
    done = as_agent(restarted.url, BOT_TOKEN, refund())
    assert not done.is_error, text_of(done)
    assert upstream[0].calls == [("refund", REFUND)]
    assert Escalation.objects.count() == 2
    escalation.refresh_from_db()
    assert escalation.consumed_at is not None


def test_an_escalation_nobody_decided_in_time_is_an_expiry_error(bundle, serve_gateway,
                                                                 upstream, escalating):
    gateway = escalating(serve_gateway, bundle, max_hold=1, wait_seconds=1)
    assert "pending approval" in text_of(as_agent(gateway.url, BOT_TOKEN, refund()))
    # Time passes beyond the escalation's decision deadline (moved, not waited for).
    Escalation.objects.update(deadline=timezone.now() - timedelta(seconds=1))
    result = as_agent(gateway.url, BOT_TOKEN, refund())
    assert result.is_error
    assert "approval expired: No decision by the deadline" in text_of(result)
    assert result.meta["tollgate/escalation"]["status"] == "expired"
    assert Escalation.objects.get().status == "expired"
    assert upstream[0].calls == []
    assert gateway.escalations.attached == 0  # the next identical call asks again


def test_an_approval_does_not_override_a_grant_revoked_during_the_hold(
        bundle, serve_gateway, upstream, escalating, tenant_a, bob):
    current = {"bundle": bundle}
    gateway = escalating(serve_gateway, lambda: current["bundle"], max_hold=1, wait_seconds=1)
    assert "pending approval" in text_of(as_agent(gateway.url, BOT_TOKEN, refund()))
    # While the call waits: the grant is revoked, the gateway gets the new bundle, and then an
    # approver (who has not noticed) approves.
    grant = Grant.objects.get(scope__name="payroll:refund")
    registry.grant_revoke(tenant=tenant_a, actor=SYSTEM, grant=grant, reason="fraud")
    published = bundle_publish(tenant=tenant_a, trigger="test")
    current["bundle"] = verify_bundle(bytes(published.blob.content),
                                      jwks=selectors.jwks(tenant_a.pk), tenant=tenant_a.slug)
    approvals.escalation_decide(tenant=tenant_a, actor=SYSTEM,
                                escalation=Escalation.objects.get(), approver=bob,
                                outcome="approve")
    result = as_agent(gateway.url, BOT_TOKEN, refund())
    assert result.is_error
    assert "no grant of bot covers payroll/refund" in text_of(result), text_of(result)
    assert upstream[0].calls == []
    assert Escalation.objects.get().consumed_at is None  # the approval was not spent
    assert gateway.events[-1]["bundle_revision"] == current["bundle"].revision_number


def test_a_call_approved_after_its_grant_was_revoked_mid_hold_is_refused(
        bundle, serve_gateway, upstream, escalating, tenant_a, bob, postgres_only):
    current = {"bundle": bundle}
    gateway = escalating(serve_gateway, lambda: current["bundle"])

    def revoke_then_approve() -> None:
        try:
            deadline = time.monotonic() + 30
            while not Escalation.objects.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            grant = Grant.objects.get(scope__name="payroll:refund")
            registry.grant_revoke(tenant=tenant_a, actor=SYSTEM, grant=grant, reason="fraud")
            published = bundle_publish(tenant=tenant_a, trigger="test")
            current["bundle"] = verify_bundle(bytes(published.blob.content),
                                              jwks=selectors.jwks(tenant_a.pk),
                                              tenant=tenant_a.slug)
            approvals.escalation_decide(tenant=tenant_a, actor=SYSTEM,
                                        escalation=Escalation.objects.get(), approver=bob,
                                        outcome="approve")
        finally:
            connections.close_all()

    thread = threading.Thread(target=revoke_then_approve, daemon=True)
    thread.start()
    result = as_agent(gateway.url, BOT_TOKEN, refund())
    thread.join(10)
    assert result.is_error
    assert "but the policy now refuses the call: no grant of bot covers payroll/refund" in (
        text_of(result))
    assert upstream[0].calls == []
    assert Escalation.objects.get().consumed_at is None  # the approval was not spent
    assert gateway.events[-1]["outcome"] == "deny"
    assert gateway.events[-1]["bundle_revision"] == current["bundle"].revision_number


def test_no_control_plane_means_no_approval_and_no_call(bundle, serve_gateway, upstream,
                                                        escalating):
    gateway = escalating(serve_gateway, bundle, control_plane=f"http://127.0.0.1:{free_port()}")
    result = as_agent(gateway.url, BOT_TOKEN, refund())
    assert result.is_error
    assert "needs approval and no decision could be obtained" in text_of(result)
    assert upstream[0].calls == []
    assert [e["outcome"] for e in gateway.events] == ["escalate", "deny"]


def test_a_receipt_that_does_not_verify_is_not_spent(bundle, serve_gateway, upstream,
                                                     escalating, tenant_a, bob, postgres_only):
    from cryptography.hazmat.primitives.asymmetric import ec

    from bundles.packaging import public_jwk

    stranger = public_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(),
                          selectors.jwks(tenant_a.pk)["keys"][0]["kid"])

    async def wrong_keys(fresh: bool) -> dict[str, Any]:
        return {"keys": [stranger]}

    gateway = escalating(serve_gateway, bundle, keys=wrong_keys)
    approver = decide_when_asked(tenant_a, bob)
    result = as_agent(gateway.url, BOT_TOKEN, refund())
    approver.join(10)
    assert result.is_error and "receipt was rejected (bad_signature" in text_of(result)
    assert upstream[0].calls == []
    assert Escalation.objects.get().consumed_at is None


def test_the_same_call_is_the_same_fingerprint_and_nothing_else_is():
    base = dict(issuer="i", subject="s", agent="bot", server="payroll", tool="refund",
                arguments={"id": 1}, arguments_sha256="a" * 64, reason="r", bundle_revision=1)
    same = HeldCall(**{**base, "reason": "other", "bundle_revision": 2})
    assert HeldCall(**base).fingerprint == same.fingerprint
    for field, value in (("subject", "t"), ("tool", "pay"), ("server", "hr"),
                         ("arguments_sha256", "b" * 64)):
        assert HeldCall(**{**base, field: value}).fingerprint != same.fingerprint


def test_attachments_survive_in_the_state_file_and_old_ones_are_forgotten(tmp_path: Path):
    state = tmp_path / "escalations.json"

    async def keys(fresh: bool) -> dict[str, Any]:
        return {}

    first = Escalations("http://cp", "t", "alpha", keys=keys, state_file=state)
    first._attached = {"new": {"id": "1", "attached_at": time.time()},
                       "old": {"id": "2", "attached_at": time.time() - 2 * 86400}}
    first._save()
    assert set(Escalations("http://cp", "t", "alpha", keys=keys,
                           state_file=state)._attached) == {"new"}
    state.write_text("not json")
    assert Escalations("http://cp", "t", "alpha", keys=keys, state_file=state).attached == 0
    anyio.run(first.aclose)
