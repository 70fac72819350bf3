"""One audit snapshot on the base model (governance/audit/snapshot.py): for every audited model the
keys and values the per-service helpers used to record, the rendering rules, and no secrets."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.utils import timezone

from alerts.models import Alert, AlertRule, Kind, Severity
from approvals.models import AccessRequest, Escalation
from bundles import services as bundle_services
from bundles.models import Gateway, GatewayToken, SigningKey
from decision_logs.models import ReplayRun
from evidence.models import EvidencePack
from exports import services as export_services
from exports.models import Exporter
from governance.audit.models import AuditEvent
from governance.audit.services import Actor, to_json
from governance.audit.snapshot import (
    AuditField,
    AuditSnapshotModel,
    isoformat,
    presence,
    render,
)
from governance.tenancy import services as tenancy_services
from governance.tenancy.models import ApiToken, IdpGroupMapping, Invitation, Membership, Tenant
from governance.tenancy.roles import Role
from notifications import services as notification_services
from notifications.models import Channel
from registry import services as registry_services
from registry.models import Agent, Grant, McpServer, Risk, Tool, ToolScope
from scim.models import ScimGroup, ScimToken, ScimUser

User = get_user_model()
SYSTEM = Actor.system("test")
# Microseconds on purpose: the two datetime forms the trail has always used differ there.
AT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
AT_FULL = "2026-01-02T03:04:05.678901+00:00"  # datetime.isoformat() (keys, approval deadlines)
AT_JSON = "2026-01-02T03:04:05.678Z"  # DjangoJSONEncoder (every other datetime)
SECRET = "S3CRET-must-never-be-recorded"


def _agent() -> Agent:
    return Agent(name="payroll-bot", purpose="Pays people", environment="prod",
                 owner=User(username="dave"))


def _scope() -> ToolScope:
    return ToolScope(name="payroll:read", description="Read payroll", risk_level=Risk.HIGH,
                     data_classes=["pii", "financial"])


# One instance of every audited model, and what its snapshot must be: written out, and equal to
# what the helper it replaces recorded (the LEGACY functions below, copied from before).
CASES = {
    "scim_token": (
        lambda: ScimToken(name="okta", token_hash=SECRET, prefix="tgs_abcdefgh"),
        {"name": "okta", "prefix": "tgs_abcdefgh"}),
    "scim_user": (
        lambda: ScimUser(scim_id=uuid.UUID(int=2), user_name="alice@example.com",
                         external_id="00u1", active=False, document={"password": SECRET}),
        {"scim_id": "00000000-0000-0000-0000-000000000002", "user_name": "alice@example.com",
         "external_id": "00u1", "active": False}),
    "scim_group": (
        lambda: ScimGroup(scim_id=uuid.UUID(int=3), display_name="hr-staff", external_id="g1"),
        {"scim_id": "00000000-0000-0000-0000-000000000003", "display_name": "hr-staff",
         "external_id": "g1"}),
    "tenant": (
        lambda: Tenant(slug="acme", name="Acme", registry_resync_minutes=30,
                       decision_log_retention_days=90),
        {"slug": "acme", "name": "Acme", "registry_resync_minutes": 30,
         "decision_log_retention_days": 90}),
    "gateway": (
        lambda: Gateway(name="edge-1", description="Frankfurt", labels={"env": "prod"},
                        status=Gateway.Status.DISABLED, last_error="boom",
                        last_report={"bundle": 1}),
        {"name": "edge-1", "description": "Frankfurt", "labels": {"env": "prod"},
         "status": "disabled"}),
    "gateway_token": (
        lambda: GatewayToken(gateway=Gateway(name="edge-1"), name="ci", token_hash=SECRET,
                             prefix="tgw_abcdefgh"),
        {"gateway": "edge-1", "name": "ci", "prefix": "tgw_abcdefgh"}),
    "group_mapping": (
        lambda: IdpGroupMapping(group="payroll-admins", role=Role.ADMIN),
        {"group": "payroll-admins", "role": "admin"}),
    "api_token": (
        lambda: ApiToken(name="deploy", kind=ApiToken.Kind.PERSONAL, user=User(username="dave"),
                         role=Role.DEVELOPER, token_hash=SECRET, prefix="tgp_abcdefgh",
                         expires_at=AT),
        {"name": "deploy", "kind": "personal", "role": "developer", "prefix": "tgp_abcdefgh",
         "owner": "dave", "expires_at": AT_JSON}),
    "signing_key": (
        lambda: SigningKey(kid="k-1", state=SigningKey.State.PENDING, public_jwk={"kid": "k-1"},
                           private_key_encrypted=SECRET, activate_after=AT),
        {"kid": "k-1", "state": "pending", "activate_after": AT_FULL}),
    "membership": (
        lambda: Membership(user=User(username="alice"), role=Role.APPROVER,
                           source=Membership.Source.IDP),
        {"user": "alice", "role": "approver", "source": "idp"}),
    "invitation": (
        lambda: Invitation(email="bob@example.com", role=Role.VIEWER, expires_at=AT),
        {"invitee": "bob@example.com", "role": "viewer", "expires_at": AT_JSON}),
    "exporter": (
        lambda: Exporter(name="siem", kind=Exporter.Kind.SPLUNK_HEC,
                         stream=Exporter.Stream.AUDIT, enabled=False, url="https://hec.example/",
                         index="main", token_encrypted=SECRET, token_hint="…abcd", cursor=7),
        {"name": "siem", "kind": "splunk_hec", "stream": "audit", "enabled": False, "path": "",
         "host": "", "port": None, "url": "https://hec.example/", "index": "main",
         "token": "set"}),
    "access_request": (
        lambda: AccessRequest(status=AccessRequest.Status.PENDING, agent=_agent(),
                              scope=_scope(), duration_minutes=60, current_stage=1, deadline=AT,
                              justification="month end"),
        {"status": "pending", "agent": "payroll-bot", "scope": "payroll:read",
         "duration_minutes": 60, "current_stage": 1, "deadline": AT_FULL}),
    "escalation": (
        lambda: Escalation(id=uuid.UUID(int=1), status=Escalation.Status.APPROVED,
                           agent=_agent(), scope=_scope(), server="payroll", tool="pay",
                           arguments={"iban": SECRET}, arguments_sha256="ab" * 32,
                           current_stage=0, deadline=AT),
        {"status": "approved", "agent": "payroll-bot", "server": "payroll", "tool": "pay",
         "arguments_sha256": "ab" * 32, "on_behalf_of": "", "current_stage": 0,
         "deadline": AT_FULL}),
    "channel": (
        lambda: Channel(name="ops", kind=Channel.Kind.WEBHOOK, enabled=True,
                        events=["alert.raised"], addresses=[], to_recipients=False,
                        url_encrypted=SECRET, url_hint="hooks.example …/abcd",
                        secret_encrypted=SECRET, secret_hint="…wxyz"),
        {"name": "ops", "kind": "webhook", "enabled": True, "events": ["alert.raised"],
         "addresses": [], "to_recipients": False, "url": "hooks.example …/abcd",
         "secret": "set"}),
    "agent": (
        _agent,
        {"name": "payroll-bot", "purpose": "Pays people", "environment": "prod",
         "owner": "dave"}),
    "scope": (
        _scope,
        {"name": "payroll:read", "description": "Read payroll", "risk_level": "high",
         "data_classes": ["pii", "financial"]}),
    "server": (
        lambda: McpServer(name="payroll", description="Payroll", transport="stdio",
                          command=["node", "payroll.js"], version="1.2",
                          data_classes=["pii"], risk_tier=Risk.LOW,
                          status=McpServer.Status.ACTIVE, registry_name="io.example/payroll"),
        {"name": "payroll", "description": "Payroll", "transport": "stdio", "url": "",
         "command": ["node", "payroll.js"], "version": "1.2", "data_classes": ["pii"],
         "risk_tier": "low", "forward": [], "status": "active"}),
    "tool": (
        lambda: Tool(name="pay", title="Pay", description="Pays someone",
                     input_schema={"type": "object"}, output_schema=None,
                     annotations={"destructiveHint": True}, definition_sha256="cd" * 32,
                     drifted_definition={"name": "pay", "description": "changed"}),
        {"name": "pay", "title": "Pay", "description": "Pays someone",
         "input_schema": {"type": "object"}, "output_schema": None,
         "annotations": {"destructiveHint": True}}),
    "grant": (
        lambda: Grant(agent=_agent(), scope=_scope(), calls_per_minute=5, calls_per_day=None,
                      window_start=time(9, 0), window_end=time(17, 30, 0, 250000),
                      window_days=[0, 1, 2], window_tz="Europe/Berlin",
                      argument_constraints={"pay": {"amount": {"maximum": 100}}},
                      approval_mode=Grant.ApprovalMode.WHEN,
                      approval_condition={"pay": {"amount": {"minimum": 50}}}, expires_at=AT,
                      status=Grant.Status.ACTIVE, justification="why"),
        {"agent": "payroll-bot", "scope": "payroll:read", "calls_per_minute": 5,
         "calls_per_day": None, "window_start": "09:00:00", "window_end": "17:30:00.250",
         "window_days": [0, 1, 2], "window_tz": "Europe/Berlin",
         "argument_constraints": {"pay": {"amount": {"maximum": 100}}},
         "approval_mode": "when", "approval_condition": {"pay": {"amount": {"minimum": 50}}},
         "on_behalf_of_group": "", "expires_at": AT_JSON, "status": "active"}),
    "alert_rule": (
        lambda: AlertRule(kind=Kind.DENIAL_BURST, enabled=True, threshold=20, window_minutes=5,
                          severity=Severity.WARNING),
        {"kind": "denial_burst", "enabled": True, "threshold": 20, "window_minutes": 5,
         "severity": "warning"}),
    "alert": (
        lambda: Alert(rule_kind=Kind.TOOL_DRIFT, key="tool:7", subject="pay drifted",
                      severity=Severity.CRITICAL, status=Alert.Status.ACKNOWLEDGED,
                      occurrences=3, detail={"x": 1}),
        {"kind": "tool_drift", "key": "tool:7", "subject": "pay drifted", "severity": "critical",
         "status": "acknowledged", "occurrences": 3}),
    "evidence_pack": (
        lambda: EvidencePack(period_start=date(2026, 1, 1), period_end=date(2026, 1, 31),
                             status=EvidencePack.Status.DONE, sha256="ef" * 32),
        {"period_start": "2026-01-01", "period_end": "2026-01-31", "status": "done"}),
    "replay_run": (
        lambda: ReplayRun(days=7, status=ReplayRun.Status.DONE),
        {"days": 7, "status": "done"}),
}

GRANT_FIELDS = ("calls_per_minute", "calls_per_day", "window_start", "window_end", "window_days",
                "window_tz", "argument_constraints", "approval_mode", "approval_condition",
                "expires_at", "status")

# The helpers audit_snapshot() replaced, as they were (their results then went through to_json).
LEGACY = {
    "tenant": lambda t: {f: getattr(t, f) for f in (
        "slug", "name", "registry_resync_minutes", "decision_log_retention_days")},
    "gateway": lambda g: {"name": g.name, "description": g.description, "labels": g.labels,
                          "status": g.status},
    "gateway_token": lambda t: {"gateway": t.gateway.name, "name": t.name, "prefix": t.prefix},
    "group_mapping": lambda m: {"group": m.group, "role": m.role},
    "api_token": lambda t: {"name": t.name, "kind": t.kind, "role": t.role, "prefix": t.prefix,
                            "owner": t.user.get_username() if t.user else None,
                            "expires_at": t.expires_at},
    "signing_key": lambda k: {
        "kid": k.kid, "state": k.state,
        "activate_after": k.activate_after.isoformat() if k.activate_after else None},
    "membership": lambda m: {"user": m.user.get_username(), "role": m.role, "source": m.source},
    "invitation": lambda i: {"invitee": i.invitee, "role": i.role, "expires_at": i.expires_at},
    "exporter": lambda e: {
        "name": e.name, "kind": e.kind, "stream": e.stream, "enabled": e.enabled,
        "path": e.path, "host": e.host, "port": e.port, "url": e.url, "index": e.index,
        "token": "set" if e.token_encrypted else ""},
    "access_request": lambda r: {
        "status": r.status, "agent": r.agent.name, "scope": r.scope.name,
        "duration_minutes": r.duration_minutes, "current_stage": r.current_stage,
        "deadline": r.deadline.isoformat()},
    "escalation": lambda e: {
        "status": e.status, "agent": e.agent.name, "server": e.server, "tool": e.tool,
        "arguments_sha256": e.arguments_sha256, "current_stage": e.current_stage,
        "deadline": e.deadline.isoformat()},
    "channel": lambda c: {
        "name": c.name, "kind": c.kind, "enabled": c.enabled, "events": c.events,
        "addresses": c.addresses, "to_recipients": c.to_recipients, "url": c.url_hint,
        "secret": "set" if c.secret_encrypted else ""},
    "agent": lambda a: {f: getattr(a, f) for f in ("name", "purpose", "environment")}
    | {"owner": a.owner.get_username() if a.owner is not None else None},
    "scope": lambda s: {f: getattr(s, f) for f in (
        "name", "description", "risk_level", "data_classes")},
    "server": lambda s: {f: getattr(s, f) for f in (
        "name", "description", "transport", "url", "command", "version", "data_classes",
        "risk_tier", "status")},
    "tool": lambda t: {"name": t.name} | {f: getattr(t, f) for f in (
        "title", "description", "input_schema", "output_schema", "annotations")},
    "grant": lambda g: {"agent": g.agent.name, "scope": g.scope.name}
    | {f: getattr(g, f) for f in GRANT_FIELDS},
    "alert_rule": lambda r: {"kind": r.kind, "enabled": r.enabled, "threshold": r.threshold,
                             "window_minutes": r.window_minutes, "severity": r.severity},
    "alert": lambda a: {"kind": a.rule_kind, "key": a.key, "subject": a.subject,
                        "severity": a.severity, "status": a.status,
                        "occurrences": a.occurrences},
    "evidence_pack": lambda p: {"period_start": p.period_start.isoformat(),
                                "period_end": p.period_end.isoformat(), "status": p.status},
    # New with audit_snapshot() (no older helper): the declared fields as they are.
    "replay_run": lambda r: {"days": r.days, "status": r.status},
}

# Variants with the other branch of each helper (no owner, no token, no activation time …).
VARIANTS = {
    "signing_key": {"activate_after": None},
    "invitation": {"email": "", "issuer": "https://idp.example", "subject": "u-1"},
    "exporter": {"token_encrypted": "", "kind": Exporter.Kind.SYSLOG_TCP, "host": "siem",
                 "port": 6514},
    "channel": {"secret_encrypted": "", "kind": Channel.Kind.EMAIL,
                "addresses": ["ops@example.com"], "to_recipients": True},
    "agent": {"owner": None},
    "grant": {"window_start": None, "window_end": None, "expires_at": None,
              "argument_constraints": {}, "approval_condition": {}},
    "gateway": {"labels": {}},
    "api_token": {"kind": ApiToken.Kind.SERVICE, "user": None},
}


# Fields audited since the per-service helpers were replaced (the helpers never knew them).
LATER_FIELDS = {"escalation": {"on_behalf_of"}, "server": {"forward"},
                "grant": {"on_behalf_of_group"}}


def _without_later_fields(name: str, snapshot: dict) -> dict:
    return {k: v for k, v in snapshot.items() if k not in LATER_FIELDS.get(name, set())}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_model_snapshots_exactly_what_its_old_helper_recorded(name):
    make, expected = CASES[name]
    obj = make()
    snapshot = obj.audit_snapshot()
    assert snapshot == expected
    assert list(snapshot) == list(expected)  # same keys, in the order the helpers wrote them
    if name in LEGACY:  # models audited since the helpers were replaced have none
        assert _without_later_fields(name, snapshot) == to_json(LEGACY[name](obj))
    assert to_json(snapshot) == snapshot  # audit_record stores it unchanged


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_the_other_branches_match_the_old_helpers_too(name):
    obj = CASES[name][0]()
    for field, value in VARIANTS[name].items():
        setattr(obj, field, value)
    assert _without_later_fields(name, obj.audit_snapshot()) == to_json(LEGACY[name](obj))


def test_the_variants_render_as_the_trail_always_had_them():
    key = CASES["signing_key"][0]()
    key.activate_after = None
    assert key.audit_snapshot()["activate_after"] is None
    invitation = Invitation(issuer="https://idp.example", subject="u-1", role=Role.ADMIN,
                            expires_at=datetime(2026, 2, 1, tzinfo=UTC))
    assert invitation.audit_snapshot() == {"invitee": "u-1 @ https://idp.example",
                                           "role": "admin", "expires_at": "2026-02-01T00:00:00Z"}
    exporter = Exporter(name="s", kind=Exporter.Kind.JSONL, stream=Exporter.Stream.DECISIONS,
                        path="d.jsonl")
    assert exporter.audit_snapshot()["token"] == ""
    assert Agent(name="a").audit_snapshot()["owner"] is None


def test_a_subset_of_keys_is_taken_in_the_order_asked():
    grant = CASES["grant"][0]()
    terms = GRANT_FIELDS[:-1]
    assert list(grant.audit_snapshot(terms)) == list(terms)
    assert grant.audit_snapshot(terms) == to_json({f: getattr(grant, f) for f in terms})
    tenant = CASES["tenant"][0]()
    assert tenant.audit_snapshot(("slug", "name")) == {"slug": "acme", "name": "Acme"}
    with pytest.raises(KeyError, match="token_encrypted"):
        CASES["exporter"][0]().audit_snapshot(["name", "token_encrypted"])


def test_every_audited_model_is_covered_here_and_declares_real_attributes():
    audited = {m for m in apps.get_models()
               if issubclass(m, AuditSnapshotModel) and m.audit_fields}
    covered = {type(make()) for make, _ in CASES.values()}
    assert audited == covered
    for model in audited:
        for field in model._audit_fields:
            assert hasattr(model, field.attribute), (model, field.attribute)


# --- Secrets ----------------------------------------------------------------------------------

SECRET_FIELDS = {
    GatewayToken: ["token_hash"],
    ApiToken: ["token_hash"],
    ScimToken: ["token_hash"],
    SigningKey: ["private_key_encrypted"],
    Exporter: ["token_encrypted"],
    Channel: ["url_encrypted", "secret_encrypted"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_no_secret_is_ever_in_a_snapshot(name):
    obj = CASES[name][0]()
    text = json.dumps(obj.audit_snapshot())
    assert SECRET not in text
    for field in SECRET_FIELDS.get(type(obj), []):
        assert field not in obj.audit_snapshot()


def test_every_secret_looking_field_of_an_audited_model_is_known_here():
    secret_like = {(m, f.name) for m in apps.get_models() if issubclass(m, AuditSnapshotModel)
                   and m.audit_fields for f in m._meta.fields
                   if f.name.endswith(("_encrypted", "token_hash")) or "private" in f.name}
    assert secret_like == {(m, f) for m, fields in SECRET_FIELDS.items() for f in fields}


def test_a_secret_declared_without_presence_is_refused_at_import():
    with pytest.raises(ImproperlyConfigured, match="token_encrypted.*holds a secret"):
        class Leaky(AuditSnapshotModel):
            token_encrypted = models.TextField()
            audit_fields = (AuditField("token", "token_encrypted"),)

            class Meta:
                abstract = True
    with pytest.raises(ImproperlyConfigured, match="private_key_encrypted"):
        class Leaky2(AuditSnapshotModel):
            audit_fields = ("private_key_encrypted",)

            class Meta:
                abstract = True
    with pytest.raises(ImproperlyConfigured, match="names a key twice"):
        class Twice(AuditSnapshotModel):
            audit_fields = ("name", AuditField("name", "title"))

            class Meta:
                abstract = True


# --- Rendering rules --------------------------------------------------------------------------


def test_values_render_as_django_json_encoder_writes_them():
    assert render(AT) == AT_JSON
    assert render(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05Z"
    assert render(date(2026, 3, 4)) == "2026-03-04"
    assert render(time(9, 30)) == "09:30:00"
    assert render(time(9, 30, 0, 123456)) == "09:30:00.123"
    assert render(Decimal("1.50")) == "1.50"
    assert render(uuid.UUID(int=255)) == "00000000-0000-0000-0000-0000000000ff"
    assert render(timedelta(minutes=5)) == "P0DT00H05M00S"
    for value in (AT, date(2026, 3, 4), time(9, 30, 0, 123456), Decimal("1.50"),
                  uuid.UUID(int=255), timedelta(minutes=5)):
        assert render(value) == to_json(value)


def test_plain_values_choices_and_json_render_as_plain_json():
    assert [render(v) for v in (None, True, 0, 1.5, "x")] == [None, True, 0, 1.5, "x"]
    assert render(Role.ADMIN) == "admin" and type(render(Role.ADMIN)) is str
    assert type(render(Kind.TOOL_DRIFT)) is str

    class Level(models.IntegerChoices):
        LOW = 1, "Low"

    assert render(Level.LOW) == 1 and type(render(Level.LOW)) is int
    assert render({"a": [1, (2, AT)], "b": {"c": None}}) == {"a": [1, [2, AT_JSON]],
                                                           "b": {"c": None}}
    labels = {"env": "prod"}
    assert render(labels) is not labels  # a copy: a later in-place edit cannot change it


def test_related_objects_render_by_name():
    assert render(User(username="alice")) == "alice"
    assert render(Agent(name="payroll-bot")) == "payroll-bot"
    assert render(ToolScope(name="payroll:read")) == "payroll:read"


def test_an_unknown_type_is_an_error_not_a_guess():
    with pytest.raises(TypeError):
        render(object())
    with pytest.raises(TypeError):
        render({1, 2})


def test_the_declared_renderings():
    assert presence(SECRET) == "set" and presence("") == "" and presence(None) == ""
    assert isoformat(AT) == AT_FULL and isoformat(None) is None


# --- Through the services: what the trail stores ----------------------------------------------


def _last(action: str) -> AuditEvent:
    return AuditEvent.objects.filter(action=action).order_by("-pk").first()


def test_the_stored_events_carry_the_snapshots(tenant_a, alice):
    gateway = bundle_services.gateway_create(tenant=tenant_a, actor=SYSTEM, name="edge-1",
                                             labels={"env": "prod"})
    bundle_services.gateway_update(tenant=tenant_a, actor=SYSTEM, gateway=gateway,
                                   description="Frankfurt", labels={"env": "dev"})
    event = _last("gateway.updated")
    assert event.before == {"name": "edge-1", "description": "", "labels": {"env": "prod"},
                            "status": "active"}
    assert event.after == {"name": "edge-1", "description": "Frankfurt",
                           "labels": {"env": "dev"}, "status": "active"}

    tenancy_services.tenant_update_settings(tenant=tenant_a, actor=SYSTEM,
                                            decision_log_retention_days=30)
    event = _last("tenant.settings_changed")
    assert event.before == {"decision_log_retention_days": 90}
    assert event.after == {"decision_log_retention_days": 30}
    assert _last("tenant.created").after == {"slug": "alpha", "name": "Alpha Corp"}

    token, plaintext = bundle_services.gateway_token_issue(tenant=tenant_a, actor=SYSTEM,
                                                           gateway=gateway, name="ci")
    bundle_services.gateway_token_revoke(tenant=tenant_a, actor=SYSTEM, token=token)
    expected = {"gateway": "edge-1", "name": "ci", "prefix": plaintext[:12]}
    assert _last("gateway.token_issued").after == _last("gateway.token_revoked").after == expected

    mapping = tenancy_services.group_mapping_create(tenant=tenant_a, actor=SYSTEM,
                                                    group=" payroll ", role=Role.VIEWER)
    tenancy_services.group_mapping_update(tenant=tenant_a, actor=SYSTEM, mapping=mapping,
                                          role=Role.APPROVER)
    event = _last("group_mapping.updated")
    assert (event.before, event.after) == ({"group": "payroll", "role": "viewer"},
                                           {"group": "payroll", "role": "approver"})
    assert _last("group_mapping.created").after == {"group": "payroll", "role": "viewer"}

    membership = Membership.objects.get(tenant=tenant_a, user=alice)
    assert _last("membership.created").after == {"user": "alice", "role": "admin",
                                                 "source": "manual"}
    assert membership.audit_snapshot() == _last("membership.created").after


def test_the_registry_events_carry_the_snapshots(tenant_a, dave):
    agent = registry_services.agent_create(tenant=tenant_a, actor=SYSTEM, name="bot",
                                           owner=dave, purpose="p", environment="prod")
    assert _last("agent.created").after == {"name": "bot", "purpose": "p",
                                            "environment": "prod", "owner": "dave"}
    scope = registry_services.scope_create(tenant=tenant_a, actor=SYSTEM, name="s:read",
                                           data_classes=["pii"])
    grant = registry_services.grant_create(tenant=tenant_a, actor=SYSTEM, agent=agent,
                                           scope=scope, window_start=time(9),
                                           window_end=time(17), window_days=[4, 0])
    after = _last("grant.created").after
    assert after["agent"] == "bot" and after["scope"] == "s:read"
    assert (after["window_start"], after["window_end"], after["window_days"]) == (
        "09:00:00", "17:00:00", [0, 4])
    # Stored, so from the real clock (tests/contract/test_clock_hygiene.py); microseconds kept.
    expiry = (timezone.now() + timedelta(days=30)).replace(microsecond=678901)
    registry_services.grant_update(tenant=tenant_a, actor=SYSTEM, grant=grant,
                                   expires_at=expiry, calls_per_day=100)
    event = _last("grant.updated")
    assert (event.before["expires_at"], event.after["expires_at"]) == (
        None, expiry.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.678Z"))
    assert (event.before["calls_per_day"], event.after["calls_per_day"]) == (None, 100)
    assert "status" not in event.after and "agent" not in event.after
    grant.refresh_from_db()
    assert grant.expires_at == expiry  # the terms were set from values, not from the snapshot


def test_stored_events_never_carry_a_secret(tenant_a):
    token = "hec-token-" + "x" * 30
    exporter = export_services.exporter_create(
        tenant=tenant_a, actor=SYSTEM, name="siem", kind=Exporter.Kind.SPLUNK_HEC,
        stream=Exporter.Stream.AUDIT, url="https://hec.example.com/services/collector",
        token=token)
    channel = notification_services.channel_create(
        tenant=tenant_a, actor=SYSTEM, name="hook", kind=Channel.Kind.WEBHOOK,
        url="https://hooks.example.com/very/secret/path", secret="webhook-secret-" + "y" * 20)
    key = bundle_services.signing_key_rotate(tenant=tenant_a, actor=SYSTEM)
    assert _last("exporter.created").after["token"] == "set"
    assert _last("notification_channel.created").after["secret"] == "set"
    assert _last("notification_channel.created").after["url"] == channel.url_hint
    assert _last("bundle_key.activated").after == key.audit_snapshot()
    assert _last("bundle_key.rotated").after["kid"] == key.kid
    assert set(_last("bundle_key.rotated").after) == {"kid", "state", "activate_after",
                                                      "immediate"}
    stored = json.dumps([[e.before, e.after] for e in AuditEvent.objects.filter(
        tenant=tenant_a)])
    for secret in (token, exporter.token_encrypted, channel.url_encrypted,
                   channel.secret_encrypted, "very/secret/path", "webhook-secret-",
                   key.private_key_encrypted):
        assert secret not in stored
