"""The diff of two bundles' data.json (bundles/diff.py), and reading data.json out of
a tarball safely."""

from __future__ import annotations

import copy
import gzip
import io
import json
import tarfile

import pytest

from bundles.diff import BundleReadError, diff_data, display, read_data

BASE = {
    "schema_version": 1,
    "tenant": "alpha",
    "agents": {
        "bot": {"status": "active", "owner": "dave", "environment": "prod",
                "principals": [["https://idp", "bot"]]},
    },
    "principals": {"https://idp": {"bot": "bot"}},
    "servers": {"payroll": {"status": "active", "transport": "streamable-http",
                            "url": "https://p/mcp", "version": "", "risk_tier": "high",
                            "data_classes": ["pii"]}},
    "tools": {"payroll/pay": {"server": "payroll", "name": "pay", "title": "Pay",
                              "definition_sha256": "a" * 64, "annotations": {}}},
    "withheld_tools": {"payroll/wipe": "blocked"},
    "scopes": {"payroll:write": {"risk_level": "high", "data_classes": [],
                                 "tools": ["payroll/pay"]}},
    "grants": [{"id": "2", "agent": "bot", "scope": "payroll:write", "calls_per_minute": 10,
                "calls_per_day": None, "window": None, "argument_constraints": {},
                "approval_mode": "never", "approval_condition": {}, "expires_at": None}],
    "escalation": {"decision_timeout_seconds": 900, "hold_seconds": 60,
                   "endpoint": "/api/v1/gateway/escalations"},
}


def _names(rows) -> list[str]:
    return [row.key for row in rows]


def test_identical_documents_have_an_empty_diff():
    diff = diff_data(BASE, copy.deepcopy(BASE))
    assert diff.is_empty
    assert diff.changed_sections == []
    assert [s.name for s in diff.sections] == ["agents", "servers", "tools", "scopes", "grants",
                                               "withheld_tools", "escalation"]


def test_it_lists_added_and_removed_entries_per_section():
    new = copy.deepcopy(BASE)
    new["agents"]["helper"] = {"status": "active", "owner": None, "environment": "",
                               "principals": []}
    del new["tools"]["payroll/pay"]
    new["tools"]["payroll/refund"] = {"server": "payroll", "name": "refund", "title": "",
                                      "definition_sha256": "b" * 64, "annotations": {}}
    new["grants"] = []

    diff = diff_data(BASE, new)

    assert not diff.is_empty
    assert _names(diff.section("agents").added) == ["helper"]
    assert diff.section("agents").removed == [] and diff.section("agents").changed == []
    assert _names(diff.section("tools").added) == ["payroll/refund"]
    assert _names(diff.section("tools").removed) == ["payroll/pay"]
    removed_grant = diff.section("grants").removed[0]
    assert removed_grant.key == "2"
    assert removed_grant.label == "bot → payroll:write (grant 2)"
    assert removed_grant.value["calls_per_minute"] == 10
    assert [s.name for s in diff.changed_sections] == ["agents", "tools", "grants"]


def test_a_changed_entry_lists_each_field_before_and_after():
    new = copy.deepcopy(BASE)
    new["grants"][0]["calls_per_minute"] = 20
    new["grants"][0]["approval_mode"] = "always"
    new["servers"]["payroll"]["data_classes"] = ["pii", "financial"]

    diff = diff_data(BASE, new)

    (grant,) = diff.section("grants").changed
    assert grant.label == "bot → payroll:write (grant 2)"
    assert [(f.field, f.before, f.after) for f in grant.fields] == [
        ("approval_mode", "never", "always"), ("calls_per_minute", 10, 20)]
    (server,) = diff.section("servers").changed
    assert [(f.field, f.before_text, f.after_text) for f in server.fields] == [
        ("data_classes", '["pii"]', '["pii", "financial"]')]


def test_a_field_that_appears_or_disappears_is_a_change_even_when_null():
    new = copy.deepcopy(BASE)
    new["agents"]["bot"]["team"] = None
    del new["agents"]["bot"]["environment"]
    (change,) = diff_data(BASE, new).section("agents").changed
    assert [(f.field, f.before, f.after) for f in change.fields] == [
        ("environment", "prod", None), ("team", None, None)]


def test_withheld_tools_change_by_status():
    new = copy.deepcopy(BASE)
    new["withheld_tools"]["payroll/wipe"] = "quarantined"
    new["withheld_tools"]["payroll/export"] = "quarantined"
    section = diff_data(BASE, new).section("withheld_tools")
    assert _names(section.added) == ["payroll/export"]
    assert section.added[0].fields == [("", "quarantined")]
    (change,) = section.changed
    assert [(f.field, f.before, f.after) for f in change.fields] == [
        ("status", "blocked", "quarantined")]


def test_escalation_settings_are_one_entry():
    new = copy.deepcopy(BASE)
    new["escalation"]["hold_seconds"] = 30
    (change,) = diff_data(BASE, new).section("escalation").changed
    assert change.key == "settings"
    assert [(f.field, f.before, f.after) for f in change.fields] == [("hold_seconds", 60, 30)]


def test_grants_are_matched_by_id_and_ordered_numerically():
    old = copy.deepcopy(BASE)
    new = copy.deepcopy(BASE)
    new["grants"] = [dict(BASE["grants"][0], id=str(n)) for n in (2, 10, 9)]
    section = diff_data(old, new).section("grants")
    assert _names(section.added) == ["9", "10"]
    assert section.changed == [] and section.removed == []


def test_against_nothing_everything_is_added():
    diff = diff_data({}, BASE)
    assert _names(diff.section("agents").added) == ["bot"]
    assert _names(diff.section("grants").added) == ["2"]
    assert _names(diff.section("escalation").added) == ["settings"]
    assert all(not s.removed and not s.changed for s in diff.sections)


def test_the_json_form_names_sections_entries_and_fields():
    new = copy.deepcopy(BASE)
    new["grants"][0]["calls_per_day"] = 100
    body = diff_data(BASE, new).as_dict()
    assert body["is_empty"] is False
    assert body["sections"]["grants"] == {
        "label": "Grants", "added": [], "removed": [],
        "changed": [{"key": "2", "label": "bot → payroll:write (grant 2)",
                     "fields": [{"field": "calls_per_day", "before": None, "after": 100}]}],
    }
    assert body["sections"]["agents"] == {"label": "Agents", "added": [], "removed": [],
                                          "changed": []}
    json.dumps(body)  # plain JSON


def test_display_shows_values_for_a_person():
    assert display(None) == "—"
    assert display("prod") == "prod"
    assert display("") == "(empty)"
    assert display({"b": 1, "a": [1, "x"]}) == '{"a": [1, "x"], "b": 1}'
    assert display(True) == "true"


# --- Reading data.json out of a tarball ----------------------------------------------------------


def _tarball(members: dict[str, bytes], kinds: dict[str, bytes] | None = None) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name, kind in (kinds or {}).items():
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    return gzip.compress(raw.getvalue())


def test_it_reads_data_json_out_of_a_bundle():
    data = json.dumps(BASE).encode()
    tarball = _tarball({".manifest": b"{}", "mcp/data.json": data, "mcp/policy.cedar": b""})
    assert read_data(tarball) == BASE


def test_a_leading_slash_is_accepted_as_in_opa_bundles():
    assert read_data(_tarball({"/mcp/data.json": b'{"a": 1}'})) == {"a": 1}


def test_it_refuses_what_is_not_a_bundle():
    with pytest.raises(BundleReadError, match="not a readable gzipped tar"):
        read_data(b"not a tarball")
    with pytest.raises(BundleReadError, match="has no mcp/data.json"):
        read_data(_tarball({".manifest": b"{}"}))
    with pytest.raises(BundleReadError, match="not valid JSON"):
        read_data(_tarball({"mcp/data.json": b"{nope"}))
    with pytest.raises(BundleReadError, match="not a JSON object"):
        read_data(_tarball({"mcp/data.json": b"[1, 2]"}))


def test_a_link_instead_of_data_json_is_not_followed():
    with pytest.raises(BundleReadError, match="not a regular file"):
        read_data(_tarball({}, kinds={"mcp/data.json": tarfile.SYMTYPE}))


def test_an_oversized_data_json_is_not_read():
    tarball = _tarball({"mcp/data.json": b'{"a": "' + b"x" * 2000 + b'"}'})
    with pytest.raises(BundleReadError, match="larger than 1000 bytes"):
        read_data(tarball, max_bytes=1000)
