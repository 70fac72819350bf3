"""Policy export for other gateways: gateway/agentgateway.py over real compiled bundles, and the
downloads (agentgateway YAML, the bundle's Cedar files) on the web and the API.

The CEL rules are checked by evaluating them with a real CEL implementation (cel-python, see
``cel_allows`` in tests/test_policy_export_cel.py, which also runs the random differential
against decide()), reading the YAML file as agentgateway would.
"""

from __future__ import annotations

import copy
import io
import json
import zipfile
from datetime import datetime, timedelta

import pytest
import yaml
from django.utils import timezone

from bundles import selectors
from bundles.publish import bundle_publish
from gateway.agentgateway import translate, yaml_string
from gateway.decision import ALLOW, ESCALATE, decide
from governance.audit.services import Actor
from registry import services as registry
from registry.compiler import compile_data
from registry.models import ToolScope
from tests.bundle_support import IDP, decision_world, payroll_world, tar_files
from tests.bundles.test_policy_export_cel import cel_allows
from tests.factories import (
    AgentFactory,
    GrantFactory,
    ScopeFactory,
    ServerFactory,
    ToolFactory,
)

SYSTEM = Actor.system("test")
MESH = "spiffe://mesh.example"
NASTY_SUBJECT = 'q"uo\\te\nnew'
T = "/t/alpha"
API = "/api/v1/t/alpha"


# --- A registry with every case -------------------------------------------------------------


def _grant(tenant, agent_name, scope, principals=(), **terms):
    agent = AgentFactory(tenant=tenant, name=agent_name, principals=principals)
    return agent, GrantFactory(tenant=tenant, agent=agent, scope=scope, **terms)


@pytest.fixture
def world(tenant_a):
    """decision_world (payroll: read, pay approved; export quarantined; wipe blocked; draft
    pending; agent old suspended) plus grants of every kind (bot's constrains pay's amount;
    limited's has a rate and a quota; careful's needs approval; nightly's has a window and an
    expiry), a suspended server hr, and a principal whose subject needs escaping."""
    base = decision_world(tenant_a)
    scope, bot = base["scope"], base["bot"]
    registry.agent_principal_add(tenant=tenant_a, actor=SYSTEM, agent=bot, issuer=IDP,
                                 subject=NASTY_SUBJECT)
    constrained = GrantFactory(tenant=tenant_a, agent=bot, scope=scope,
                               argument_constraints={"pay": {"amount": {"maximum": 100}}})
    _, limited = _grant(tenant_a, "limited", scope, [(IDP, "limited")], calls_per_minute=5,
                        calls_per_day=200)
    at = timezone.now() + timedelta(minutes=5)
    _, careful = _grant(tenant_a, "careful", scope, [(IDP, "careful"), (MESH, "careful")],
                        approval_mode="always")
    _, nightly = _grant(tenant_a, "nightly", scope, [(IDP, "nightly")],
                        window_start=(at - timedelta(hours=1)).time().replace(second=0,
                                                                              microsecond=0),
                        window_end=(at + timedelta(hours=1)).time().replace(second=0,
                                                                            microsecond=0),
                        window_tz="UTC", expires_at=at + timedelta(days=2))
    _, revoked = _grant(tenant_a, "gone", scope, [(IDP, "gone")])
    registry.grant_revoke(tenant=tenant_a, actor=SYSTEM, grant=revoked)
    hr = ServerFactory(tenant=tenant_a, name="hr", url="https://hr.example/mcp")
    tool = ToolFactory(server=hr, name="lookup")
    hr_scope = ScopeFactory(tenant=tenant_a, name="hr", tools=[tool])
    GrantFactory(tenant=tenant_a, agent=bot, scope=hr_scope)
    registry.server_transition(tenant=tenant_a, actor=SYSTEM, server=hr, status="suspended")
    bundle = bundle_publish(tenant=tenant_a, trigger="test")
    return {**base, "bundle": bundle, "data": selectors.bundle_data(bundle), "at": at,
            "constrained": constrained, "limited": limited, "careful": careful,
            "nightly": nightly, "revoked": revoked}


def _rules(export) -> set[tuple[str, str, str, str]]:
    return {(r.issuer, r.subject, r.server, r.tool) for rules in export.rules.values()
            for r in rules}


def _export(world, unpinned="allow", **kwargs):
    return translate(world["data"], at=world["at"], revision=world["bundle"].revision_number,
                     expires_at="2030-01-01T00:00:00Z", unpinned=unpinned, **kwargs)


def test_by_default_pinned_tools_get_no_rule_and_the_header_says_why(world):
    export = _export(world, unpinned="deny")
    assert _rules(export) == set()
    config = yaml.safe_load(export.text)
    assert config["binds"][0]["listeners"][0]["routes"][0]["policies"] == {
        "mcpAuthorization": {"rules": ["false"]}}
    assert "# Pinned definitions: every tool is refused" in export.text
    pinned = [e for e in export.not_expressed if e["kind"] == "pinned_definition"]
    assert pinned and all(e["effect"].startswith("no rule") for e in pinned)
    assert "# Pinned definitions: NOT checked (unpinned=allow)" in _export(world).text
    with pytest.raises(ValueError):
        _export(world, unpinned="maybe")


def test_one_rule_per_principal_and_allowed_tool(world):
    export = _export(world)
    # bot may call pay only through a grant that constrains its amount: CEL cannot check
    # arguments, so that grant gives no rule for pay (fail closed), and bot's rules are read's.
    # limited's grant has a rate limit: no rule at all. nightly's rules carry its window and
    # expiry.
    expected = {(IDP, subject, "payroll", tool)
                for subject in ("bot", NASTY_SUBJECT, "nightly") for tool in ("read", "pay")
                if not (subject in ("bot", NASTY_SUBJECT) and tool == "pay")}
    assert _rules(export) == expected
    conditional = {r.subject for rules in export.rules.values() for r in rules if r.condition}
    assert conditional == {"nightly"}
    config = yaml.safe_load(export.text)
    assert config == export.config()
    routes = config["binds"][0]["listeners"][0]["routes"]
    assert [r["backends"][0]["mcp"]["targets"] for r in routes] == [
        [{"name": "payroll", "mcp": {"host": "https://p.example/mcp"}}]]
    assert routes[0]["matches"] == [{"path": {"pathPrefix": "/mcp/payroll"}}]
    assert len(routes[0]["policies"]["mcpAuthorization"]["rules"]) == len(expected)
    assert (f'jwt.iss == "{IDP}" && jwt.sub == "bot" && mcp.tool.target == "payroll" '
            '&& mcp.tool.name == "read"') in routes[0]["policies"]["mcpAuthorization"]["rules"]


def test_withheld_tools_suspended_agents_and_servers_and_revoked_grants_give_no_rule(world):
    export = _export(world)
    tools = {tool for (_, _, _, tool) in _rules(export)}
    assert tools.isdisjoint({"export", "wipe", "draft", "lookup"})  # quarantined, blocked…
    subjects = {subject for (_, subject, _, _) in _rules(export)}
    assert subjects.isdisjoint({"old", "gone", "careful", "limited"})  # … approval, rate
    assert "hr" not in export.config()["binds"][0]["listeners"][0]["routes"][0]["name"]
    left_out = {(e["what"], e["name"]): e["why"] for e in export.left_out}
    assert left_out[("server", "hr")] == "server is suspended"
    assert left_out[("tool", "payroll/export")] == "tool is quarantined"
    assert left_out[("tool", "payroll/wipe")] == "tool is blocked"
    assert any(why == "agent old is suspended" for why in left_out.values())
    revoked = str(world["revoked"].pk)  # not in the bundle at all
    assert revoked not in {g["id"] for g in world["data"]["grants"]}
    assert all(e.get("grant") != revoked for e in export.not_expressed)
    assert ("grant", revoked) not in left_out
    text = export.text
    assert '# - server "hr": server is suspended' in text
    assert '# - tool "payroll/export": tool is quarantined' in text


def test_a_grant_expired_at_export_time_gives_no_rule(world):
    later = world["at"] + timedelta(days=3)  # nightly's grant expired meanwhile
    export = translate(world["data"], at=later, unpinned="allow")
    assert not any(subject == "nightly" for (_, subject, _, _) in _rules(export))
    assert {"what": "grant", "name": str(world["nightly"].pk), "why": "grant expired"} in (
        export.left_out)
    # …and a bundle compiled after the expiry has no such grant at all.
    data = compile_data(world["tenant"], at=later)
    assert not any(subject == "nightly" for (_, subject, _, _) in _rules(
        translate(data, at=later, unpinned="allow")))


def test_what_cel_cannot_express_is_listed_per_grant_and_refused(world):
    export = _export(world)
    listed = {(e.get("grant"), e["kind"]): e for e in export.not_expressed}
    constrained, limited, careful, nightly = (
        str(world[k].pk) for k in ("constrained", "limited", "careful", "nightly"))
    assert json.loads(listed[(constrained, "argument_constraints")]["detail"]) == {
        "pay": {"amount": {"maximum": 100}}}
    assert listed[(constrained, "argument_constraints")]["effect"].startswith(
        'no rule for "pay"')
    assert listed[(limited, "rate_limit")]["detail"] == "5 calls per minute, 200 calls per day"
    assert listed[(limited, "rate_limit")]["effect"].startswith("no rule")
    assert listed[(careful, "approval")]["detail"] == "always"
    assert listed[(careful, "approval")]["effect"].startswith("no rule")
    expressed = {(e["grant"], e["kind"]): e["detail"] for e in export.expressed}
    assert expressed[(nightly, "time_window")].endswith("UTC (days every day)")
    assert expressed[(nightly, "grant_expiry")].startswith("expires ")
    assert (nightly, "time_window") not in listed
    hashes = {e["tool"]: e["detail"] for e in export.not_expressed
              if e["kind"] == "pinned_definition"}
    assert hashes == {f"payroll/{name}": f"definition_sha256 {world['pinned'][name]}"
                      for name in ("read", "pay")}
    text = export.text
    for (grant, kind) in [*listed, *expressed]:
        if grant is not None:
            assert f"# - {kind}: grant {grant} " in text
    assert "# Valid until 2030-01-01T00:00:00Z (the bundle's expires_at)" in text
    assert f"bundle r{world['bundle'].revision_number}" in text


def test_approvals_allow_exports_the_approval_grants_and_says_so(world):
    export = _export(world, approvals="allow")
    assert {(IDP, "careful", "payroll", "read"), (MESH, "careful", "payroll", "pay")} <= (
        _rules(export))
    entry = next(e for e in export.not_expressed if e["kind"] == "approval")
    assert entry["effect"] == "allowed WITHOUT approval"
    with pytest.raises(ValueError):
        _export(world, approvals="maybe")


ARGUMENTS = {"read": {}, "pay": {"amount": 50}}


@pytest.mark.parametrize("approvals", ["deny", "allow"])
@pytest.mark.parametrize("later", [timedelta(0), timedelta(hours=2), timedelta(days=3)])
def test_rules_match_exactly_what_decide_allows_or_escalates(world, approvals, later):
    """Over every principal of the bundle and a stranger × every tool (approved, withheld,
    of the suspended server), inside nightly's window, after it and after its grant expired:
    the CEL allows ⇔ decide() allows (or, with approvals=allow, escalates) the call through a
    grant the export expresses (tests/test_policy_export_cel.expressible)."""
    from tests.bundles.test_policy_export_cel import expressible

    data, at = world["data"], world["at"] + later
    reduced = expressible(data, approvals)
    config = yaml.safe_load(_export(world, approvals=approvals).text)
    principals = [(i, s) for i, subjects in data["principals"].items() for s in subjects]
    principals.append((IDP, "stranger"))
    tools = [("payroll", name) for name in ("read", "pay", "export", "wipe", "draft")]
    tools.append(("hr", "lookup"))
    accepted = {ALLOW, ESCALATE} if approvals == "allow" else {ALLOW}
    matched = 0
    for issuer, subject in principals:
        for server, tool in tools:
            call = {"issuer": issuer, "subject": subject, "server": server, "tool": tool,
                    "arguments": ARGUMENTS.get(tool, {}), "at": at}
            expected = decide(reduced, **call).outcome in accepted
            allowed = cel_allows(config, issuer=issuer, subject=subject, server=server,
                                 tool=tool, at=at)
            assert allowed == expected, (issuer, subject, tool, later)
            if allowed:  # and so does the bundle itself
                assert decide(data, **call).outcome in accepted
            matched += allowed
    # bot (two principals): read; nightly: read and pay inside its window; careful (two
    # principals), with approvals=allow: read and pay.
    assert matched == {timedelta(0): 4, timedelta(hours=2): 2, timedelta(days=3): 2}[later] + (
        4 if approvals == "allow" else 0)


@pytest.mark.parametrize("value", ['quo"te', "back\\slash", "new\nline", "tab\t", "nul\x00",
                                   "café", "😀", "\u2028", '"; true || "', "\x7f"])
def test_every_name_survives_cel_and_yaml_escaping(value):
    assert yaml.safe_load(yaml_string(value)) == value
    rule = translate({"tenant": "t", "agents": {"a": {"status": "active",
                                                       "principals": [[value, value]]}},
                      "principals": {value: {value: "a"}},
                      "servers": {value: {"status": "active", "transport": "sse",
                                          "url": value}},
                      "tools": {f"{value}/{value}": {"server": value, "name": value,
                                                     "definition_sha256": "00"}},
                      "withheld_tools": {}, "scopes": {"s": {"tools": [f"{value}/{value}"]}},
                      "grants": [{"id": "1", "agent": "a", "scope": "s", "approval_mode":
                                  "never", "expires_at": None}]},
                     at=datetime(2026, 1, 1, tzinfo=timezone.get_current_timezone()),
                     unpinned="allow")
    config = yaml.safe_load(rule.text)
    assert cel_allows(config, issuer=value, subject=value, server=value, tool=value)
    assert not cel_allows(config, issuer=value, subject=value + "x", server=value, tool=value)
    assert rule.text.isascii() and "\x00" not in rule.text


def test_a_server_nobody_may_use_gets_a_rule_that_never_matches(tenant_a, dave):
    payroll_world(tenant_a, owner=dave)  # bot has no principal: nobody can be identified
    bundle = bundle_publish(tenant=tenant_a, trigger="test")
    export = translate(selectors.bundle_data(bundle), at=timezone.now())
    config = yaml.safe_load(export.text)
    assert config["binds"][0]["listeners"][0]["routes"][0]["policies"] == {
        "mcpAuthorization": {"rules": ["false"]}}


def test_targets_follow_the_transport_and_stdio_asks_for_its_command(world):
    data = copy.deepcopy(world["data"])
    data["servers"]["payroll"]["transport"] = "sse"
    target = translate(data, at=world["at"]).config()["binds"][0]["listeners"][0]["routes"][0][
        "backends"][0]["mcp"]["targets"][0]
    assert target == {"name": "payroll", "sse": {"host": "https://p.example/mcp"}}
    data["servers"]["payroll"]["transport"] = "stdio"
    export = translate(data, at=world["at"])
    target = export.config()["binds"][0]["listeners"][0]["routes"][0]["backends"][0]["mcp"][
        "targets"][0]
    assert target == {"name": "payroll", "stdio": {"cmd": "", "args": []}}
    assert '# - stdio_command: server "payroll": ' in export.text


def test_the_same_data_gives_the_same_text(world):
    shuffled = copy.deepcopy(world["data"])
    shuffled["grants"].reverse()
    shuffled["tools"] = dict(reversed(list(shuffled["tools"].items())))
    assert _export(world).text == translate(
        shuffled, at=world["at"], revision=world["bundle"].revision_number,
        expires_at="2030-01-01T00:00:00Z", unpinned="allow").text


def test_translate_wants_an_aware_time(world):
    with pytest.raises(ValueError):
        translate(world["data"], at=datetime(2026, 1, 1))  # noqa: DTZ001 - the point


# --- Downloads ------------------------------------------------------------------------------


@pytest.fixture
def published(tenant_a, dave):
    """payroll_world with bot's principal and without its grant's rate limit (a grant with one
    gives no rule)."""
    world = payroll_world(tenant_a, owner=dave)
    registry.agent_principal_add(tenant=tenant_a, actor=SYSTEM, agent=world["bot"], issuer=IDP,
                                 subject="bot")
    registry.grant_update(tenant=tenant_a, actor=SYSTEM, grant=world["grant"],
                          calls_per_minute=None)
    return bundle_publish(tenant=tenant_a, trigger="test")


def _zip_files(content: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@pytest.mark.parametrize("name", ["alice", "audrey"])
def test_admins_and_auditors_download_both_exports_on_the_web(name, login, cast, published):
    client = login(cast[name])
    page = client.get(f"{T}/bundles/")
    assert f'href="{T}/bundles/export/agentgateway/"' in page.content.decode()
    assert f'href="{T}/bundles/export/cedar/"' in page.content.decode()
    response = client.get(f"{T}/bundles/export/agentgateway/")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/yaml; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="alpha-r1-agentgateway.yaml"'
    # By default a pinned tool gets no rule (agentgateway cannot compare definitions).
    config = yaml.safe_load(response.content)
    assert not cel_allows(config, issuer=IDP, subject="bot", server="payroll", tool="pay")
    text = response.content.decode()
    expires = published.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert f"# Valid until {expires}" in text
    assert '# - pinned_definition: tool "payroll/pay": ' in text
    assert f'href="{T}/bundles/export/agentgateway/?unpinned=allow"' in page.content.decode()
    unpinned = client.get(f"{T}/bundles/export/agentgateway/?unpinned=allow")
    config = yaml.safe_load(unpinned.content)
    assert cel_allows(config, issuer=IDP, subject="bot", server="payroll", tool="pay")
    assert not cel_allows(config, issuer=IDP, subject="bot", server="payroll", tool="refund")
    assert "# Pinned definitions: NOT checked (unpinned=allow)" in unpinned.content.decode()
    cedar = client.get(f"{T}/bundles/export/cedar/")
    assert cedar.status_code == 200 and cedar["Content-Type"] == "application/zip"
    assert cedar["Content-Disposition"] == 'attachment; filename="alpha-r1-cedar.zip"'
    bundle_files = tar_files(published_content(published))
    assert _zip_files(cedar.content) == {
        "mcp/policy.cedar": bundle_files["mcp/policy.cedar"],
        "mcp/schema.cedarschema": bundle_files["mcp/schema.cedarschema"]}


def published_content(bundle) -> bytes:
    from bundles import store

    return store.load(bundle.blob_id)


@pytest.mark.parametrize("name", ["bob", "dave", "victor"])
def test_other_roles_get_403_and_no_links(name, login, cast, published):
    client = login(cast[name])
    assert f"{T}/bundles/export/" not in client.get(f"{T}/bundles/").content.decode()
    for kind in ("agentgateway", "cedar"):
        assert client.get(f"{T}/bundles/export/{kind}/").status_code == 403


def test_an_outsider_gets_404(login, cast, published, api, token_for, tenant_b):
    oscar = cast["oscar"]  # admin of bravo
    for kind in ("agentgateway", "cedar"):
        assert login(oscar).get(f"{T}/bundles/export/{kind}/").status_code == 404
        response = api(token_for(oscar, tenant_b)).get(f"{API}/bundles/export/{kind}/")
        assert response.status_code == 404 and response.json()["code"] == "not_found"


def test_without_a_bundle_the_web_says_so(login, alice, tenant_a):
    client = login(alice)
    response = client.get(f"{T}/bundles/export/cedar/", follow=True)
    assert response.redirect_chain == [(f"{T}/bundles/", 302)]
    assert "No bundle has been published for this tenant yet" in response.content.decode()
    assert f"{T}/bundles/export/" not in response.content.decode()


@pytest.mark.parametrize("option", ["approvals", "unpinned"])
def test_a_bad_option_value_is_refused(option, login, alice, published, admin):
    assert login(alice).get(f"{T}/bundles/export/agentgateway/?{option}=x").status_code == 400
    response = admin.get(f"{API}/bundles/export/agentgateway/?{option}=x")
    assert response.status_code == 400 and option in response.json()["errors"]


@pytest.mark.parametrize("name", ["alice", "audrey"])
def test_the_api_serves_both_exports(name, as_user, cast, published):
    client = as_user(cast[name])
    response = client.get(f"{API}/bundles/export/agentgateway/?approvals=allow&unpinned=allow",
                          HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="alpha-r1-agentgateway.yaml"'
    assert "Approvals: grants needing approval are exported as plain allows." in (
        response.content.decode())
    assert cel_allows(yaml.safe_load(response.content), issuer=IDP, subject="bot",
                      server="payroll", tool="pay")
    cedar = client.get(f"{API}/bundles/export/cedar/")
    assert cedar.status_code == 200 and cedar["Content-Type"] == "application/zip"
    files = tar_files(published_content(published))
    assert _zip_files(cedar.content) == {name: files[name] for name in (
        "mcp/policy.cedar", "mcp/schema.cedarschema")}


@pytest.mark.parametrize("name", ["bob", "dave", "victor"])
def test_the_api_refuses_other_roles(name, as_user, cast, published):
    for kind in ("agentgateway", "cedar"):
        response = as_user(cast[name]).get(f"{API}/bundles/export/{kind}/")
        assert response.status_code == 403
        assert response.json()["code"] == "permission_denied"


def test_the_api_without_a_bundle_is_409(admin):
    response = admin.get(f"{API}/bundles/export/agentgateway/")
    assert response.status_code == 409
    assert response.json()["code"] == "no_bundle"
    assert "No bundle has been published" in response.json()["message"]


def test_the_export_follows_the_current_bundle(tenant_a, admin, published):
    late = registry.agent_create(tenant=tenant_a, actor=SYSTEM, name="late", owner=None)
    registry.agent_principal_add(tenant=tenant_a, actor=SYSTEM, agent=late, issuer=IDP,
                                 subject="late")
    registry.grant_create(tenant=tenant_a, actor=SYSTEM, agent=late,
                          scope=ToolScope.objects.for_tenant(tenant_a).get(name="payroll:write"))
    bundle_publish(tenant=tenant_a, trigger="test")
    response = admin.get(f"{API}/bundles/export/agentgateway/?unpinned=allow")
    assert response["Content-Disposition"] == 'attachment; filename="alpha-r2-agentgateway.yaml"'
    assert cel_allows(yaml.safe_load(response.content), issuer=IDP, subject="late",
                      server="payroll", tool="pay")
