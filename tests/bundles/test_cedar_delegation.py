"""Delegation in the Cedar policy: the person an agent acts for is ``context.on_behalf_of``, and a
grant's ``on_behalf_of_group`` permits only when their groups contain it — as decide() says.

The random documents and calls of the Cedar differential (test_cedar_differential.py) are given
OAuth clients, group requirements and delegated callers (a token of the agent's client for a
person, an RFC 8693 ``act``), and both deciders must agree call by call.
"""

from __future__ import annotations

import copy
import json
import random

import cedarpy
import pytest

from bundles.cedar import compile_policy, compile_schema
from bundles.packaging import bundle_json
from gateway.decision import decide
from tests.bundles.test_cedar_differential import (
    IDP,
    NASTY,
    NOW,
    cedar_decide,
    random_call,
    random_data,
)

SEED = 20261207
DOCUMENTS = 150
CALLS = 12
GROUPS = ["hr-staff", "sales", NASTY[0], NASTY[7], "é"]
PEOPLE = ["alice", "bob", NASTY[2]]


def delegated_data(rng: random.Random) -> dict:
    data = random_data(rng)
    clients: dict[str, dict[str, str]] = {}
    for i, name in enumerate(sorted(data["agents"])):
        if rng.random() < 0.6:
            client = f"client-{i}"
            data["agents"][name]["clients"] = [[IDP, client]]
            clients.setdefault(IDP, {})[client] = name
    if clients:
        data["clients"] = clients
    for grant in data["grants"]:
        if rng.random() < 0.5:
            grant["on_behalf_of_group"] = rng.choice(GROUPS)
    data["schema_version"] = 3
    return json.loads(bundle_json(data))


def delegated_call(rng: random.Random, data: dict) -> dict:
    call = random_call(rng, data)
    agent = data["principals"].get(call["issuer"], {}).get(call["subject"])
    clients = {a: c for c, a in data.get("clients", {}).get(IDP, {}).items()}
    groups = rng.sample(GROUPS, rng.randint(0, 2))
    person = rng.choice(PEOPLE)
    shape = rng.random()
    if shape < 0.35 and agent in clients:  # the agent's client, for a person
        call.update(issuer=IDP, subject=person, client_id=clients[agent], groups=groups)
    elif shape < 0.6 and agent is not None:  # RFC 8693: the agent acts for the person
        actor = rng.choice([call["subject"], clients.get(agent, call["subject"])])
        call.update(subject=person, actor=actor, groups=groups)
    elif shape < 0.7 and agent in clients:  # client credentials: the agent on its own
        call.update(issuer=IDP, subject=clients[agent], client_id=clients[agent])
    elif shape < 0.75:
        call.update(actor="nobody", groups=groups)
    return call


def test_cedar_agrees_with_decide_on_delegated_calls():
    rng = random.Random(SEED)
    cases, disagreements, delegated_allows = 0, [], 0
    for _ in range(DOCUMENTS):
        data = delegated_data(rng)
        policy, schema = compile_policy(data), compile_schema(data)
        assert cedarpy.validate_policies(policy, schema).validation_passed
        calls = [delegated_call(rng, data) for _ in range(CALLS)]
        decisions = [decide(data, **call) for call in calls]
        for call, want, got in zip(calls, decisions, cedar_decide(data, calls, policy, schema),
                                   strict=True):
            cases += 1
            if want.outcome == "allow" and want.on_behalf_of:
                delegated_allows += 1
            if want.outcome != got:
                disagreements.append((want, got, call, data))
    if disagreements:
        want, got, call, data = disagreements[0]
        pytest.fail(f"{len(disagreements)} of {cases} differ; first: decide() {want}, Cedar "
                    f"{got}\ncall: {call}\ndata: {json.dumps(data, indent=1)}")
    assert delegated_allows >= 20  # the group requirement was met often enough to matter


def test_a_group_grant_permits_only_members_in_cedar():
    data = {
        "agents": {"bot": {"status": "active"}}, "principals": {IDP: {"bot": "bot"}},
        "clients": {IDP: {"bot-client": "bot"}},
        "servers": {"s": {"status": "active"}},
        "tools": {"s/t": {"server": "s", "name": "t", "definition_sha256": "1"}},
        "withheld_tools": {}, "scopes": {"sc": {"tools": ["s/t"]}},
        "grants": [{"id": "1", "agent": "bot", "scope": "sc", "calls_per_minute": None,
                    "calls_per_day": None, "window": None, "expires_at": None,
                    "argument_constraints": {}, "approval_mode": "never",
                    "approval_condition": {}, "on_behalf_of_group": "hr-staff"}],
    }
    policy, schema = compile_policy(data), compile_schema(data)
    assert 'context.on_behalf_of.groups.contains("hr-staff")' in policy
    assert '"on_behalf_of"?: { "subject": String, "groups": Set<String> }' in schema
    base = {"issuer": IDP, "server": "s", "tool": "t", "arguments": {}, "at": NOW}
    calls = [
        {**base, "subject": "alice", "client_id": "bot-client", "groups": ["hr-staff"]},
        {**base, "subject": "bob", "client_id": "bot-client", "groups": ["sales"]},
        {**base, "subject": "bot"},
        {**base, "subject": "alice", "actor": "bot", "groups": ["hr-staff"]},
    ]
    assert cedar_decide(data, calls, policy, schema) == ["allow", "deny", "deny", "allow"]
    assert [decide(data, **c).outcome for c in calls] == ["allow", "deny", "deny", "allow"]
    without = copy.deepcopy(data)
    del without["grants"][0]["on_behalf_of_group"]
    assert cedar_decide(without, calls, compile_policy(without), compile_schema(without)) == \
        ["allow", "allow", "allow", "allow"]
