"""The bundle's data.json (registry/compiler.py) and the decision function over it
(gateway/decision.py): built from real registry state through the services."""

from __future__ import annotations

import json
from datetime import UTC, datetime, time, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from bundles.packaging import bundle_json
from gateway.decision import ALLOW, DENY, ESCALATE, decide
from governance.audit.services import Actor
from registry import services
from registry.compiler import compile_data
from registry.models import Tool
from tests.factories import Def, def_sha

SYSTEM = Actor.system("test")
IDP = "https://idp.example"
# A Wednesday, 10:00 in Paris.
NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)




def _grant(world, **terms):
    return services.grant_create(tenant=world["tenant"], actor=SYSTEM, agent=world["bot"],
                                 scope=world["scope"], **terms)


def _data(world, at=NOW):
    """Compiled, written canonically and read back: exactly what a gateway parses."""
    return json.loads(bundle_json(compile_data(world["tenant"], at=at)))


def _decide(data, tool="read", *, subject="bot", arguments=None, at=NOW, **kwargs):
    return decide(data, issuer=IDP, subject=subject, server="payroll", tool=tool,
                  arguments=arguments or {}, at=at, **kwargs)


def test_only_approved_tools_of_active_servers_are_in_the_bundle(world):
    data = _data(world)
    assert sorted(data["tools"]) == ["payroll/pay", "payroll/read"]
    assert data["tools"]["payroll/read"]["definition_sha256"] == world["pinned"]["read"]
    assert data["scopes"]["payroll"]["tools"] == ["payroll/pay", "payroll/read"]
    assert data["principals"] == {IDP: {"bot": "bot", "old": "old"}}
    assert data["agents"]["old"]["status"] == "suspended"
    assert data["withheld_tools"] == {"payroll/export": "quarantined", "payroll/wipe": "blocked"}
    assert data["escalation"]["decision_timeout_seconds"] == 900


def test_a_server_entry_names_what_is_forwarded_besides_tools_only_when_enabled(world):
    assert "forward" not in _data(world)["servers"]["payroll"]  # older bundles' bytes
    services.server_update(tenant=world["tenant"], actor=SYSTEM, server=world["server"],
                           forward=["resources", "completion"])
    assert _data(world)["servers"]["payroll"]["forward"] == ["completion", "resources"]


def test_the_same_state_compiles_to_the_same_bytes(world):
    _grant(world, calls_per_minute=5, argument_constraints={"pay": {"amount": {"maximum": 10}}})
    first = bundle_json(compile_data(world["tenant"], at=NOW))
    second = bundle_json(compile_data(world["tenant"], at=NOW))
    assert first == second
    assert b"\n" not in first and b": " not in first


def test_compiling_takes_the_same_queries_whatever_the_size(world, tenant_a):
    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            compile_data(tenant_a, at=NOW)
        return len(ctx.captured_queries)

    small = queries()
    for i in range(5):
        agent = services.agent_create(tenant=tenant_a, actor=SYSTEM, name=f"a{i}", owner=None)
        services.agent_principal_add(tenant=tenant_a, actor=SYSTEM, agent=agent, issuer=IDP,
                                     subject=f"a{i}")
        services.grant_create(tenant=tenant_a, actor=SYSTEM, agent=agent, scope=world["scope"])
        services.scope_create(tenant=tenant_a, actor=SYSTEM, name=f"s{i}",
                              tools=world["tools"].values())
    assert queries() == small


def test_a_plain_grant_allows_and_everything_else_is_denied(world):
    _grant(world)
    data = _data(world)
    assert _decide(data).outcome == ALLOW
    assert _decide(data, subject="stranger").reason == "unknown principal"
    assert _decide(data, subject="old").reason == "agent old is suspended"
    assert _decide(data, tool="export").reason == "tool payroll/export is quarantined"
    assert _decide(data, tool="wipe").reason == "tool payroll/wipe is blocked"
    assert _decide(data, tool="draft").reason == "tool payroll/draft is not approved"
    assert decide(data, issuer=IDP, subject="bot", server="hr", tool="read", arguments={},
                  at=NOW).reason == "unknown server hr"


def test_no_grant_means_deny(world):
    assert _decide(_data(world)).reason == "no grant of bot covers payroll/read"


def test_the_live_definition_must_match_the_pinned_one(world):
    _grant(world)
    data = _data(world)
    assert _decide(data, live_sha256=world["pinned"]["read"]).outcome == ALLOW
    assert _decide(data, live_sha256="0" * 64).reason == (
        "tool payroll/read definition differs from the pinned one")


def test_a_suspended_server_denies(world):
    _grant(world)
    services.server_transition(tenant=world["tenant"], actor=SYSTEM, server=world["server"],
                               status="suspended")
    data = _data(world)
    assert _decide(data).reason == "server payroll is suspended"
    assert data["tools"] == {}


def test_expiry_revocation_and_compile_time(world):
    grant = _grant(world, expires_at=datetime.now(UTC) + timedelta(hours=1))
    data = _data(world, at=datetime.now(UTC))
    assert _decide(data, at=datetime.now(UTC)).outcome == ALLOW
    # A gateway holding that bundle stops honouring the grant when it expires.
    late = datetime.now(UTC) + timedelta(hours=2)
    assert _decide(data, at=late).reason == f"grant {grant.pk} expired"
    # Compiled after expiry, the grant is gone; so is a revoked one.
    def bots_grants(data):
        return [g for g in data["grants"] if g["agent"] == "bot"]

    assert bots_grants(_data(world, at=late)) == []
    services.grant_revoke(tenant=world["tenant"], actor=SYSTEM, grant=grant)
    assert bots_grants(_data(world, at=datetime.now(UTC))) == []


@pytest.mark.parametrize(("at", "outcome"), [
    (datetime(2026, 11, 25, 9, 0, tzinfo=UTC), ALLOW),    # Wed 10:00 Paris
    (datetime(2026, 11, 25, 17, 0, tzinfo=UTC), DENY),    # Wed 18:00 Paris: end is exclusive
    (datetime(2026, 11, 25, 6, 59, tzinfo=UTC), DENY),    # Wed 07:59 Paris
    (datetime(2026, 11, 28, 9, 0, tzinfo=UTC), DENY),     # Saturday
])
def test_the_time_window_is_read_in_its_time_zone(world, at, outcome):
    _grant(world, window_start=time(8), window_end=time(18), window_days=[0, 1, 2, 3, 4],
           window_tz="Europe/Paris")
    assert _decide(_data(world), at=at).outcome == outcome


@pytest.mark.parametrize(("at", "outcome"), [
    (datetime(2026, 11, 27, 23, 0, tzinfo=UTC), ALLOW),   # Friday 23:00: Friday's night
    (datetime(2026, 11, 28, 5, 0, tzinfo=UTC), ALLOW),    # Saturday 05:00: still Friday's night
    (datetime(2026, 11, 28, 23, 0, tzinfo=UTC), DENY),    # Saturday night: not a listed day
    (datetime(2026, 11, 27, 12, 0, tzinfo=UTC), DENY),    # Friday noon: outside
])
def test_an_overnight_window_belongs_to_the_day_it_starts(world, at, outcome):
    _grant(world, window_start=time(22), window_end=time(6), window_days=[4])  # Fridays, UTC
    assert _decide(_data(world), at=at).outcome == outcome


def test_argument_constraints_hold_or_deny(world):
    grant = _grant(world, argument_constraints={"pay": {"amount": {"maximum": 100},
                                                        "currency": {"enum": ["EUR"]}}})
    data = _data(world)
    assert _decide(data, "pay", arguments={"amount": 50, "currency": "EUR"}).outcome == ALLOW
    assert _decide(data, "pay", arguments={"amount": 500, "currency": "EUR"}).reason == (
        f"grant {grant.pk}: argument amount: must be a number ≤ 100")
    assert _decide(data, "pay", arguments={"currency": "EUR"}).reason == (
        f"grant {grant.pk}: argument amount: required by the grant's constraints")
    assert _decide(data, "read", arguments={"anything": 1}).outcome == ALLOW  # unconstrained


def test_approval_modes_escalate(world):
    grant = _grant(world, approval_mode="when",
                   approval_condition={"pay": {"amount": {"minimum": 1000}}})
    data = _data(world)
    assert _decide(data, "pay", arguments={"amount": 10}).outcome == ALLOW
    high = _decide(data, "pay", arguments={"amount": 5000})
    assert (high.outcome, high.grant) == (ESCALATE, str(grant.pk))
    services.grant_update(tenant=world["tenant"], actor=SYSTEM, grant=grant,
                          approval_mode="always", approval_condition={})
    assert _decide(_data(world), "read").outcome == ESCALATE


def test_a_grant_without_approval_wins_over_one_that_escalates(world):
    _grant(world, approval_mode="always")
    plain = _grant(world)
    decision = _decide(_data(world))
    assert (decision.outcome, decision.grant) == (ALLOW, str(plain.pk))


def test_rate_and_quota_are_counted_by_the_gateway(world):
    grant = _grant(world, calls_per_minute=3, calls_per_day=10)
    data = _data(world)
    assert _decide(data, usage=lambda gid: (2, 9)).outcome == ALLOW
    assert _decide(data, usage=lambda gid: (3, 9)).reason == (
        f"grant {grant.pk}: rate limit 3/minute reached")
    assert _decide(data, usage=lambda gid: (0, 10)).reason == (
        f"grant {grant.pk}: quota 10/day reached")


def test_the_call_time_must_be_aware(world):
    with pytest.raises(ValueError, match="timezone-aware"):
        _decide(_data(world), at=datetime(2026, 1, 1))  # noqa: DTZ001 - the point of the test


def test_values_are_compared_as_json_and_nan_never_passes_a_bound():
    from gateway.constraints import check_value, json_equal

    assert not json_equal(True, 1) and not json_equal([1], [True]) and json_equal(1, 1.0)
    assert check_value({"enum": [1, 2]}, True) is not None
    assert check_value({"maximum": 100}, float("nan")) is not None
    assert check_value({"minimum": 0}, float("inf")) is not None


def test_a_runaway_pattern_fails_closed():
    from gateway.constraints import matches, violations

    evil = {"t": {"q": {"pattern": "^(a|a)*$"}}}  # exponential backtracking
    attack = {"q": "a" * 40 + "b"}
    assert violations(evil, "t", attack)  # a constraint that cannot be checked is violated
    assert matches(evil, "t", attack)  # an approval condition that cannot be checked holds


def test_tools_whose_keys_collide_are_withheld(tenant_a):
    """Registry server names contain "/": ("io.acme", "pay/read") and ("io.acme/pay", "read")
    would share the key "io.acme/pay/read"; neither is callable through the other."""
    for server_name, tool_name in (("io.acme", "pay/read"), ("io.acme/pay", "read")):
        server = services.server_create(tenant=tenant_a, actor=SYSTEM, name=server_name,
                                        transport="streamable-http", url="https://x.example/m")
        services.server_transition(tenant=tenant_a, actor=SYSTEM, server=server,
                                   status="active")
        services.tools_record_discovery(tenant=tenant_a, actor=SYSTEM, server=server,
                                        definitions=[(Def(tool_name), def_sha(Def(tool_name)))])
        services.tool_approve(tenant=tenant_a, actor=SYSTEM, tool=Tool.objects.get(server=server))
    data = _data({"tenant": tenant_a})
    assert data["tools"] == {}
    assert data["withheld_tools"] == {"io.acme/pay/read": "ambiguous"}
