"""Evidence packs: a realistic tenant history made through the real services (an approval
policy, an approved and a denied access request, a direct admin grant, a break-glass grant, an
approved escalation, bundle publishes and a key rotation), a pack built from it and opened as an
auditor would — the zip, the manifest's hashes, the CSV and JSON rows, the HTML report — then
the same pack after the data was tampered with. Plus progress, failures and retries, the pages,
the API, who may see what, and a real Celery worker on PostgreSQL and Redis."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import zipfile
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test import Client
from django.utils import timezone

from approvals import services as approvals
from approvals.models import AccessRequest, ApprovalDecision, Escalation
from bundles import services as bundles
from bundles.publish import bundle_publish
from evidence import services, tasks
from evidence.archive import cell
from evidence.controls import CONTROLS, MAPPING
from evidence.models import EvidencePack
from evidence.sections import Evidence
from gateway.receipts import arguments_sha256
from governance.audit.models import AuditChain, AuditEvent
from governance.audit.services import Actor
from registry import services as registry
from registry.models import Grant
from tests.bundle_support import SYSTEM, make_gateway, payroll_world
from tests.ui_support import expect_heading, expect_styled, messages, sign_in, table_rows

WEB = "/t/alpha/evidence/"
API = "/api/v1/t/alpha/evidence-packs/"
FILES = [
    "grants.csv", "grants.json", "approval_decisions.csv", "approval_decisions.json",
    "separation_of_duties.csv", "separation_of_duties.json", "break_glass.csv",
    "break_glass.json", "access_requests.csv", "access_requests.json", "escalations.csv",
    "escalations.json", "bundles.csv", "bundles.json", "signing_keys.csv", "signing_keys.json",
    "key_events.csv", "key_events.json", "audit_chain.csv", "audit_chain.json",
    "audit_events.csv", "audit_events.json", "controls.csv", "report.html", "manifest.json",
    "SHA256SUMS",
]
SCRIPT = "<script>alert('pwned')</script> payroll outage"


# --- The history --------------------------------------------------------------------------------

@pytest.fixture
def history(tenant_a, alice, bob, audrey, dave, victor):
    """What happened in tenant A today, made by the real services."""
    world = payroll_world(tenant_a, owner=dave)
    scope, bot = world["scope"], world["bot"]
    approvals.approval_policy_save(tenant=tenant_a, actor=Actor.user(alice), scope=scope,
                                   decision_hours=8,
                                   stages=[{"approvals_required": 1, "roles": ["approver"]}])
    first = bundle_publish(tenant=tenant_a, trigger="registry change")
    # dave asks, bob approves: a grant.
    approved = approvals.access_request_create(
        tenant=tenant_a, actor=Actor.user(dave), requester=dave, agent=bot, scope=scope,
        duration_minutes=120, justification="month-end payroll run", ticket="CHG-7")
    approvals.access_request_decide(tenant=tenant_a, actor=Actor.user(bob), request=approved,
                                    approver=bob, outcome="approve")
    approved.refresh_from_db()
    # dave asks again, bob says no.
    denied = approvals.access_request_create(
        tenant=tenant_a, actor=Actor.user(dave), requester=dave, agent=bot, scope=scope,
        duration_minutes=60, justification="one more run")
    approvals.access_request_decide(tenant=tenant_a, actor=Actor.user(bob), request=denied,
                                    approver=bob, outcome="deny", reason="already granted")
    # alice grants directly (no request), and breaks the glass.
    direct = registry.grant_create(tenant=tenant_a, actor=Actor.user(alice), agent=bot,
                                   scope=scope, created_by=alice, calls_per_minute=5)
    glass = approvals.break_glass_grant(tenant=tenant_a, actor=Actor.user(alice), admin=alice,
                                        agent=bot, scope=scope, justification=SCRIPT, minutes=30)
    # A held call: the gateway escalates, bob approves it.
    registry.grant_update(tenant=tenant_a, actor=SYSTEM, grant=world["grant"],
                          approval_mode="always")
    gateway, _ = make_gateway(tenant_a)
    args = {"employee": "e-17", "amount": 1200}
    escalation, _ = approvals.escalation_create(tenant=tenant_a, gateway=gateway, body={
        "call_id": "call-1", "agent": "bot", "server": "payroll", "tool": "pay",
        "arguments": args, "arguments_sha256": arguments_sha256(args), "bundle_revision": 1,
        "reason": "grant requires approval (always)"})
    approvals.escalation_decide(tenant=tenant_a, actor=Actor.user(bob), escalation=escalation,
                                approver=bob, outcome="approve")
    # The signing key is rotated; the next bundle is signed by the new key.
    pending = bundles.signing_key_rotate(tenant=tenant_a, actor=Actor.user(alice))
    bundles.signing_keys_activate_due(now=pending.activate_after)
    second = bundle_publish(tenant=tenant_a, trigger="key rotation")
    return {"world": world, "approved": approved, "denied": denied, "direct": direct,
            "glass": glass, "escalation": Escalation.objects.get(pk=escalation.pk),
            "bundles": (first, second), "old_kid": first.key.kid, "new_kid": pending.kid}


def _pack(tenant, *, start=None, end=None, actor=None, user=None) -> EvidencePack:
    """Request a pack and build it here (the task's body), as the worker would."""
    today = timezone.now().date()
    pack = services.evidence_pack_request(
        tenant=tenant, actor=actor or SYSTEM, requested_by=user,
        period_start=start or today - timedelta(days=30), period_end=end or today)
    services.evidence_pack_build(pack_id=pack.pk)
    return EvidencePack.objects.get(pk=pack.pk)


def _finish(claimed: EvidencePack) -> EvidencePack:
    """What evidence_pack_build does after its claim: build, then store the result."""
    return services._done(pack_id=claimed.pk, attempt=claimed.attempts,
                          built=services.build(claimed))


def _files(pack: EvidencePack) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(bytes(pack.content))) as archive:
        assert archive.testzip() is None
        return {name: archive.read(name) for name in archive.namelist()}


def _names(pack: EvidencePack) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(bytes(pack.content))) as archive:
        return archive.namelist()


def _csv(files: dict[str, bytes], name: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(files[name].decode("utf-8"), newline=""))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def _json(files: dict[str, bytes], name: str) -> list[dict]:
    return json.loads(files[name])["rows"]


def _by(rows: list[dict], key: str) -> dict:
    return {str(row[key]): row for row in rows}


# --- The pack, as an auditor reads it -----------------------------------------------------------

def test_the_pack_holds_every_file_and_the_manifest_hashes_match(history, tenant_a, audrey):
    pack = _pack(tenant_a, actor=Actor.user(audrey), user=audrey)
    assert (pack.status, pack.progress, pack.step, pack.error) == ("done", 100, "Done", "")
    content = bytes(pack.content)
    assert pack.sha256 == hashlib.sha256(content).hexdigest() and pack.size == len(content)
    assert _names(pack) == FILES  # a fixed order
    files = _files(pack)

    manifest = json.loads(files["manifest.json"])
    assert manifest["format"] == "tollgate-evidence-pack"
    assert manifest["tenant"] == {"slug": "alpha", "name": "Alpha Corp"}
    today = timezone.now().date()
    assert manifest["period"]["start"] == (today - timedelta(days=30)).isoformat()
    assert manifest["period"]["end"] == today.isoformat()
    assert manifest["generated_by"]["requested_by"] == "audrey"
    assert manifest["generated_at"].endswith("Z")
    listed = {f["name"]: f for f in manifest["files"]}
    assert list(listed) == FILES[:-2]  # everything before the manifest itself
    for name, entry in listed.items():
        assert entry["sha256"] == hashlib.sha256(files[name]).hexdigest(), name
        assert entry["size"] == len(files[name])
    sums = dict(reversed(line.split("  ")) for line in files["SHA256SUMS"].decode().splitlines())
    assert set(sums) == set(FILES[:-1])
    assert all(sums[name] == hashlib.sha256(files[name]).hexdigest() for name in sums)
    assert manifest["control_mapping"] == MAPPING
    assert [s["key"] for s in manifest["sections"]] == list(MAPPING)
    assert manifest["files"] == pack.files[:-2]  # the page lists manifest and SHA256SUMS too

    # The zip's hash is in the audit trail, with the chain head the pack saw.
    generated = AuditEvent.objects.get(tenant=tenant_a, action="evidence.generated")
    assert generated.object_id == str(pack.pk) and generated.after["sha256"] == pack.sha256
    assert generated.after["audit_chain"] == "ok"
    assert generated.prev_hash == generated.after["audit_head_hash"]
    requested = AuditEvent.objects.get(tenant=tenant_a, action="evidence.requested")
    assert (requested.actor_label, requested.object_id) == ("audrey", str(pack.pk))


def test_grants_prove_approval_before_access(history, tenant_a):
    files = _files(_pack(tenant_a))
    header, rows = _csv(files, "grants.csv")
    assert header == list(Evidence.GRANT_COLUMNS)
    grants = _by(rows, "grant_id")
    assert len(grants) == 4  # the world's own, the approved one, alice's, the break-glass one

    approved = grants[str(history["approved"].grant_id)]
    assert approved["origin"] == "request"
    assert approved["approved_before_access"] == "true"
    assert approved["access_request_id"] == str(history["approved"].pk)
    assert (approved["requester"], approved["ticket"]) == ("dave", "CHG-7")
    assert approved["justification"] == "month-end payroll run"
    assert approved["approvals"].startswith("stage 1: bob (approver) approve at ")
    assert approved["last_approval_at"] <= approved["created_at"]
    assert approved["recorded_by"] == "bob"

    direct = grants[str(history["direct"].pk)]
    assert (direct["origin"], direct["approved_before_access"]) == ("direct", "direct")
    assert (direct["created_by"], direct["recorded_by"], direct["requester"]) == (
        "alice", "alice", "")
    glass = grants[str(history["glass"].pk)]
    assert (glass["origin"], glass["approved_before_access"]) == ("break-glass", "break-glass")

    as_json = _by(_json(files, "grants.json"), "grant_id")
    assert as_json[str(history["approved"].grant_id)]["approved_before_access"] is True
    assert as_json[str(history["direct"].pk)]["approved_before_access"] == "direct"
    assert as_json[str(history["approved"].grant_id)]["approvals"] == [approved["approvals"]]

    header, decisions = _csv(files, "approval_decisions.csv")
    assert header == list(Evidence.DECISION_COLUMNS)
    assert sorted((d["subject"], d["outcome"], d["approver"], d["approver_role"])
                  for d in decisions) == [("access_request", "approve", "bob", "approver"),
                                          ("access_request", "deny", "bob", "approver"),
                                          ("escalation", "approve", "bob", "approver")]
    [granting] = [d for d in decisions if d["grant_id"]]
    assert granting["before_grant"] == "true" and granting["stage_rule"] == "approver"


def test_an_approval_recorded_after_the_grant_is_flagged(history, tenant_a):
    grant = Grant.objects.get(pk=history["approved"].grant_id)
    ApprovalDecision.objects.filter(request=history["approved"]).update(
        created_at=grant.created_at + timedelta(seconds=5))
    pack = _pack(tenant_a)
    grants = _by(_csv(_files(pack), "grants.csv")[1], "grant_id")
    assert grants[str(grant.pk)]["approved_before_access"] == "false"
    assert pack.summary["approved_after_access"] == 1


def test_separation_of_duties_passes_on_real_decisions(history, tenant_a):
    pack = _pack(tenant_a)
    files = _files(pack)
    header, rows = _csv(files, "separation_of_duties.csv")
    assert header == list(Evidence.SOD_COLUMNS)
    checked = {(r["subject"], r["subject_id"]): r for r in rows}
    assert set(checked) == {("access_request", str(history["approved"].pk)),
                            ("access_request", str(history["denied"].pk)),
                            ("escalation", str(history["escalation"].pk))}
    assert {r["result"] for r in rows} == {"pass"}
    approved = checked[("access_request", str(history["approved"].pk))]
    assert (approved["requester"], approved["agent_owner"], approved["approvers"]) == (
        "dave", "dave", "bob")
    assert "each approver counted once" in approved["reasons"]
    assert checked[("escalation", str(history["escalation"].pk))]["requester"] == (
        "gateway edge-1")
    assert (pack.summary["sod_checked"], pack.summary["sod_failed"]) == (3, 0)


def test_separation_of_duties_fails_on_a_violating_row(history, tenant_a, dave, bob):
    approved, escalation = history["approved"], history["escalation"]
    # Written straight into the database, as a buggy or malicious path would: the requester
    # (who also owns the agent) approved, and bob counted twice on the escalation.
    ApprovalDecision.objects.create(tenant=tenant_a, request=approved, stage=0, approver=dave,
                                    outcome="approve")
    ApprovalDecision.objects.create(tenant=tenant_a, escalation=escalation, stage=1,
                                    approver=bob, outcome="approve")
    pack = _pack(tenant_a)
    files = _files(pack)
    rows = {r["subject_id"]: r for r in _csv(files, "separation_of_duties.csv")[1]}
    bad = rows[str(approved.pk)]
    assert bad["result"] == "fail"
    assert "dave decided stage 1 (approve) of their own request" in bad["reasons"]
    assert "dave decided stage 1 (approve) but owns the agent" in bad["reasons"]
    twice = rows[str(escalation.pk)]
    assert twice["result"] == "fail" and "bob counted 2 times (stages 1, 2)" in twice["reasons"]
    assert rows[str(history["denied"].pk)]["result"] == "pass"
    as_json = {r["subject_id"]: r for r in _json(files, "separation_of_duties.json")}
    assert as_json[str(approved.pk)]["reasons"][0] == (
        "dave decided stage 1 (approve) of their own request")
    assert pack.summary["sod_failed"] == 2
    report = files["report.html"].decode()
    assert '<span class="fail">2 failed</span>' in report


def test_an_approved_item_missing_a_required_approval_fails(history, tenant_a):
    AccessRequest.objects.filter(pk=history["approved"].pk).update(
        stages=[{"approvals_required": 2, "roles": ["approver"], "idp_group": "",
                 "object_permission": False}])
    rows = {r["subject_id"]: r for r in _csv(_files(_pack(tenant_a)),
                                             "separation_of_duties.csv")[1]}
    assert rows[str(history["approved"].pk)]["result"] == "fail"
    assert "stage 1 was passed with 1 of 2 required approvals" in rows[
        str(history["approved"].pk)]["reasons"]


def test_break_glass_requests_escalations_bundles_and_keys_are_listed(history, tenant_a):
    files = _files(_pack(tenant_a))
    [glass] = _csv(files, "break_glass.csv")[1]
    assert (glass["grant_id"], glass["admin"], glass["minutes"]) == (
        str(history["glass"].pk), "alice", "30")
    assert glass["justification"] == SCRIPT
    assert glass["audit_seq"] == str(AuditEvent.objects.get(
        tenant=tenant_a, action="grant.break_glass").seq)

    requests = _by(_csv(files, "access_requests.csv")[1], "request_id")
    denied = requests[str(history["denied"].pk)]
    assert (denied["status"], denied["deny_reason"]) == ("denied", "already granted")
    assert "bob (approver) deny at" in denied["decisions"]
    assert "access_request.created by dave" in denied["timeline"]
    assert "access_request.denied by bob" in denied["timeline"]
    approved = requests[str(history["approved"].pk)]
    assert approved["grant_id"] == str(history["approved"].grant_id)
    assert approved["timeline"].index("access_request.approved") < approved["timeline"].index(
        "access_request.granted")
    [escalation] = _csv(files, "escalations.csv")[1]
    assert (escalation["status"], escalation["tool"], escalation["gateway"]) == (
        "approved", "pay", "edge-1")
    assert "escalation.created by gateway edge-1" in escalation["timeline"]
    assert "escalation.approved by bob" in escalation["timeline"]

    first, second = history["bundles"]
    header, revisions = _csv(files, "bundles.csv")
    assert header == list(Evidence.BUNDLE_COLUMNS)
    # Kids are random base64url: one starting with "-" is written with the CSV formula guard.
    old_kid, new_kid = cell(history["old_kid"]), cell(history["new_kid"])
    assert [(b["revision"], b["sha256"], b["kid"], b["trigger"]) for b in revisions] == [
        ("1", first.sha256, old_kid, "registry change"),
        ("2", second.sha256, new_kid, "key rotation")]
    assert revisions[0]["size"] == str(first.size)

    keys = _by(_csv(files, "signing_keys.csv")[1], "kid")
    assert keys[old_kid]["state"] == "retired"
    assert keys[new_kid]["state"] == "active"
    assert keys[new_kid]["created_by"] == "system"
    assert (keys[old_kid]["bundles_signed_in_period"],
            keys[new_kid]["bundles_signed_in_period"]) == ("1", "1")
    events = _csv(files, "key_events.csv")[1]
    assert [(e["action"], e["kid"]) for e in events] == [
        ("bundle_key.created", old_kid), ("bundle_key.rotated", new_kid),
        ("bundle_key.retired", old_kid),
        ("bundle_key.activated", new_kid)]
    assert events[1]["actor"] == "alice"


def test_the_audit_chain_is_verified_and_the_events_are_all_there(history, tenant_a):
    pack = _pack(tenant_a)
    files = _files(pack)
    [chain] = _csv(files, "audit_chain.csv")[1]
    head = AuditChain.objects.get(tenant=tenant_a)
    # The pack saw the chain up to the event before its own evidence.generated.
    assert chain["result"] == "ok" and "OK" in chain["line"]
    assert int(chain["head_seq"]) == head.last_seq - 1
    assert chain["head_hash"] == AuditEvent.objects.get(
        tenant=tenant_a, seq=head.last_seq - 1).hash
    assert chain["events_verified"] == chain["events_in_period"] == chain["head_seq"]

    header, events = _csv(files, "audit_events.csv")
    assert header == list(Evidence.EVENT_COLUMNS)
    assert [int(e["seq"]) for e in events] == list(range(1, head.last_seq))
    by_seq = {int(e["seq"]): e for e in events}
    glass = AuditEvent.objects.get(tenant=tenant_a, action="grant.break_glass")
    assert by_seq[glass.seq]["hash"] == glass.hash
    assert json.loads(by_seq[glass.seq]["after"])["justification"] == SCRIPT
    as_json = _json(files, "audit_events.json")
    assert len(as_json) == len(events) and as_json[0]["prev_hash"] == "0" * 64
    assert {e["action"] for e in as_json} >= {"tenant.created", "access_request.granted",
                                              "grant.break_glass", "bundle.published",
                                              "evidence.requested"}


def test_a_tampered_audit_row_shows_a_broken_chain(history, tenant_a, dave):
    assert _pack(tenant_a).summary["audit_chain"] == "ok"
    target = AuditEvent.objects.get(tenant=tenant_a, action="access_request.granted")
    with connection.cursor() as cursor:  # an edit behind the application's back
        cursor.execute("UPDATE audit_auditevent SET actor_label = %s WHERE id = %s",
                       ["mallory", target.pk])
    pack = _pack(tenant_a)
    [chain] = _csv(_files(pack), "audit_chain.csv")[1]
    assert chain["result"] == "broken"
    assert chain["broken_seq"] == str(target.seq)
    assert "BROKEN" in chain["line"] and "edited" in chain["problem"]
    assert pack.summary["audit_chain"] == "broken"
    generated = AuditEvent.objects.filter(tenant=tenant_a, action="evidence.generated").latest(
        "seq")
    assert generated.after["audit_chain"] == "broken"


def test_the_report_maps_every_section_to_its_controls_and_escapes_content(history, tenant_a):
    files = _files(_pack(tenant_a))
    report = files["report.html"].decode()
    assert "<script" not in report and "&lt;script&gt;alert(&#x27;pwned&#x27;)" in report
    assert 'src="http' not in report and 'href="http' not in report and "<link" not in report
    assert "default-src &#x27;none&#x27;" not in report  # the CSP meta is markup, not text
    assert "default-src 'none'" in report
    for key, mapped in MAPPING.items():
        start = report.index(f'<section id="section-{key}">')
        section = report[start:report.index("</section>", start)]
        for control, explanation in mapped.items():
            assert control in section, (key, control)
            assert explanation.replace("'", "&#x27;") in section, (key, control)
    for control in CONTROLS:
        assert f"<td><strong>{control}</strong></td>" in report
    assert "Audit chain: <span class=\"ok\">tenant alpha: OK" in report

    header, rows = _csv(files, "controls.csv")
    assert header == ["section", "section_title", "files", "framework", "control",
                      "control_title", "explanation"]
    assert {(r["section"], r["control"]) for r in rows} == {
        (section, control) for section, mapped in MAPPING.items() for control in mapped}
    assert {r["control"] for r in rows} == set(CONTROLS)
    grants = [r for r in rows if r["section"] == "grants"]
    assert grants[0]["files"] == ("grants.csv grants.json approval_decisions.csv "
                                  "approval_decisions.json")


def test_csv_cells_that_look_like_formulas_are_defused(tenant_a, alice, dave):
    world = payroll_world(tenant_a, owner=dave)
    approvals.break_glass_grant(tenant=tenant_a, actor=Actor.user(alice), admin=alice,
                                agent=world["bot"], scope=world["scope"],
                                justification="=HYPERLINK(\"http://evil\")", minutes=5)
    files = _files(_pack(tenant_a))
    [row] = _csv(files, "break_glass.csv")[1]
    assert row["justification"] == "'=HYPERLINK(\"http://evil\")"
    [as_json] = _json(files, "break_glass.json")
    assert as_json["justification"] == "=HYPERLINK(\"http://evil\")"


def test_the_period_boundaries_are_respected(history, tenant_a, alice, monkeypatch):
    today = timezone.now().date()
    long_ago = timezone.now() - timedelta(days=40)
    with monkeypatch.context() as m:  # an admin's grant made 40 days ago
        m.setattr(timezone, "now", lambda: long_ago)
        old = registry.grant_create(tenant=tenant_a, actor=Actor.user(alice),
                                    agent=history["world"]["bot"],
                                    scope=history["world"]["scope"], created_by=alice)
    Grant.objects.filter(pk=old.pk).update(created_at=long_ago)
    old_event = AuditEvent.objects.get(tenant=tenant_a, action="grant.created",
                                       object_id=str(old.pk))
    assert old_event.created_at == long_ago

    recent = _files(_pack(tenant_a, start=today - timedelta(days=30), end=today))
    assert str(old.pk) not in _by(_csv(recent, "grants.csv")[1], "grant_id")
    seqs = {int(e["seq"]) for e in _csv(recent, "audit_events.csv")[1]}
    assert old_event.seq not in seqs and old_event.seq - 1 in seqs
    [chain] = _csv(recent, "audit_chain.csv")[1]
    assert chain["result"] == "ok"  # the whole chain is verified, whatever the period
    assert int(chain["events_in_period"]) == int(chain["events_verified"]) - 1

    back_then = _files(_pack(tenant_a, start=today - timedelta(days=45),
                             end=today - timedelta(days=31)))
    assert list(_by(_csv(back_then, "grants.csv")[1], "grant_id")) == [str(old.pk)]
    assert [int(e["seq"]) for e in _csv(back_then, "audit_events.csv")[1]] == [old_event.seq]
    assert _csv(back_then, "separation_of_duties.csv")[1] == []

    # Up to yesterday: nothing of today.
    before_today = _files(_pack(tenant_a, start=today - timedelta(days=7),
                                end=today - timedelta(days=1)))
    for name in ("grants.csv", "access_requests.csv", "bundles.csv", "break_glass.csv",
                 "audit_events.csv", "key_events.csv"):
        assert _csv(before_today, name)[1] == [], name
    assert "None in this period." in before_today["report.html"].decode()


@pytest.mark.parametrize("start, end, field, message", [
    (1, 0, "period_end", "must end on or after its start"),
    (-1, 1, "period_end", "cannot end after today"),
    (-400, 0, "period_start", "at most 366 days; this period has 401"),
])
def test_the_period_is_validated(tenant_a, start, end, field, message):
    today = timezone.now().date()
    with pytest.raises(ValidationError) as refused:
        services.evidence_pack_request(tenant=tenant_a, actor=SYSTEM,
                                       period_start=today - timedelta(days=-start),
                                       period_end=today + timedelta(days=end))
    assert message in refused.value.message_dict[field][0]
    assert not EvidencePack.objects.exists()


def test_one_day_and_the_longest_period_are_accepted(tenant_a, settings):
    today = timezone.now().date()
    one = services.evidence_pack_request(tenant=tenant_a, actor=SYSTEM, period_start=today,
                                         period_end=today)
    assert one.days == 1
    longest = services.evidence_pack_request(
        tenant=tenant_a, actor=SYSTEM, period_start=today - timedelta(days=365),
        period_end=today)
    assert longest.days == settings.EVIDENCE_MAX_PERIOD_DAYS == 366


def test_a_tenant_has_a_bounded_number_of_open_packs(tenant_a, tenant_b, settings):
    settings.EVIDENCE_MAX_OPEN_PER_TENANT = 2
    today = timezone.now().date()
    for _ in range(2):
        services.evidence_pack_request(tenant=tenant_a, actor=SYSTEM, period_start=today,
                                       period_end=today)
    with pytest.raises(ValidationError, match="2 evidence packs are already being generated"):
        services.evidence_pack_request(tenant=tenant_a, actor=SYSTEM, period_start=today,
                                       period_end=today)
    services.evidence_pack_request(tenant=tenant_b, actor=SYSTEM, period_start=today,
                                   period_end=today)


def test_a_request_is_queued_on_commit(tenant_a, monkeypatch, django_capture_on_commit_callbacks):
    sent = []
    monkeypatch.setattr(tasks.build_pack, "delay", sent.append)
    today = timezone.now().date()
    with django_capture_on_commit_callbacks(execute=True):
        pack = services.evidence_pack_request(tenant=tenant_a, actor=SYSTEM, period_start=today,
                                              period_end=today)
        assert sent == []  # not before the commit
    assert sent == [pack.pk]
    assert (pack.status, pack.progress, pack.step) == ("queued", 0, "Waiting for a worker")


# --- Progress, failures and retries -------------------------------------------------------------

def _failing(monkeypatch, times: int | None = None):
    """Make one section raise (``times`` times, or always)."""
    calls = {"n": 0}
    real = Evidence.break_glass_rows

    def broken(self):
        calls["n"] += 1
        if times is None or calls["n"] <= times:
            raise RuntimeError("the disk is on fire")
        return real(self)

    monkeypatch.setattr(Evidence, "break_glass_rows", broken)
    return calls


def test_a_failing_build_is_retried_then_failed_with_the_error(history, tenant_a, monkeypatch,
                                                              settings):
    settings.EVIDENCE_BUILD_ATTEMPTS = 2
    _failing(monkeypatch)
    today = timezone.now().date()
    pack = services.evidence_pack_request(tenant=tenant_a, actor=SYSTEM,
                                          period_start=today, period_end=today)
    first = services.evidence_pack_build(pack_id=pack.pk)
    assert (first.status, first.attempts) == ("queued", 1)
    assert first.error == "RuntimeError: the disk is on fire"
    assert first.step == "Attempt 1 of 2 failed; retrying in 30 s"
    second = services.evidence_pack_build(pack_id=pack.pk)
    assert (second.status, second.attempts, second.step) == ("failed", 2, "Failed")
    assert second.error == "RuntimeError: the disk is on fire"
    pack = EvidencePack.objects.get(pk=pack.pk)
    assert pack.content is None and pack.sha256 == "" and pack.finished_at is not None
    failed = AuditEvent.objects.get(tenant=tenant_a, action="evidence.failed")
    assert failed.after["error"] == "RuntimeError: the disk is on fire"
    assert not AuditEvent.objects.filter(action="evidence.generated").exists()
    # A failed pack is not built again.
    assert services.evidence_pack_build(pack_id=pack.pk).status == "failed"


def test_the_task_retries_and_a_retry_starts_over_cleanly(history, tenant_a, monkeypatch):
    calls = _failing(monkeypatch, times=1)
    today = timezone.now().date()
    pack = services.evidence_pack_request(tenant=tenant_a, actor=SYSTEM, period_start=today,
                                          period_end=today)
    tasks.build_pack.apply(args=[pack.pk])  # eager: the retry runs at once
    pack.refresh_from_db()
    assert calls["n"] == 2
    assert (pack.status, pack.attempts, pack.error, pack.progress) == ("done", 2, "", 100)
    names = _names(pack)
    assert names == FILES and len(names) == len(set(names))  # nothing of attempt 1 left
    assert AuditEvent.objects.filter(action="evidence.generated").count() == 1
    assert tasks.build_pack.apply(args=[pack.pk]).get() == "done"  # redelivered: a no-op
    assert tasks.build_pack.apply(args=[999999]).get() == "gone"


def test_the_sweep_restarts_lost_work(tenant_a, monkeypatch, settings):
    today = timezone.now().date()
    lost = services.evidence_pack_request(tenant=tenant_a, actor=SYSTEM, period_start=today,
                                          period_end=today)
    dead = services.evidence_pack_request(tenant=tenant_a, actor=SYSTEM, period_start=today,
                                          period_end=today)
    claimed = services._claim(dead.pk)
    assert claimed.status == "running"
    later = timezone.now() + timedelta(seconds=settings.EVIDENCE_TIME_LIMIT + 120)
    assert services.evidence_packs_fail_stale(now=later) == 1
    dead.refresh_from_db()
    assert dead.status == "queued" and "stopped without finishing" in dead.error
    sent = []
    monkeypatch.setattr(tasks.build_pack, "delay", sent.append)
    monkeypatch.setattr(timezone, "now", lambda: later)
    assert tasks.sweep() == 1 and sent == [lost.pk]  # dead was re-queued just now
    assert tasks.sweep() == 0  # marked as sent: not again at once


def test_progress_is_written_as_the_build_goes(history, tenant_a, monkeypatch):
    seen = []
    real = services._progress

    def spy(pack, step, fraction):
        real(pack, step, fraction)
        seen.append(EvidencePack.objects.values_list("status", "progress", "step").get(
            pk=pack.pk))

    monkeypatch.setattr(services, "_progress", spy)
    _pack(tenant_a)
    assert seen[0] == ("running", 0, "Grants and their approvals: Grants")
    assert all(status == "running" for status, _, _ in seen)
    progresses = [p for _, p, _ in seen]
    assert progresses == sorted(progresses) and progresses[-1] <= 99
    assert any("Audit chain verification" in step for _, _, step in seen)
    assert seen[-1][2] == "Writing the manifest"


# --- Pages --------------------------------------------------------------------------------------

def test_an_auditor_requests_a_pack_and_follows_its_progress(history, login, audrey, tenant_a,
                                                             monkeypatch):
    client = login(audrey)
    page = client.get(WEB)
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="packs-empty"' in html
    today = timezone.now().date()
    assert f'value="{(today - timedelta(days=89)).isoformat()}"' in html  # last 90 days
    assert f'value="{today.isoformat()}"' in html

    sent = []
    monkeypatch.setattr(tasks.build_pack, "delay", sent.append)
    start = today - timedelta(days=6)
    posted = client.post(WEB, {"period_start": start.isoformat(),
                               "period_end": today.isoformat()})
    pack = EvidencePack.objects.get()
    assert posted.status_code == 302 and posted["Location"] == f"{WEB}{pack.pk}/"
    assert (pack.requested_by, pack.requested_by_label) == (audrey, "audrey")

    queued = client.get(f"{WEB}{pack.pk}/").content.decode()
    assert "Queued" in queued and 'hx-trigger="every 2s"' in queued
    assert "Waiting for a worker" in queued and "pack-download" not in queued
    listed = client.get(WEB).content.decode()
    assert f'id="pack-{pack.pk}"' in listed and 'hx-trigger="every 2s"' in listed

    # The worker is halfway: htmx gets the fragment with the progress.
    running = services._claim(pack.pk)
    services._progress(running, "Separation-of-duties checks", 0.42)
    fragment = client.get(f"{WEB}{pack.pk}/", HTTP_HX_REQUEST="true")
    assert "HX-Request" in fragment["Vary"]
    body = fragment.content.decode()
    assert body.startswith('<div id="pack-status"') and "<html" not in body
    assert "Running" in body and 'value="42"' in body and "42 %" in body
    assert "Separation-of-duties checks" in body and 'hx-trigger="every 2s"' in body

    # The worker finishes the attempt it claimed.
    _finish(running)
    done = client.get(f"{WEB}{pack.pk}/", HTTP_HX_REQUEST="true").content.decode()
    assert "hx-trigger" not in done  # polling stops
    assert "Done" in done and 'id="pack-download"' in done
    pack.refresh_from_db()
    assert pack.sha256 in done and "all passed" in done and "tenant alpha: OK" in done
    assert "hx-trigger" not in client.get(WEB).content.decode()

    download = client.get(f"{WEB}{pack.pk}/download/")
    assert download.status_code == 200 and download["Content-Type"] == "application/zip"
    assert download["Content-Disposition"] == (
        f'attachment; filename="tollgate-evidence-alpha-{start.isoformat()}-'
        f'{today.isoformat()}.zip"')
    assert hashlib.sha256(download.content).hexdigest() == pack.sha256
    assert json.loads(zipfile.ZipFile(io.BytesIO(download.content)).read(
        "manifest.json"))["generated_by"]["requested_by"] == "audrey"
    [event] = AuditEvent.objects.filter(tenant=tenant_a, action="evidence.downloaded")
    assert (event.actor_label, event.object_id, event.after["sha256"]) == (
        "audrey", str(pack.pk), pack.sha256)
    client.get(f"{WEB}{pack.pk}/download/")
    assert AuditEvent.objects.filter(action="evidence.downloaded").count() == 2  # each one


def test_the_form_says_what_is_wrong_and_keeps_the_input(login, alice):
    client = login(alice)
    today = timezone.now().date()
    end = today - timedelta(days=10)
    start = end - timedelta(days=1826)
    response = client.post(WEB, {"period_start": start.isoformat(), "period_end": end.isoformat()})
    assert response.status_code == 400
    html = response.content.decode()
    assert "A pack covers at most 366 days; this period has 1827." in html
    assert f'value="{start}"' in html and f'value="{end}"' in html
    future = (today + timedelta(days=3)).isoformat()
    response = client.post(WEB, {"period_start": today.isoformat(), "period_end": future})
    assert "cannot end after today" in response.content.decode()
    assert f'value="{future}"' in response.content.decode()
    response = client.post(WEB, {"period_start": "soon", "period_end": ""})
    assert response.status_code == 400
    assert "Enter a valid date." in response.content.decode()
    assert "This field is required." in response.content.decode()
    assert not EvidencePack.objects.exists()


def test_a_preset_link_fills_the_form(login, alice):
    end = timezone.now().date() - timedelta(days=10)
    start = end - timedelta(days=89)
    html = login(alice).get(WEB, {"period_start": start.isoformat(),
                                  "period_end": end.isoformat()}).content.decode()
    assert f'value="{start}"' in html and f'value="{end}"' in html
    assert "Previous quarter" in html


def test_a_failed_pack_shows_its_error_and_cannot_be_downloaded(history, login, audrey, alice,
                                                                tenant_a, monkeypatch, settings):
    settings.EVIDENCE_BUILD_ATTEMPTS = 1
    _failing(monkeypatch)
    pack = _pack(tenant_a)
    assert pack.status == "failed"
    client = login(audrey)
    html = client.get(f"{WEB}{pack.pk}/").content.decode()
    assert "Failed" in html and "RuntimeError: the disk is on fire" in html
    assert "hx-trigger" not in html and "pack-download" not in html
    listed = client.get(WEB).content.decode()
    assert "the disk is on fire" in listed
    response = client.get(f"{WEB}{pack.pk}/download/", follow=True)
    assert response.redirect_chain == [(f"{WEB}{pack.pk}/", 302)]
    assert "This evidence pack is failed: there is nothing to download yet." in (
        response.content.decode())
    assert not AuditEvent.objects.filter(action="evidence.downloaded").exists()


def test_the_list_is_paginated(login, alice, tenant_a):
    today = timezone.now().date()
    EvidencePack.objects.bulk_create([
        EvidencePack(tenant=tenant_a, period_start=today, period_end=today, status="failed")
        for _ in range(30)])
    client = login(alice)
    first = client.get(WEB).content.decode()
    assert first.count('<tr id="pack-') == 25 and "Page 1 of 2 (30 in all)" in first
    second = client.get(WEB, {"page": 2}).content.decode()
    assert second.count('<tr id="pack-') == 5


PAGES = ["", "{pk}/", "{pk}/download/"]


@pytest.fixture
def done_pack(history, tenant_a):
    return _pack(tenant_a)


@pytest.mark.parametrize("path", PAGES)
def test_outsiders_get_404_and_other_roles_403_on_pages(done_pack, login, cast, path):
    url = WEB + path.format(pk=done_pack.pk)
    assert login(cast["oscar"]).get(url).status_code == 404
    for name in ("victor", "dave", "bob"):
        assert login(cast[name]).get(url).status_code == 403, name
    for name in ("audrey", "alice"):
        assert login(cast[name]).get(url).status_code == 200, name
    assert login(cast["victor"]).post(WEB, {}).status_code == 403
    assert login(cast["oscar"]).post(WEB, {}).status_code == 404


def test_another_tenants_pack_is_404(done_pack, login, oscar):
    for path in PAGES[1:]:
        assert login(oscar).get(f"/t/bravo/evidence/{path.format(pk=done_pack.pk)}"
                                ).status_code == 404


# --- API ----------------------------------------------------------------------------------------

def test_the_api_requests_polls_and_downloads(history, as_user, audrey, tenant_a, monkeypatch):
    monkeypatch.setattr(tasks.build_pack, "delay", lambda pk: None)
    api = as_user(audrey)
    assert api.get(API).json()["results"] == []
    today = timezone.now().date()
    created = api.post(API, {"period_start": (today - timedelta(days=29)).isoformat(),
                             "period_end": today.isoformat()}, format="json")
    assert created.status_code == 202
    body = created.json()
    assert created["Location"] == f"{API}{body['id']}/"
    assert (body["status"], body["progress"], body["download_url"]) == ("queued", 0, None)
    assert body["requested_by"].startswith("audrey via token")

    early = api.get(f"{API}{body['id']}/download/")
    assert early.status_code == 409
    assert early.json() == {"code": "not_ready", "message": "The evidence pack is queued: "
                                                            "download it once it is done."}

    services.evidence_pack_build(pack_id=body["id"])
    polled = api.get(f"{API}{body['id']}/").json()
    assert (polled["status"], polled["progress"], polled["step"]) == ("done", 100, "Done")
    assert polled["download_url"] == f"{API}{body['id']}/download/"
    assert polled["summary"]["sod_failed"] == 0 and [f["name"] for f in polled["files"]] == FILES
    download = api.get(polled["download_url"], HTTP_ACCEPT="application/json")
    assert download.status_code == 200 and download["Content-Type"] == "application/zip"
    assert hashlib.sha256(download.content).hexdigest() == polled["sha256"]
    event = AuditEvent.objects.get(tenant=tenant_a, action="evidence.downloaded")
    assert event.actor_type == "token" and event.actor_label.startswith("audrey via token")
    assert [p["id"] for p in api.get(API).json()["results"]] == [body["id"]]


def test_the_api_validates_the_period(as_user, alice):
    api = as_user(alice)
    end = timezone.now().date() - timedelta(days=10)
    start = end - timedelta(days=59)
    response = api.post(API, {"period_start": end.isoformat(), "period_end": start.isoformat()},
                        format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert "must end on or after its start" in response.json()["errors"]["period_end"][0]
    response = api.post(API, {"period_start": "yesterday"}, format="json")
    assert set(response.json()["errors"]) == {"period_start", "period_end"}
    response = api.post(API, {"period_start": start.isoformat(), "period_end": end.isoformat(),
                              "tenant": "bravo"}, format="json")
    assert response.status_code == 400 and "tenant" in response.json()["errors"]


def test_the_api_is_for_admins_and_auditors_of_the_tenant(done_pack, as_user, api, token_for,
                                                          cast, tenant_b):
    urls = [API, f"{API}{done_pack.pk}/", f"{API}{done_pack.pk}/download/"]
    outsider = api(token_for(cast["oscar"], tenant_b))
    for url in urls:
        assert outsider.get(url).status_code == 404
        if url != API:  # alpha's pack under oscar's own tenant
            assert outsider.get(url.replace("/alpha/", "/bravo/")).status_code == 404
        for name in ("victor", "dave", "bob"):
            assert as_user(cast[name]).get(url).status_code == 403, (name, url)
        for name in ("audrey", "alice"):
            assert as_user(cast[name]).get(url).status_code == 200, (name, url)
    today = timezone.now().date().isoformat()
    assert as_user(cast["bob"]).post(API, {"period_start": today, "period_end": today},
                                     format="json").status_code == 403
    assert outsider.post(API, {}, format="json").status_code == 404


# --- In a browser -------------------------------------------------------------------------------

class PollGate:
    """Routes the pack page's polls through the test, so that the test only writes to the
    database while no poll is being served (on SQLite the live server shares its connection)."""

    def __init__(self, page) -> None:
        self.page = page
        self.started = self.finished = 0
        page.route(re.compile(r"/evidence/\d+/$"), self._handle)

    def _handle(self, route) -> None:
        self.started += 1
        try:
            route.fulfill(response=route.fetch())
        finally:
            self.finished += 1

    def settle(self, *, more_than: int = 0) -> int:
        """Wait until more than ``more_than`` polls were served and none is in flight."""
        for _ in range(400):
            if self.finished > more_than and self.started == self.finished:
                return self.finished
            self.page.wait_for_timeout(25)
        raise AssertionError(f"polls: {self.started} started, {self.finished} finished")


@pytest.mark.e2e
def test_the_pack_page_polls_in_a_browser_until_the_pack_is_done(ui, tenant_a, alice, audrey,
                                                                 bob, dave, monkeypatch):
    world = payroll_world(tenant_a, owner=dave)
    request = approvals.access_request_create(
        tenant=tenant_a, actor=Actor.user(dave), requester=dave, agent=world["bot"],
        scope=world["scope"], duration_minutes=60, justification="quarter close")
    approvals.access_request_decide(tenant=tenant_a, actor=Actor.user(bob), request=request,
                                    approver=bob, outcome="approve")
    queued: list[int] = []
    # No broker: the test is the worker, and runs what the task would, one step at a time.
    monkeypatch.setattr(tasks.build_pack, "delay", queued.append)
    page = ui.page
    sign_in(ui, "audrey")
    page.goto(ui.tenant_url("evidence/"))
    expect_heading(page, "Evidence packs")
    expect_styled(page)
    assert page.locator("#packs-empty").is_visible()
    today = timezone.now().date()
    page.get_by_label("From").fill((today - timedelta(days=13)).isoformat())
    page.get_by_label("To").fill(today.isoformat())
    page.get_by_role("button", name="Generate pack").click()
    pack = EvidencePack.objects.get()
    page.wait_for_url(ui.tenant_url(f"evidence/{pack.pk}/"))
    expect_heading(page, f"Evidence pack #{pack.pk} {(today - timedelta(days=13)).isoformat()}"
                         f" → {today.isoformat()}")
    assert messages(page) == [f"Evidence pack #{pack.pk} queued; this page shows its progress."]
    assert queued == [pack.pk]
    gate = PollGate(page)
    page.evaluate("window.__marker = 1")
    assert page.locator("#pack-state").inner_text() == "Queued"
    polls = gate.settle()

    running = services._claim(pack.pk)
    services._progress(running, "Separation-of-duties checks", 0.42)
    page.locator("#pack-state").filter(has_text="Running").wait_for()
    assert page.locator("#pack-percent").inner_text() == "42 %"
    assert page.locator("#pack-progress").get_attribute("value") == "42"
    assert page.locator("#pack-step").inner_text() == "Separation-of-duties checks"
    polls = gate.settle(more_than=polls)

    done = _finish(running)
    page.locator("#pack-state").filter(has_text="Done").wait_for()
    polls = gate.settle(more_than=polls)
    assert "all passed" in page.locator("#pack-summary").inner_text()
    assert page.locator("#pack-sha256").inner_text() == done.sha256
    assert page.locator("#pack-status[hx-trigger]").count() == 0
    page.wait_for_timeout(2_500)
    assert gate.finished == polls, "the page kept polling a finished pack"
    assert page.evaluate("window.__marker") == 1, "the progress display reloaded the page"

    with page.expect_download() as download:
        page.locator("#pack-download").click()
    assert download.value.suggested_filename == done.filename()
    with open(download.value.path(), "rb") as zipped:
        assert hashlib.sha256(zipped.read()).hexdigest() == done.sha256
    page.goto(ui.tenant_url("evidence/"))
    assert table_rows(page, "#packs-table")[0][:3] == [
        f"#{pack.pk}", f"{(today - timedelta(days=13)).isoformat()} → {today.isoformat()} "
                       "(14 days)", "Done"]
    ui.assert_no_browser_problems()


# --- A real worker ------------------------------------------------------------------------------

@pytest.mark.postgres
def test_a_real_worker_builds_a_pack_requested_on_the_page(celery_worker_process, tenant_a,
                                                           alice, bob, audrey, dave, victor):
    if not os.environ.get("REDIS_URL"):
        pytest.skip("needs REDIS_URL (the worker and this test share the Redis broker)")
    world = payroll_world(tenant_a, owner=dave)
    request = approvals.access_request_create(
        tenant=tenant_a, actor=Actor.user(dave), requester=dave, agent=world["bot"],
        scope=world["scope"], duration_minutes=60, justification="quarter close")
    approvals.access_request_decide(tenant=tenant_a, actor=Actor.user(bob), request=request,
                                    approver=bob, outcome="approve")
    worker = celery_worker_process()
    client = Client()
    client.force_login(audrey, backend="django.contrib.auth.backends.ModelBackend")
    today = timezone.now().date()
    posted = client.post(WEB, {"period_start": today.isoformat(),
                               "period_end": today.isoformat()})
    assert posted.status_code == 302
    url = posted["Location"]
    states = []

    def done() -> bool:
        fragment = client.get(url, HTTP_HX_REQUEST="true").content.decode()
        states.append("Done" if "pack-download" in fragment else "open")
        return "pack-download" in fragment

    worker.wait_until(done, timeout=90)
    pack = EvidencePack.objects.get()
    assert (pack.status, pack.attempts, pack.progress) == ("done", 1, 100), pack.error
    assert pack.started_at >= pack.created_at and pack.finished_at >= pack.started_at
    download = client.get(f"{url}download/")
    assert hashlib.sha256(download.content).hexdigest() == pack.sha256
    files = zipfile.ZipFile(io.BytesIO(download.content))
    manifest = json.loads(files.read("manifest.json"))
    for entry in manifest["files"]:
        assert hashlib.sha256(files.read(entry["name"])).hexdigest() == entry["sha256"]
    grants = _by(_csv({"g": files.read("grants.csv")}, "g")[1], "grant_id")
    assert grants[str(AccessRequest.objects.get(pk=request.pk).grant_id)][
        "approved_before_access"] == "true"
    [chain] = _csv({"c": files.read("audit_chain.csv")}, "c")[1]
    assert chain["result"] == "ok"
    # The worker's event carries the request id of the page that queued it.
    generated = AuditEvent.objects.get(tenant=tenant_a, action="evidence.generated")
    requested = AuditEvent.objects.get(tenant=tenant_a, action="evidence.requested")
    assert generated.seq > requested.seq and generated.after["sha256"] == pack.sha256
    assert generated.request_id == requested.request_id != ""
