"""Policy export for other gateways: gateway/agentgateway.py over real compiled bundles, and the
downloads (agentgateway YAML, the bundle's Cedar files) on the web and the API.

The CEL rules are checked by evaluating them: ``cel_allows`` below is a tiny evaluator for
exactly the subset the exporter writes (``ident == "literal"`` joined by ``&&``, or ``false``),
which parses the text of the YAML file as agentgateway would read it. Its verdicts are compared
with gateway.decision.decide() on the same bundle data.
"""

from __future__ import annotations

import copy
import io
import json
import random
import re
import zipfile
from datetime import datetime, timedelta

import pytest
import yaml
from django.utils import timezone

from bundles import selectors
from bundles.publish import bundle_publish
from gateway.agentgateway import cel_string, translate, yaml_string
from gateway.decision import ALLOW, ESCALATE, decide
from governance.audit.services import Actor
from registry import services as registry
from registry.compiler import compile_data
from registry.models import ToolScope
from tests.bundle_support import IDP, decision_world, payroll_world, tar_files
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


# --- A tiny evaluator of the emitted CEL subset ---------------------------------------------

_TOKEN = re.compile(
    r'\s*(?:(?P<ident>[a-z]+(?:\.[a-z]+)*)|(?P<op>==|&&)|(?P<str>"(?:[^"\\]|\\.)*"))')
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


def _unquote(literal: str) -> str:
    body, out, i = literal[1:-1], [], 0
    while i < len(body):
        if body[i] != "\\":
            out.append(body[i])
            i += 1
        elif body[i + 1] == "u":
            out.append(chr(int(body[i + 2:i + 6], 16)))
            i += 6
        else:
            out.append(_ESCAPES[body[i + 1]])
            i += 2
    return "".join(out)


def cel_terms(rule: str) -> dict[str, str] | None:
    """{identifier: literal} of a conjunction of equalities; None for ``false``."""
    if rule == "false":
        return None
    terms, pos = {}, 0
    while True:
        parts = []
        for _ in range(3):
            match = _TOKEN.match(rule, pos)
            assert match, (rule, pos)
            parts.append(match)
            pos = match.end()
        ident, op, lit = parts
        assert ident["ident"] and op["op"] == "==" and lit["str"], rule
        assert ident["ident"] not in terms, rule
        terms[ident["ident"]] = _unquote(lit["str"])
        if pos == len(rule):
            return terms
        match = _TOKEN.match(rule, pos)
        assert match and match["op"] == "&&", rule
        pos = match.end()


def cel_allows(config: dict, *, issuer: str, subject: str, server: str, tool: str) -> bool:
    """Would agentgateway allow the call through ``config`` (route of ``server``)?"""
    variables = {"jwt.iss": issuer, "jwt.sub": subject, "mcp.tool.target": server,
                 "mcp.tool.name": tool}
    for route in config["binds"][0]["listeners"][0]["routes"]:
        targets = route["backends"][0]["mcp"]["targets"]
        if [t["name"] for t in targets] != [server]:
            continue
        rules = route["policies"]["mcpAuthorization"]["rules"]
        assert rules, "an empty rule list would allow everything"
        for rule in rules:
            terms = cel_terms(rule)
            assert terms is None or set(terms) == set(variables), rule
            if terms is not None and terms == variables:
                return True
    return False  # no route for the server: nothing reaches it


def test_the_evaluator_reads_what_it_should():
    rule = 'jwt.iss == "a" && jwt.sub == "b\\"c" && mcp.tool.target == "s" && mcp.tool.name == "t"'
    assert cel_terms(rule) == {"jwt.iss": "a", "jwt.sub": 'b"c', "mcp.tool.target": "s",
                               "mcp.tool.name": "t"}
    with pytest.raises(AssertionError):
        cel_terms('jwt.sub == "a" || true')


# --- A registry with every case -------------------------------------------------------------


def _grant(tenant, agent_name, scope, principals=(), **terms):
    agent = AgentFactory(tenant=tenant, name=agent_name, principals=principals)
    return agent, GrantFactory(tenant=tenant, agent=agent, scope=scope, **terms)


@pytest.fixture
def world(tenant_a):
    """decision_world (payroll: read, pay approved; export quarantined; wipe blocked; draft
    pending; agent old suspended) plus grants of every kind, a suspended server hr, and a
    principal whose subject needs escaping."""
    base = decision_world(tenant_a)
    scope, bot = base["scope"], base["bot"]
    registry.agent_principal_add(tenant=tenant_a, actor=SYSTEM, agent=bot, issuer=IDP,
                                 subject=NASTY_SUBJECT)
    constrained = GrantFactory(tenant=tenant_a, agent=bot, scope=scope, calls_per_minute=5,
                               calls_per_day=200,
                               argument_constraints={"pay": {"amount": {"maximum": 100}}})
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
            "constrained": constrained, "careful": careful, "nightly": nightly,
            "revoked": revoked}


def _rules(export) -> set[tuple[str, str, str, str]]:
    return {(r.issuer, r.subject, r.server, r.tool) for rules in export.rules.values()
            for r in rules}


def _export(world, **kwargs):
    return translate(world["data"], at=world["at"], revision=world["bundle"].revision_number,
                     expires_at="2030-01-01T00:00:00Z", **kwargs)


def test_one_rule_per_principal_and_allowed_tool(world):
    export = _export(world)
    # bot may call pay only through a grant that constrains its amount: CEL cannot check
    # arguments, so that grant gives no rule for pay (fail closed), and bot's rules are read's.
    expected = {(IDP, subject, "payroll", tool)
                for subject in ("bot", NASTY_SUBJECT, "nightly") for tool in ("read", "pay")
                if not (subject in ("bot", NASTY_SUBJECT) and tool == "pay")}
    assert _rules(export) == expected
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
    assert subjects.isdisjoint({"old", "gone", "careful"})  # suspended, revoked, approval
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
    export = translate(world["data"], at=later)
    assert not any(subject == "nightly" for (_, subject, _, _) in _rules(export))
    assert {"what": "grant", "name": str(world["nightly"].pk), "why": "grant expired"} in (
        export.left_out)
    # …and a bundle compiled after the expiry has no such grant at all.
    data = compile_data(world["tenant"], at=later)
    assert not any(subject == "nightly" for (_, subject, _, _) in _rules(
        translate(data, at=later)))


def test_what_cel_cannot_express_is_listed_per_grant(world):
    export = _export(world)
    listed = {(e.get("grant"), e["kind"]): e for e in export.not_expressed}
    constrained, careful, nightly = (str(world[k].pk) for k in ("constrained", "careful",
                                                                   "nightly"))
    assert json.loads(listed[(constrained, "argument_constraints")]["detail"]) == {
        "pay": {"amount": {"maximum": 100}}}
    assert listed[(constrained, "rate_limit")]["detail"] == (
        "5 calls per minute, 200 calls per day")
    assert listed[(careful, "approval")]["detail"] == "always"
    assert listed[(careful, "approval")]["effect"].startswith("no rule")
    assert listed[(nightly, "time_window")]["detail"].endswith("UTC (days every day)")
    assert listed[(nightly, "grant_expiry")]["detail"].startswith("expires ")
    hashes = {e["tool"]: e["detail"] for e in export.not_expressed
              if e["kind"] == "pinned_definition"}
    assert hashes == {f"payroll/{name}": f"definition_sha256 {world['pinned'][name]}"
                      for name in ("read", "pay")}
    text = export.text
    for (grant, kind) in listed:
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
def test_rules_match_exactly_what_decide_allows_or_escalates(world, approvals):
    """Over every principal of the bundle and a stranger × every tool (approved, withheld,
    of the suspended server): a rule matches ⇔ decide() allows (or, with approvals=allow,
    escalates) the call, inside the window, through a grant that does not constrain the tool's
    arguments (a constrained tool gets no rule from its grant: fail closed)."""
    data = world["data"]
    unconstrained = _relaxed(data, "allow")
    config = yaml.safe_load(_export(world, approvals=approvals).text)
    principals = [(i, s) for i, subjects in data["principals"].items() for s in subjects]
    principals.append((IDP, "stranger"))
    tools = [("payroll", name) for name in ("read", "pay", "export", "wipe", "draft")]
    tools.append(("hr", "lookup"))
    accepted = {ALLOW, ESCALATE} if approvals == "allow" else {ALLOW}
    matched = 0
    for issuer, subject in principals:
        for server, tool in tools:
            decision = decide(unconstrained, issuer=issuer, subject=subject, server=server,
                              tool=tool, arguments=ARGUMENTS.get(tool, {}), at=world["at"])
            if decision.outcome in accepted:  # and so does the bundle itself
                assert decide(data, issuer=issuer, subject=subject, server=server, tool=tool,
                              arguments=ARGUMENTS.get(tool, {}),
                              at=world["at"]).outcome == decision.outcome
            allowed = cel_allows(config, issuer=issuer, subject=subject, server=server,
                                 tool=tool)
            assert allowed == (decision.outcome in accepted), (issuer, subject, tool, decision)
            matched += allowed
    assert matched == (8 if approvals == "allow" else 4)  # not bot's pay: its grant constrains it


def _relaxed(data: dict, approvals: str) -> dict:
    """``data`` without what the export leaves out on purpose (windows), with the tools a grant
    constrains refused by that grant (the export fails closed: no rule for them; an argument
    that must be one of no values is never satisfied) and, with approvals=deny, without grants
    that need approval."""
    relaxed = copy.deepcopy(data)
    relaxed["grants"] = [
        {**g, "window": None, "argument_constraints": {
            tool: {"never": {"enum": []}} for tool, args in
            (g.get("argument_constraints") or {}).items() if args}}
        for g in relaxed["grants"] if approvals == "allow" or g["approval_mode"] == "never"]
    return relaxed


def random_differences(approvals: str, documents: int = 150, mutate=None) -> tuple[int, int, list]:
    """(pairs checked, pairs allowed, mismatches) of rule matching against decide() over random
    data.json documents; ``mutate`` changes what the exporter is given (not what decide sees)."""
    from tests.bundles.test_cedar_differential import BASE, random_data

    rng = random.Random(20261124)
    checked = allowed_count = 0
    mismatches = []
    for _ in range(documents):
        data = random_data(rng)
        given = mutate(copy.deepcopy(data)) if mutate else data
        config = yaml.safe_load(translate(given, at=BASE, approvals=approvals).text)
        relaxed = _relaxed(data, approvals)
        principals = [(i, s) for i, subjects in data["principals"].items() for s in subjects]
        principals.append((IDP, "stranger"))
        tools = sorted({(t["server"], t["name"]) for t in data["tools"].values()}
                       | {tuple(k.split("/", 1)) for k in data["withheld_tools"]})
        for issuer, subject in principals:
            for server, tool in tools:
                decision = decide(relaxed, issuer=issuer, subject=subject, server=server,
                                  tool=tool, arguments={}, at=BASE)
                expected = decision.outcome in ({ALLOW, ESCALATE} if approvals == "allow"
                                                else {ALLOW})
                allowed = cel_allows(config, issuer=issuer, subject=subject, server=server,
                                     tool=tool)
                if allowed != expected:
                    mismatches.append((issuer, subject, server, tool, decision))
                checked += 1
                allowed_count += allowed
    return checked, allowed_count, mismatches


@pytest.mark.parametrize("approvals", ["deny", "allow"])
def test_rules_agree_with_decide_on_random_documents(approvals):
    checked, allowed, mismatches = random_differences(approvals)
    assert mismatches == []
    assert checked > 1000 and 50 < allowed < checked - 50


def _everyone_active(data):
    for agent in data["agents"].values():
        agent["status"] = "active"
    return data


def _servers_active(data):
    for server in data["servers"].values():
        server["status"] = "active"
    return data


def _never_expire(data):
    for grant in data["grants"]:
        grant["expires_at"] = None
    return data


def _never_ask(data):
    for grant in data["grants"]:
        grant["approval_mode"] = "never"
    return data


def _withheld_approved(data):
    for key, _ in data["withheld_tools"].items():
        server, name = key.split("/", 1)
        data["tools"][key] = {"server": server, "name": name, "definition_sha256": "00"}
    return data


@pytest.mark.parametrize("mutate", [_everyone_active, _servers_active, _never_expire,
                                    _never_ask, _withheld_approved])
def test_a_wrong_export_is_caught_by_the_differential(mutate):
    assert random_differences("deny", documents=60, mutate=mutate)[2]


@pytest.mark.parametrize("value", ['quo"te', "back\\slash", "new\nline", "tab\t", "nul\x00",
                                   "café", "😀", "\u2028", '"; true || "', "\x7f"])
def test_every_name_survives_cel_and_yaml_escaping(value):
    assert _unquote(cel_string(value)) == value
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
                     at=datetime(2026, 1, 1, tzinfo=timezone.get_current_timezone()))
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
        expires_at="2030-01-01T00:00:00Z").text


def test_translate_wants_an_aware_time(world):
    with pytest.raises(ValueError):
        translate(world["data"], at=datetime(2026, 1, 1))  # noqa: DTZ001 - the point


# --- Downloads ------------------------------------------------------------------------------


@pytest.fixture
def published(tenant_a, dave):
    world = payroll_world(tenant_a, owner=dave)
    registry.agent_principal_add(tenant=tenant_a, actor=SYSTEM, agent=world["bot"], issuer=IDP,
                                 subject="bot")
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
    config = yaml.safe_load(response.content)
    assert cel_allows(config, issuer=IDP, subject="bot", server="payroll", tool="pay")
    assert not cel_allows(config, issuer=IDP, subject="bot", server="payroll", tool="refund")
    text = response.content.decode()
    expires = published.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert f"# Valid until {expires}" in text and "# - rate_limit: grant " in text
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


def test_a_bad_approvals_value_is_refused(login, alice, published, admin):
    assert login(alice).get(f"{T}/bundles/export/agentgateway/?approvals=x").status_code == 400
    response = admin.get(f"{API}/bundles/export/agentgateway/?approvals=x")
    assert response.status_code == 400 and "approvals" in response.json()["errors"]


@pytest.mark.parametrize("name", ["alice", "audrey"])
def test_the_api_serves_both_exports(name, as_user, cast, published):
    client = as_user(cast[name])
    response = client.get(f"{API}/bundles/export/agentgateway/?approvals=allow",
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
    response = admin.get(f"{API}/bundles/export/agentgateway/")
    assert response["Content-Disposition"] == 'attachment; filename="alpha-r2-agentgateway.yaml"'
    assert cel_allows(yaml.safe_load(response.content), issuer=IDP, subject="late",
                      server="payroll", tool="pay")
