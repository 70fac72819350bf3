"""Delegation: an agent acting for a person, through the reference gateway.

The payroll agent is known by its OAuth client id; its grant of payroll:read holds only on
behalf of members of ``hr-staff``. A bundle built and published by the control plane, the proxy
served by uvicorn with OAuth access tokens of a real (threaded) authorization server, the
official SDK client as the agent, and the decision events ingested by the control plane.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bundles import selectors
from bundles.publish import bundle_publish
from decision_logs.models import DecisionLog
from decision_logs.services import decisions_ingest
from gateway.decision import ALLOW, DENY, decide, resolve_caller
from gateway.escalations import HeldCall
from gateway.jwks import JwksCache
from gateway.logs import decision_event
from gateway.oauth import OAuthIdentities
from gateway.verify import verify_bundle
from registry.discovery import discover_tools
from tests.factories import AgentFactory, GrantFactory, ScopeFactory, ServerFactory, ToolFactory
from tests.gateway import test_gateway_proxy as proxy_tests
from tests.gateway.test_gateway_proxy import SERVER, call, text_of
from tests.mcp_support import as_agent
from tests.oauth_support import FakeIssuer

CLIENT = "payroll-bot-client"
# The proxy tests' fixtures: a real upstream MCP server and the proxy served by uvicorn.
upstream_served = proxy_tests.upstream_served
upstream = proxy_tests.upstream
serve_gateway = proxy_tests.serve_gateway
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


# --- The decision (pure) -----------------------------------------------------------------------

IDP = "https://idp.example"
DATA = {
    "agents": {"bot": {"status": "active"}, "helper": {"status": "active"}},
    "principals": {IDP: {"bot-sub": "bot"}},
    "clients": {IDP: {CLIENT: "bot"}},
    "servers": {"s": {"status": "active"}},
    "tools": {"s/read": {"server": "s", "name": "read", "definition_sha256": "1"}},
    "withheld_tools": {}, "scopes": {"sc": {"tools": ["s/read"]}},
    "grants": [{"id": "1", "agent": "bot", "scope": "sc", "calls_per_minute": None,
                "calls_per_day": None, "window": None, "expires_at": None,
                "argument_constraints": {}, "approval_mode": "never", "approval_condition": {},
                "on_behalf_of_group": "hr-staff"}],
}


def _decide(**caller):
    return decide(DATA, issuer=IDP, server="s", tool="read", arguments={}, at=NOW, **caller)


def test_who_acts_for_whom():
    alice = {"subject": "alice", "groups": ["hr-staff"]}
    # A token of the agent's client for a person; the person's own groups.
    assert resolve_caller(DATA, issuer=IDP, subject="alice", client_id=CLIENT,
                          groups=["hr-staff", "hr-staff"]) == ("bot", alice)
    # The agent on its own: its subject, or client credentials (sub = client id).
    assert resolve_caller(DATA, issuer=IDP, subject="bot-sub", client_id=CLIENT) == ("bot", None)
    assert resolve_caller(DATA, issuer=IDP, subject=CLIENT, client_id=CLIENT) == ("bot", None)
    # RFC 8693: the actor is the agent (by subject or client id), the subject the person.
    assert resolve_caller(DATA, issuer=IDP, subject="alice", actor="bot-sub",
                          groups=["hr-staff"]) == ("bot", alice)
    assert resolve_caller(DATA, issuer=IDP, subject="alice", actor=CLIENT,
                          groups=["hr-staff"]) == ("bot", alice)
    # An actor that is no agent is an unknown principal, even when the subject is one.
    assert resolve_caller(DATA, issuer=IDP, subject="bot-sub", actor="stranger") == (None, None)
    # A client id of another issuer, or a client that is no agent's: unknown.
    assert resolve_caller(DATA, issuer="https://other", subject="alice",
                          client_id=CLIENT) == (None, None)
    assert resolve_caller(DATA, issuer=IDP, subject="alice", client_id="x") == (None, None)


def test_a_group_grant_allows_members_only_and_names_the_person():
    inside = _decide(subject="alice", client_id=CLIENT, groups=["hr-staff"])
    assert (inside.outcome, inside.reason, inside.on_behalf_of) == (
        ALLOW, "grant 1", {"subject": "alice", "groups": ["hr-staff"]})
    outside = _decide(subject="bob", client_id=CLIENT, groups=["sales"])
    assert (outside.outcome, outside.reason, outside.on_behalf_of) == (
        DENY, "grant 1: bob is not in group hr-staff", {"subject": "bob", "groups": ["sales"]})
    alone = _decide(subject="bot-sub")
    assert (alone.outcome, alone.reason, alone.on_behalf_of) == (
        DENY, "grant 1: only on behalf of a member of hr-staff, and the call is not made for "
              "a person", None)


def test_the_person_is_in_the_decision_log_event_and_the_escalation_request():
    decision = _decide(subject="alice", client_id=CLIENT, groups=["hr-staff"])
    event = decision_event(decision=decision, agent=None, principal={"issuer": IDP,
                           "subject": "alice"}, server="s", tool="read",
                           arguments_sha256="0" * 64, bundle_revision=3, tenant="acme")
    assert event["input"]["on_behalf_of"] == {"subject": "alice", "groups": ["hr-staff"]}
    plain = decision_event(decision=_decide(subject="bot-sub"), agent=None, principal=None,
                           server="s", tool="read", arguments_sha256="0" * 64,
                           bundle_revision=3, tenant="acme")
    assert "on_behalf_of" not in plain["input"]
    held = {"issuer": IDP, "subject": "alice", "agent": "bot", "server": "s", "tool": "read",
            "arguments": {}, "arguments_sha256": "0" * 64, "reason": "r", "bundle_revision": 3}
    for_alice = HeldCall(**held, on_behalf_of={"subject": "alice", "groups": []})
    for_carol = HeldCall(**held, on_behalf_of={"subject": "carol", "groups": []})
    # Another person's identical call is another escalation; a call without one keeps its key.
    assert for_alice.fingerprint != for_carol.fingerprint != HeldCall(**held).fingerprint


# --- Through the gateway -----------------------------------------------------------------------


@pytest.fixture
def issuer():
    with FakeIssuer() as served:
        yield served


@pytest.fixture
def world(tenant_a, upstream, issuer):
    """payroll-bot (OAuth client CLIENT of the issuer) holds payroll:read for hr-staff only;
    reporter (subject "reporter") holds payroll:read on its own."""
    server = ServerFactory(tenant=tenant_a, name=SERVER, url=upstream[1])
    found = discover_tools(transport="streamable-http", url=upstream[1], timeout=15)
    tools = ToolFactory.listed(server, found.tools, approved=sorted(d.name for d in found.tools))
    scope = ScopeFactory(tenant=tenant_a, name="payroll:read", tools=[tools["read"]])
    bot = AgentFactory(tenant=tenant_a, name="payroll-bot",
                       principals=[(issuer.issuer, CLIENT, "client")])
    reporter = AgentFactory(tenant=tenant_a, name="reporter",
                            principals=[(issuer.issuer, "reporter")])
    GrantFactory(tenant=tenant_a, agent=bot, scope=scope, on_behalf_of_group="hr-staff")
    GrantFactory(tenant=tenant_a, agent=reporter, scope=scope)
    bundle = bundle_publish(tenant=tenant_a, trigger="test")
    verified = verify_bundle(bytes(bundle.blob.content), jwks=selectors.jwks(tenant_a.pk),
                             tenant=tenant_a.slug)
    assert verified.data["schema_version"] == 3
    assert verified.data["clients"] == {issuer.issuer: {CLIENT: "payroll-bot"}}
    return verified


def test_a_delegated_call_is_allowed_for_a_member_refused_for_others_and_logged(
        tenant_a, world, issuer, serve_gateway, upstream):
    identities = OAuthIdentities(issuer=issuer.issuer, resource="http://placeholder/mcp",
                                 jwks=JwksCache(issuer=issuer.issuer, min_refetch=0.0))
    gateway = serve_gateway(lambda: world, identities=identities)
    identities.resource = gateway.url  # the resource URI is the URL the agent calls

    def token(**claims):
        return issuer.token(audience=gateway.url, **claims)

    alice = token(subject="alice", azp=CLIENT, groups=["hr-staff"])
    result = as_agent(gateway.url, alice, call("read", {"id": "e-1"}))
    assert not result.is_error, text_of(result)
    assert upstream[0].calls == [("read", {"id": "e-1"})]

    bob = token(subject="bob", azp=CLIENT, groups=["sales"])
    refused = as_agent(gateway.url, bob, call("read", {"id": "e-2"}))
    assert refused.is_error
    assert "bob is not in group hr-staff" in text_of(refused)

    on_its_own = token(subject=CLIENT, client_id=CLIENT)  # client credentials: no person
    alone = as_agent(gateway.url, on_its_own, call("read", {"id": "e-3"}))
    assert alone.is_error and "not made for a person" in text_of(alone)

    exchanged = token(subject="alice", act={"sub": CLIENT}, groups=["hr-staff"])  # RFC 8693
    assert not as_agent(gateway.url, exchanged, call("read", {"id": "e-4"})).is_error
    assert [c[1]["id"] for c in upstream[0].calls] == ["e-1", "e-4"]

    reporter = token(subject="reporter")
    assert not as_agent(gateway.url, reporter, call("read", {"id": "e-5"})).is_error

    people = [(e["outcome"], e["agent"], e["on_behalf_of"]) for e in gateway.events]
    assert people == [
        ("allow", "payroll-bot", {"subject": "alice", "groups": ["hr-staff"]}),
        ("deny", "payroll-bot", {"subject": "bob", "groups": ["sales"]}),
        ("deny", "payroll-bot", None),
        ("allow", "payroll-bot", {"subject": "alice", "groups": ["hr-staff"]}),
        ("allow", "reporter", None),
    ]

    # The control plane stores who the agent acted for.
    from gateway.__main__ import decision_sink

    class Queue(list):
        def log(self, event):
            self.append(event)

    queue = Queue()
    sink = decision_sink(queue, tenant_a.slug, {})
    for fields in gateway.events:
        sink(fields)
    result = decisions_ingest(tenant_id=tenant_a.pk, gateway_id=None, events=list(queue))
    assert result.accepted == 5
    stored = list(DecisionLog.objects.filter(tenant=tenant_a).order_by("timestamp", "id")
                  .values_list("outcome", "on_behalf_of", "on_behalf_of_groups"))
    assert stored == [("allow", "alice", ["hr-staff"]), ("deny", "bob", ["sales"]),
                      ("deny", "", []), ("allow", "alice", ["hr-staff"]), ("allow", "", [])]


def test_the_escalation_request_names_the_person(tmp_path):
    """The gateway's ``POST escalations`` carries ``on_behalf_of`` for a delegated call (and
    nothing new otherwise), so the approver sees who the agent acts for."""
    import json as _json

    import anyio

    from gateway.escalations import Escalations
    from tests.gateway_support import StubServer

    created = (201, {"Content-Type": "application/json"}, _json.dumps(
        {"id": "7f9c3c52-3f51-4a3e-a1e3-7f0e8c6d2b11", "status": "pending",
         "expires_at": (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    ).encode())
    script = {("POST", "/api/v1/gateway/escalations"): [created]}
    held = {"issuer": IDP, "subject": "alice", "agent": "bot", "server": "s", "tool": "read",
            "arguments": {"id": 1}, "arguments_sha256": "0" * 64, "reason": "r",
            "bundle_revision": 3}
    with StubServer(script) as stub:
        async def keys(refresh: bool) -> dict:
            return {"keys": []}

        escalations = Escalations(stub.url, "gw-token", "acme", keys=keys,
                                  state_file=tmp_path / "escalations.json")
        person = HeldCall(**held, on_behalf_of={"subject": "alice", "groups": ["hr-staff"]})
        anyio.run(escalations._attach, person.fingerprint, person)
        alone = HeldCall(**held)
        anyio.run(escalations._attach, alone.fingerprint, alone)
    bodies = [_json.loads(body) for method, path, headers, body in stub.requests]
    assert bodies[0]["on_behalf_of"] == {"subject": "alice", "groups": ["hr-staff"]}
    assert "on_behalf_of" not in bodies[1]


def test_resources_follow_the_group_requirement_too():
    """decide_feature (resources, prompts, completion) counts a group grant only for a member of
    the group, and names the person."""
    from gateway.decision import decide_feature

    data = {**DATA, "servers": {"s": {"status": "active", "forward": ["resources"]}}}

    def feature(**caller):
        return decide_feature(data, issuer=IDP, server="s", feature="resources", at=NOW,
                              **caller)

    inside = feature(subject="alice", client_id=CLIENT, groups=["hr-staff"])
    assert (inside.outcome, inside.on_behalf_of) == (
        ALLOW, {"subject": "alice", "groups": ["hr-staff"]})
    assert feature(subject="bob", client_id=CLIENT, groups=["sales"]).outcome == DENY
    assert feature(subject="bot-sub").outcome == DENY
