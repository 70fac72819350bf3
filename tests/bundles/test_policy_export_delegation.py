"""Delegation in the agentgateway export (gateway/agentgateway.py): what its CEL cannot check —
who the agent acts for and that person's groups — fails closed."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.agentgateway import translate

IDP = "https://idp.example"
AT = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _data(group: str | None) -> dict:
    grant = {"id": "1", "agent": "bot", "scope": "sc", "calls_per_minute": None,
             "calls_per_day": None, "window": None, "expires_at": None,
             "argument_constraints": {}, "approval_mode": "never", "approval_condition": {}}
    if group:
        grant["on_behalf_of_group"] = group
    return {
        "tenant": "acme",
        "agents": {"bot": {"status": "active", "principals": [[IDP, "bot"]],
                           "clients": [[IDP, "bot-client"]]}},
        "principals": {IDP: {"bot": "bot"}}, "clients": {IDP: {"bot-client": "bot"}},
        "servers": {"s": {"status": "active", "transport": "streamable-http",
                          "url": "https://s.example/mcp"}},
        "tools": {"s/t": {"server": "s", "name": "t", "definition_sha256": "1"}},
        "withheld_tools": {}, "scopes": {"sc": {"tools": ["s/t"]}}, "grants": [grant],
    }


def test_a_grant_for_a_group_gives_no_rule_and_says_so():
    export = translate(_data("hr-staff"), at=AT, unpinned="allow")
    assert export.rules["s"] == []
    assert "false" in export.text  # a server nobody may call gets the rule that never matches
    kinds = {item["kind"]: item for item in export.not_expressed}
    assert kinds["on_behalf_of"]["detail"] == "only on behalf of a member of hr-staff"
    assert kinds["on_behalf_of"]["effect"].startswith("no rule: refused")


def test_client_ids_give_no_rules_only_subjects_do():
    export = translate(_data(None), at=AT, unpinned="allow")
    assert [(r.issuer, r.subject) for r in export.rules["s"]] == [(IDP, "bot")]
    assert "bot-client" not in export.text
