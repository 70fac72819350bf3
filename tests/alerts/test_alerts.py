"""Alerts: the default rules of every tenant, each rule kind raising exactly one alert for its
condition (and none without it), de-duplication, acknowledge, auto-resolve, delivery through a
real signed webhook, and the pages and API with their permissions."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import uuid
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, connections, transaction
from django.utils import timezone

from alerts import selectors, services, tasks
from alerts.models import Alert, AlertRule
from approvals import services as approvals
from bundles.models import Bundle, Gateway
from decision_logs.models import DecisionLog
from governance.audit.models import AuditEvent
from governance.audit.services import Actor, audit_record
from governance.audit.tasks import verify_audit_chains
from notifications import services as notifications
from notifications import tasks as notification_tasks
from notifications.models import Delivery
from registry import services as registry
from registry.models import Tool
from tests.bundle_support import (
    SYSTEM,
    decision_world,
    make_gateway,
    payroll_world,
    publish_two_revisions,
    small_registry,
)
from tests.factories import TenantFactory

SECRET = "alert-signing-secret-0123456789"
API = "/api/v1/t/alpha"
NOW = timezone.now()  # reset before every test (below); evaluations run at NOW + n minutes


@pytest.fixture(autouse=True)
def _now():
    global NOW
    NOW = timezone.now()


def alerts(tenant, **filters) -> list[Alert]:
    return list(Alert.objects.filter(tenant=tenant, **filters).order_by("pk"))


def audit_actions(tenant, prefix="alert") -> list[str]:
    return list(AuditEvent.objects.filter(tenant=tenant, action__startswith=prefix)
                .order_by("seq").values_list("action", flat=True))


def alert_deliveries(tenant) -> list[Delivery]:
    return list(Delivery.objects.filter(tenant=tenant, event="alert.raised").order_by("pk"))


def email_channel(tenant):
    return notifications.channel_create(tenant=tenant, actor=SYSTEM, name="soc", kind="email",
                                        addresses=["soc@example.com"], events=["alert.raised"])


def evaluate(minutes: float = 0) -> dict:
    return services.alerts_evaluate(now=NOW + timedelta(minutes=minutes))


def seen(gateway, minutes_ago: float, *, at: float = 0, revision=None) -> None:
    """The gateway's last contact, ``minutes_ago`` before NOW + ``at`` minutes."""
    Gateway.objects.filter(pk=gateway.pk).update(
        last_contact_at=NOW + timedelta(minutes=at - minutes_ago),
        active_revision=revision if revision is not None else gateway.active_revision)


def decisions(tenant, agent, stamps, outcome="deny") -> None:
    DecisionLog.objects.bulk_create([
        DecisionLog(tenant=tenant, decision_id=str(uuid.uuid4()), timestamp=stamp, agent=agent,
                    server="payroll", tool="pay", arguments_sha256="0" * 64, outcome=outcome,
                    reason="no grant")
        for stamp in stamps
    ])


def every(start_minutes: float, count: int, seconds: float) -> list:
    """``count`` moments from NOW + ``start_minutes``, ``seconds`` apart."""
    return [NOW + timedelta(minutes=start_minutes, seconds=i * seconds) for i in range(count)]


# --- Rules and their defaults --------------------------------------------------------------------


def test_every_tenant_has_the_default_rules_without_anyone_creating_them(tenant_a, tenant_b):
    assert not AlertRule.objects.exists()
    rules = services.alert_rules_for(tenant_a)
    assert {k: (r.enabled, r.threshold, r.window_minutes, r.severity)
            for k, r in rules.items()} == {
        "gateway_stale": (True, None, 15, "warning"),
        "tool_drift": (True, None, None, "warning"),
        "denial_burst": (True, 20, 5, "warning"),
        "break_glass_used": (True, None, None, "critical"),
        "audit_chain_broken": (True, None, None, "critical"),
        "export_failing": (True, 3, None, "warning"),
        "bundle_build_failing": (True, None, None, "critical"),
        "revision_conflict": (True, None, None, "warning"),
    }
    assert services.alert_rules_for(tenant_a) == rules  # idempotent
    evaluate()  # the evaluator fills in every other tenant
    assert AlertRule.objects.filter(tenant=tenant_b).count() == 8
    assert AlertRule.objects.count() == 16
    assert audit_actions(tenant_a) == []  # defaults are not a change anyone made


@pytest.mark.parametrize(("kind", "changes", "field", "message"), [
    ("denial_burst", {"threshold": 0}, "threshold", "between 1 and 100000"),
    ("denial_burst", {"threshold": None}, "threshold", "Give the denials (default 20)."),
    ("denial_burst", {"window_minutes": 10081}, "window_minutes", "between 1 and 10080"),
    ("gateway_stale", {"threshold": 5}, "threshold", "takes no threshold"),
    ("tool_drift", {"window_minutes": 5}, "window_minutes", "takes no window minutes"),
    ("export_failing", {"severity": "apocalyptic"}, "severity", "Use one of info, warning"),
])
def test_a_rule_is_validated_for_its_kind(tenant_a, kind, changes, field, message):
    rule = services.alert_rules_for(tenant_a)[kind]
    with pytest.raises(ValidationError) as caught:
        services.alert_rule_update(tenant=tenant_a, actor=SYSTEM, rule=rule, **changes)
    assert message in " ".join(caught.value.message_dict[field])


def test_a_rule_change_is_audited_once_and_a_disabled_rule_raises_nothing(tenant_a, alice):
    rule = services.alert_rules_for(tenant_a)["gateway_stale"]
    services.alert_rule_update(tenant=tenant_a, actor=Actor.user(alice), rule=rule, user=alice,
                               enabled=False, severity="critical")
    services.alert_rule_update(tenant=tenant_a, actor=SYSTEM, rule=rule, enabled=False,
                               severity="critical")  # no change: no second event
    [event] = AuditEvent.objects.filter(tenant=tenant_a, action="alert_rule.updated")
    assert event.before == {"kind": "gateway_stale", "enabled": True, "threshold": None,
                            "window_minutes": 15, "severity": "warning"}
    assert event.after["enabled"] is False and event.after["severity"] == "critical"
    assert AlertRule.objects.get(pk=rule.pk).updated_by == alice
    gateway, _ = make_gateway(tenant_a)
    seen(gateway, 60)
    evaluate()
    assert alerts(tenant_a) == []


# --- Gateway stale -----------------------------------------------------------------------------


def test_a_silent_gateway_raises_one_alert_and_a_fresh_one_none(tenant_a):
    silent, _ = make_gateway(tenant_a, "edge-1")
    fresh, _ = make_gateway(tenant_a, "edge-2")
    off, _ = make_gateway(tenant_a, "edge-off")
    seen(silent, 20)
    seen(fresh, 1)
    seen(off, 120)
    Gateway.objects.filter(pk=off.pk).update(status="disabled")
    assert evaluate()["raised"] == 1
    [alert] = alerts(tenant_a)
    assert (alert.rule_kind, alert.key, alert.status) == ("gateway_stale", f"gateway:{silent.pk}",
                                                          "open")
    assert alert.subject == "Gateway edge-1: no contact for 20 min"
    assert alert.severity == "warning" and alert.occurrences == 1
    assert alert.detail["reason"] == "silent" and alert.detail["name"] == "edge-1"
    assert audit_actions(tenant_a) == ["alert.raised"]
    event = AuditEvent.objects.get(action="alert.raised")
    assert event.actor_type == "system" and event.actor_label == "alerts"
    assert event.object_id == str(alert.pk)


def test_a_gateway_never_heard_from_is_stale_once_it_had_the_window(tenant_a):
    gateway, _ = make_gateway(tenant_a)
    Gateway.objects.filter(pk=gateway.pk).update(created_at=NOW)
    evaluate(minutes=14)
    assert alerts(tenant_a) == []
    evaluate(minutes=16)
    [alert] = alerts(tenant_a)
    assert alert.subject.startswith("Gateway edge-1: never in contact (16 min since added)")


def test_a_gateway_behind_the_newest_revision_for_longer_than_the_window(tenant_a, dave):
    world = payroll_world(tenant_a, owner=dave)
    first, second = publish_two_revisions(tenant_a, world)
    Bundle.objects.filter(pk=second.pk).update(created_at=NOW)  # behind since NOW
    gateway, _ = make_gateway(tenant_a)
    seen(gateway, 1, revision=first.revision_number)
    evaluate()
    assert alerts(tenant_a) == []  # behind, but only just
    seen(gateway, 1, at=20, revision=first.revision_number)  # in contact, still behind
    evaluate(minutes=20)
    [alert] = alerts(tenant_a)
    assert alert.detail["reason"] == "behind" and alert.detail["lag"] == 1
    assert alert.subject == (f"Gateway edge-1: runs r{first.revision_number}, 1 behind "
                             f"r{second.revision_number}, for 20 min")
    seen(gateway, 1, at=21, revision=second.revision_number)  # caught up
    evaluate(minutes=21)
    assert alerts(tenant_a)[0].status == "resolved"


def test_a_stale_alert_is_bumped_not_duplicated_and_resolves_itself(tenant_a):
    email_channel(tenant_a)
    gateway, _ = make_gateway(tenant_a)
    seen(gateway, 20)
    evaluate()
    evaluate(minutes=1)
    evaluate(minutes=2)
    [alert] = alerts(tenant_a)
    assert alert.occurrences == 3 and alert.status == "open"
    assert alert.last_seen_at == NOW + timedelta(minutes=2) and alert.first_seen_at == NOW
    assert alert.subject == "Gateway edge-1: no contact for 22 min"  # the latest facts
    assert len(alert_deliveries(tenant_a)) == 1  # a condition that persists is not news
    assert audit_actions(tenant_a) == ["alert.raised"]

    seen(gateway, 0, at=3)  # it talks again
    assert evaluate(minutes=3)["resolved"] == 1
    alert.refresh_from_db()
    assert alert.status == "resolved" and alert.resolved_at is not None
    assert alert.resolution.startswith("Condition cleared: the gateway is in contact")
    assert audit_actions(tenant_a) == ["alert.raised", "alert.resolved"]

    seen(gateway, 30, at=40)  # silent again: a new alert, not the old one reopened
    evaluate(minutes=40)
    assert [a.status for a in alerts(tenant_a)] == ["resolved", "open"]
    assert len(alert_deliveries(tenant_a)) == 2


# --- Tool drift --------------------------------------------------------------------------------


def test_a_drifted_tool_raises_one_alert_and_approving_it_resolves_it(tenant_a, tenant_b):
    world = decision_world(tenant_a)
    small_registry(tenant_b)  # nothing drifted there
    evaluate()
    tool = Tool.objects.get(tenant=tenant_a, status="quarantined")
    [alert] = alerts(tenant_a)
    assert (alert.rule_kind, alert.key) == ("tool_drift", f"tool:{tool.pk}")
    assert alert.subject == "Tool payroll/export drifted: quarantined until reviewed"
    assert alert.detail["drifted_sha256"] == tool.drifted_sha256
    assert selectors.alert_target(tenant_a, alert) == (f"/t/alpha/tools/{tool.pk}/",
                                                       "Review tool payroll/export")
    assert alerts(tenant_b) == []
    registry.tool_approve(tenant=tenant_a, actor=SYSTEM, tool=tool)
    evaluate(minutes=1)
    alert.refresh_from_db()
    assert alert.status == "resolved" and "no longer quarantined" in alert.resolution
    assert world["scope"]  # the world stays as it was otherwise


# --- Burst of denials ----------------------------------------------------------------------------


def test_twenty_denials_in_five_minutes_raise_one_alert(tenant_a, login, cast):
    decisions(tenant_a, "payroll-bot", every(-4, 20, 10))
    decisions(tenant_a, "payroll-bot", every(-4, 30, 5), outcome="allow")  # allowed: ignored
    decisions(tenant_a, "other-bot", every(-4, 19, 10))
    evaluate()
    [alert] = alerts(tenant_a)
    assert (alert.rule_kind, alert.key) == ("denial_burst", "agent:payroll-bot")
    assert alert.subject == "Agent payroll-bot: 20 calls denied within 5 min"
    assert alert.detail["denials"] == 20 and alert.detail["threshold"] == 20
    url, label = selectors.alert_target(tenant_a, alert)
    assert url.startswith("/t/alpha/decisions/?agent=payroll-bot&outcome=deny&since=")
    assert label == "Denied decisions of payroll-bot"
    page = login(cast["audrey"]).get(url)  # the burst's denials on the search page
    assert page.status_code == 200 and page.content.decode().count("payroll-bot") >= 20


@pytest.mark.parametrize("stamps", [
    (-4, 19, 10),  # one short
    (-60, 20, 180),  # the same number over an hour
    (-19, 20, 60),  # twenty in the look-back, but never twenty within five minutes
], ids=["19-in-5-min", "20-in-an-hour", "20-in-19-min"])
def test_fewer_or_slower_denials_raise_nothing(tenant_a, stamps):
    decisions(tenant_a, "payroll-bot", every(*stamps))
    evaluate()
    assert alerts(tenant_a) == []


def test_a_late_batch_still_forms_its_burst(tenant_a, settings):
    decisions(tenant_a, "payroll-bot", every(-14, 20, 6))  # uploaded ten minutes late
    settings.ALERTS_DECISION_LOG_DELAY_MINUTES = 0
    evaluate()
    assert alerts(tenant_a) == []  # outside the window itself
    settings.ALERTS_DECISION_LOG_DELAY_MINUTES = 15
    evaluate()
    assert len(alerts(tenant_a)) == 1


def test_each_burst_counts_once_and_acknowledging_stops_the_repeats(tenant_a, alice):
    email_channel(tenant_a)
    decisions(tenant_a, "payroll-bot", every(-4, 20, 10))
    evaluate()
    evaluate(minutes=1)  # the same twenty denials: not a new burst
    [alert] = alerts(tenant_a)
    assert alert.occurrences == 1 and len(alert_deliveries(tenant_a)) == 1

    decisions(tenant_a, "payroll-bot", every(2, 25, 5))  # a second burst while open
    evaluate(minutes=5)
    alert.refresh_from_db()
    assert alert.occurrences == 2 and alert.detail["denials"] == 25
    assert [d.subject for d in alert_deliveries(tenant_a)] == [
        "[warning] Agent payroll-bot: 20 calls denied within 5 min",
        "[warning] Again (2×): Agent payroll-bot: 25 calls denied within 5 min",
    ]

    services.alert_acknowledge(tenant=tenant_a, actor=Actor.user(alice), alert=alert,
                               note="blocking the bot")
    decisions(tenant_a, "payroll-bot", every(6, 20, 5))  # a third one, acknowledged
    evaluate(minutes=9)
    alert.refresh_from_db()
    assert alert.occurrences == 3 and alert.status == "acknowledged"
    assert len(alert_deliveries(tenant_a)) == 2  # no re-notification while acknowledged
    assert alert.acknowledged_by == alice and alert.ack_note == "blocking the bot"

    services.alert_resolve(tenant=tenant_a, actor=Actor.user(alice), alert=alert)
    evaluate(minutes=10)  # the counted denials do not come back as a new alert
    assert len(alerts(tenant_a)) == 1


# --- Export failing ----------------------------------------------------------------------------


def _exporter(tenant, name, failures):
    from exports.models import Exporter

    return Exporter.objects.create(tenant=tenant, name=name, kind="jsonl", stream="audit",
                                   path=f"{name}.jsonl", consecutive_failures=failures,
                                   last_error="HTTP 503: splunk is down" if failures else "")


def test_an_exporter_failing_three_times_in_a_row_raises_one_alert(tenant_a):
    failing = _exporter(tenant_a, "splunk", 3)
    _exporter(tenant_a, "file", 2)
    off = _exporter(tenant_a, "old", 9)
    type(off).objects.filter(pk=off.pk).update(enabled=False)
    evaluate()
    [alert] = alerts(tenant_a)
    assert (alert.rule_kind, alert.key) == ("export_failing", f"exporter:{failing.pk}")
    assert alert.subject == "Exporter splunk: 3 failures in a row"
    assert alert.detail["last_error"] == "HTTP 503: splunk is down"
    assert selectors.alert_target(tenant_a, alert) == (
        f"/t/alpha/exports/#exporter-{failing.pk}", "Exporter splunk")
    type(failing).objects.filter(pk=failing.pk).update(consecutive_failures=0)
    evaluate(minutes=1)
    alert.refresh_from_db()
    assert alert.status == "resolved" and "exporter delivered again" in alert.resolution


# --- Audit chain broken ------------------------------------------------------------------------


def _sql(statement: str, params: list) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


def test_a_tampered_audit_chain_raises_an_alert_from_the_hourly_task(tenant_a, tenant_b):
    email_channel(tenant_a)
    for i in range(3):
        with transaction.atomic():
            audit_record(tenant=tenant_a, actor=SYSTEM, action="test.thing", object_id=str(i))
    verify_audit_chains()
    assert alerts(tenant_a) == []  # intact: nothing to say

    victim = AuditEvent.objects.get(tenant=tenant_a, action="test.thing", object_id="1")
    _sql("UPDATE audit_auditevent SET actor_label = %s WHERE id = %s", ["mallory", victim.pk])
    lines = verify_audit_chains()
    assert f"tenant alpha: BROKEN at event #{victim.seq} (id {victim.pk}): content does not " \
           "match its hash (the row was edited)" in lines
    [alert] = alerts(tenant_a)
    assert (alert.rule_kind, alert.key, alert.severity) == ("audit_chain_broken", "chain",
                                                            "critical")
    assert alert.detail["event_id"] == victim.pk and alert.detail["seq"] == victim.seq
    assert selectors.alert_target(tenant_a, alert) == (f"/t/alpha/audit/{victim.pk}/",
                                                       f"Audit event #{victim.seq}")
    assert alert.subject == (f"Audit chain of alpha broken at event #{victim.seq}: content "
                             "does not match its hash (the row was edited)")
    assert alerts(tenant_b) == []
    verify_audit_chains()  # still broken an hour later: the same alert
    alert.refresh_from_db()
    assert alert.occurrences == 2 and len(alert_deliveries(tenant_a)) == 1

    _sql("UPDATE audit_auditevent SET actor_label = %s WHERE id = %s", ["test", victim.pk])
    assert "tenant alpha: OK" in " ".join(verify_audit_chains())
    alert.refresh_from_db()
    assert alert.status == "resolved" and "verification of the audit chain passed" \
        in alert.resolution


# --- Break-glass -------------------------------------------------------------------------------


def test_break_glass_raises_its_alert_in_the_same_transaction(
        tenant_a, alice, dave, django_capture_on_commit_callbacks):
    email_channel(tenant_a)
    world = payroll_world(tenant_a, owner=dave)
    with pytest.raises(RuntimeError), transaction.atomic():  # the caller's transaction fails
        approvals.break_glass_grant(tenant=tenant_a, actor=Actor.user(alice), admin=alice,
                                    agent=world["bot"], scope=world["scope"],
                                    justification="incident 1", minutes=10)
        assert len(alerts(tenant_a)) == 1  # raised inside it …
        raise RuntimeError("rolled back")
    assert alerts(tenant_a) == []  # … and gone with it

    with django_capture_on_commit_callbacks(execute=False):
        grant = approvals.break_glass_grant(
            tenant=tenant_a, actor=Actor.user(alice), admin=alice, agent=world["bot"],
            scope=world["scope"], justification="incident 2: payroll stuck", minutes=10)
    [alert] = alerts(tenant_a)
    assert (alert.rule_kind, alert.key, alert.severity) == ("break_glass_used",
                                                            f"grant:{grant.pk}", "critical")
    assert alert.subject == ("Break-glass: alice granted payroll:write to agent bot for 10 "
                             "minutes")
    assert alert.detail["justification"] == "incident 2: payroll stuck"
    actions = list(AuditEvent.objects.filter(tenant=tenant_a).order_by("-seq")
                   .values_list("action", flat=True)[:2])
    assert actions == ["alert.raised", "grant.break_glass"]
    assert [d.event for d in Delivery.objects.filter(tenant=tenant_a)] == ["alert.raised"]
    assert selectors.alert_target(tenant_a, alert) == (f"/t/alpha/grants/{grant.pk}/",
                                                       f"Grant {grant.pk}")


# --- Delivery through a real signed webhook ------------------------------------------------------


@pytest.fixture
def receiver():
    """A real HTTP server on 127.0.0.1 recording every POST."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append({"headers": self.headers, "body": body})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


def test_an_alert_reaches_a_signed_webhook(tenant_a, receiver,
                                           django_capture_on_commit_callbacks):
    url, received = receiver
    notifications.channel_create(tenant=tenant_a, actor=SYSTEM, name="pager", kind="webhook",
                                 url=url, secret=SECRET, events=["alert.raised"])
    gateway, _ = make_gateway(tenant_a)
    seen(gateway, 20)
    with django_capture_on_commit_callbacks(execute=False):
        evaluate()
    [alert] = alerts(tenant_a)
    [delivery] = alert_deliveries(tenant_a)
    notification_tasks.deliver.apply(args=[delivery.pk])  # what the worker runs
    delivery.refresh_from_db()
    assert (delivery.status, delivery.last_error) == ("sent", "")

    [request] = received
    headers, body = request["headers"], request["body"]
    timestamp = headers["X-Tollgate-Timestamp"]
    expected = hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    assert hmac.compare_digest(headers["X-Tollgate-Signature"], "sha256=" + expected.hexdigest())
    assert headers["X-Tollgate-Event"] == "alert.raised"
    document = json.loads(body)
    assert document["event"] == "alert.raised" and document["tenant"] == "alpha"
    assert document["subject"] == "[warning] Gateway edge-1: no contact for 20 min"
    assert document["link"] == f"https://tollgate.example.test/t/alpha/alerts/{alert.pk}/"
    assert document["data"]["alert"] == alert.pk
    assert document["data"]["kind"] == "gateway_stale"
    assert document["data"]["key"] == f"gateway:{gateway.pk}"
    assert document["data"]["detail"]["name"] == "edge-1"
    assert "Acknowledge it in Tollgate" in document["text"]


def test_channels_offer_the_alert_event(admin):
    from notifications.forms import ChannelForm

    assert ("alert.raised", "Alert raised (gateway stale, tool drift, denial burst, "
            "break-glass, audit chain, export failing)") in ChannelForm().fields["events"].choices
    created = admin.post(f"{API}/notification-channels/", {
        "name": "pager", "kind": "webhook", "url": "https://pager.example.com/in",
        "secret": SECRET, "events": ["alert.raised"]}, format="json")
    assert created.status_code == 201 and created.json()["events"] == ["alert.raised"]


# --- Acknowledge and resolve ---------------------------------------------------------------------


def test_acknowledge_and_resolve_are_checked_and_audited(tenant_a, alice):
    alert = services.alert_raise(tenant=tenant_a, kind="tool_drift", key="tool:1",
                                 subject="Tool x drifted", detail={}, actor=SYSTEM)
    acked = services.alert_acknowledge(tenant=tenant_a, actor=Actor.user(alice), alert=alert,
                                       note="  looking  ")
    assert acked.acknowledged_by == alice and acked.ack_note == "looking"
    with pytest.raises(ValidationError, match="alice already acknowledged this alert"):
        services.alert_acknowledge(tenant=tenant_a, actor=Actor.user(alice), alert=alert)
    with pytest.raises(ValidationError, match="under 1000 characters"):
        services.alert_resolve(tenant=tenant_a, actor=Actor.user(alice), alert=alert,
                               note="x" * 1001)
    done = services.alert_resolve(tenant=tenant_a, actor=Actor.user(alice), alert=alert,
                                  note="tool reviewed")
    assert done.resolution == "alice: tool reviewed"
    with pytest.raises(ValidationError, match="already resolved"):
        services.alert_resolve(tenant=tenant_a, actor=Actor.user(alice), alert=alert)
    with pytest.raises(ValidationError, match="nothing to acknowledge"):
        services.alert_acknowledge(tenant=tenant_a, actor=Actor.user(alice), alert=alert)
    assert audit_actions(tenant_a) == ["alert.raised", "alert.acknowledged", "alert.resolved"]
    ack = AuditEvent.objects.get(action="alert.acknowledged")
    assert ack.after == {"status": "acknowledged", "note": "looking"}


def test_an_unknown_kind_is_a_programming_error(tenant_a):
    with pytest.raises(ValueError, match="unknown alert kind 'gateway_sad'"):
        services.alert_raise(tenant=tenant_a, kind="gateway_sad", key="x", subject="x",
                             detail={}, actor=SYSTEM)


@pytest.mark.django_db(transaction=True)
def test_racing_evaluators_make_one_alert(postgres_only):
    """Eight threads, each with its own PostgreSQL connection, raise the same alert at once."""
    tenant = TenantFactory(slug="busy")
    services.alert_rules_for(tenant)
    barrier, errors = threading.Barrier(8), []

    def raiser() -> None:
        try:
            barrier.wait()
            services.alert_raise(tenant=tenant, kind="gateway_stale", key="gateway:1",
                                 subject="edge stale", detail={}, actor=SYSTEM)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=raiser) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    [alert] = Alert.objects.filter(tenant=tenant)
    assert alert.occurrences == 8
    assert AuditEvent.objects.filter(tenant=tenant, action="alert.raised").count() == 1


# --- Dashboard selectors and the Celery task ------------------------------------------------------


def test_the_dashboard_counts_and_lists_unresolved_alerts(tenant_a, tenant_b, alice):
    def raise_(kind, key, tenant=tenant_a):
        return services.alert_raise(tenant=tenant, kind=kind, key=key, subject=key, detail={},
                                    actor=SYSTEM)

    warning = raise_("tool_drift", "tool:1")
    critical = raise_("audit_chain_broken", "chain")
    acked = raise_("gateway_stale", "gateway:1")
    services.alert_acknowledge(tenant=tenant_a, actor=Actor.user(alice), alert=acked)
    gone = raise_("gateway_stale", "gateway:2")
    services.alert_resolve(tenant=tenant_a, actor=SYSTEM, alert=gone)
    raise_("tool_drift", "tool:9", tenant=tenant_b)
    assert selectors.open_alerts_count(tenant_a) == 3
    assert [a.pk for a in selectors.open_alerts(tenant_a, 10)] == [critical.pk, warning.pk,
                                                                    acked.pk]
    assert [a.pk for a in selectors.open_alerts(tenant_a, 1)] == [critical.pk]


def test_the_beat_task_evaluates_every_tenant(tenant_a, tenant_b, settings):
    assert settings.CELERY_BEAT_SCHEDULE["alerts-evaluate"]["task"] == \
        "governance.alerts.tasks.evaluate"  # frozen task name
    assert settings.CELERY_BEAT_SCHEDULE["alerts-evaluate"]["schedule"] == timedelta(minutes=1)
    gateway, _ = make_gateway(tenant_b)
    Gateway.objects.filter(pk=gateway.pk).update(
        last_contact_at=timezone.now() - timedelta(hours=2))
    result = tasks.evaluate.apply().get()
    assert result == {"tenants": 2, "raised": 1, "resolved": 0, "failed": 0}
    assert tasks.evaluate.acks_late is True
    assert alerts(tenant_b)[0].key == f"gateway:{gateway.pk}"


def test_one_failing_tenant_does_not_stop_the_others(tenant_a, tenant_b, monkeypatch):
    gateway, _ = make_gateway(tenant_b)
    seen(gateway, 30)
    real = services.alerts_evaluate_tenant

    def flaky(*, tenant, now):
        if tenant == tenant_a:
            raise RuntimeError("boom")
        return real(tenant=tenant, now=now)

    monkeypatch.setattr(services, "alerts_evaluate_tenant", flaky)
    assert evaluate() == {"tenants": 2, "raised": 1, "resolved": 0, "failed": 1}


# --- Web pages ----------------------------------------------------------------------------------


@pytest.fixture
def stale_alert(tenant_a):
    gateway, _ = make_gateway(tenant_a)
    seen(gateway, 20)
    evaluate()
    return Alert.objects.get(tenant=tenant_a)


def test_auditors_see_the_list_with_filters_and_the_empty_state(login, cast, tenant_a):
    client = login(cast["audrey"])
    empty = client.get("/t/alpha/alerts/")
    assert empty.status_code == 200 and b'id="alerts-empty"' in empty.content
    assert b"No open alerts" in empty.content
    for i in range(27):
        services.alert_raise(tenant=tenant_a, kind="tool_drift", key=f"tool:{i}",
                             subject=f"Tool t{i} drifted", detail={}, actor=SYSTEM)
    resolved = services.alert_raise(tenant=tenant_a, kind="audit_chain_broken", key="chain",
                                    subject="Chain broken", detail={}, actor=SYSTEM)
    services.alert_resolve(tenant=tenant_a, actor=SYSTEM, alert=resolved)
    page = client.get("/t/alpha/alerts/").content.decode()
    assert "Page 1 of 2 (27 in all)" in page and "Chain broken" not in page
    assert f'id="alert-{resolved.pk}"' not in page
    only_resolved = client.get("/t/alpha/alerts/?status=resolved").content.decode()
    assert f'id="alert-{resolved.pk}"' in only_resolved
    assert only_resolved.count('<tr id="alert-') == 1
    critical = client.get("/t/alpha/alerts/?status=all&severity=critical").content.decode()
    assert critical.count('<tr id="alert-') == 1
    none = client.get("/t/alpha/alerts/?kind=denial_burst").content.decode()
    assert "No alert matches these filters." in none
    fragment = client.get("/t/alpha/alerts/?kind=tool_drift&page=2", HTTP_HX_REQUEST="true")
    assert fragment.content.decode().count('<tr id="alert-') == 2
    assert b"<html" not in fragment.content
    assert client.get("/t/alpha/alerts/?status=lost").status_code == 400


@pytest.mark.parametrize("path", ["alerts/", "alerts/rules/", "alerts/{pk}/"])
def test_who_reaches_the_pages(login, cast, stale_alert, path):
    url = "/t/alpha/" + path.format(pk=stale_alert.pk)
    rules = path == "alerts/rules/"
    assert login(cast["oscar"]).get(url).status_code == 404
    assert login(cast["victor"]).get(url).status_code == 403
    assert login(cast["dave"]).get(url).status_code == 403
    assert login(cast["bob"]).get(url).status_code == 403
    assert login(cast["audrey"]).get(url).status_code == (403 if rules else 200)
    assert login(cast["alice"]).get(url).status_code == 200


def test_the_detail_page_links_to_the_gateway_and_admins_acknowledge(login, cast, tenant_a,
                                                                     stale_alert):
    url = f"/t/alpha/alerts/{stale_alert.pk}/"
    gateway_id = stale_alert.detail["gateway"]
    as_auditor = login(cast["audrey"]).get(url).content.decode()
    assert f'href="/t/alpha/gateways/{gateway_id}/" id="alert-target"' in as_auditor
    assert 'id="alert-actions"' not in as_auditor  # auditors read, admins act
    assert login(cast["audrey"]).post(url, {"action": "acknowledge"}).status_code == 403
    assert login(cast["oscar"]).post(url, {"action": "acknowledge"}).status_code == 404

    client = login(cast["alice"])
    before = client.get(url).content.decode()
    assert 'id="alert-actions"' in before
    # The navigation counts alerts nobody acknowledged, for those who may see alerts.
    assert '<span class="badge nav-count" id="nav-alerts-count" aria-label="1 not ' \
           'acknowledged">1</span>' in before
    assert 'id="nav-alerts"' not in login(cast["victor"]).get("/t/alpha/").content.decode()
    response = client.post(url, {"action": "acknowledge", "note": "restarting edge-1"},
                           follow=True)
    assert 'id="nav-alerts-count"' not in response.content.decode()
    assert response.redirect_chain == [(url, 302)]
    assert "Acknowledged: repeats of this alert no longer notify anyone." in \
        response.content.decode()
    stale_alert.refresh_from_db()
    assert (stale_alert.status, stale_alert.acknowledged_by, stale_alert.ack_note) == (
        "acknowledged", cast["alice"], "restarting edge-1")
    again = client.post(url, {"action": "acknowledge"})
    assert again.status_code == 400
    assert "alice already acknowledged this alert" in again.content.decode()
    long = client.post(url, {"action": "resolve", "note": "y" * 1001})
    assert long.status_code == 400 and 'y' * 1001 in long.content.decode()  # input kept
    resolved = client.post(url, {"action": "resolve", "note": "fixed"})
    assert resolved.status_code == 302
    stale_alert.refresh_from_db()
    assert stale_alert.status == "resolved" and stale_alert.resolution == "alice: fixed"
    assert 'id="alert-actions"' not in client.get(url).content.decode()
    assert audit_actions(tenant_a) == ["alert.raised", "alert.acknowledged", "alert.resolved"]


def test_a_failing_bundle_build_raises_a_critical_alert_until_a_build_succeeds(tenant_a):
    from bundles import publish

    first = publish.bundle_publish(tenant=tenant_a, trigger="test")
    publish.bundle_publish_failed(tenant=tenant_a, error="KeyUnavailable: cannot decrypt the "
                                                         "signing key")
    evaluate()
    [alert] = alerts(tenant_a)
    assert (alert.rule_kind, alert.key, alert.severity) == (
        "bundle_build_failing", "bundle", "critical")
    assert "cannot decrypt the signing key" in alert.subject
    assert alert.detail["last_revision"] == first.revision_number
    assert selectors.alert_target(tenant_a, alert) == ("/t/alpha/bundles/", "Bundle history")
    evaluate(minutes=1)  # still failing: the same alert, not a second one
    assert len(alerts(tenant_a)) == 1
    publish.bundle_publish(tenant=tenant_a, trigger="retry", force=True)
    evaluate(minutes=2)
    alert.refresh_from_db()
    assert alert.status == "resolved" and "published a new revision" in alert.resolution


def test_the_rules_page_validates_and_keeps_the_input(login, alice, tenant_a):
    client = login(alice)
    page = client.get("/t/alpha/alerts/rules/").content.decode()
    for kind in ("gateway_stale", "tool_drift", "denial_burst", "break_glass_used",
                 "audit_chain_broken", "export_failing", "bundle_build_failing"):
        assert f'id="rule-{kind}"' in page
    assert 'name="denial_burst-threshold" value="20"' in page
    assert 'name="tool_drift-threshold"' not in page  # the kind takes none

    bad = client.post("/t/alpha/alerts/rules/", {
        "kind": "denial_burst", "denial_burst-enabled": "on", "denial_burst-threshold": "0",
        "denial_burst-window_minutes": "7", "denial_burst-severity": "critical"})
    assert bad.status_code == 400
    body = bad.content.decode()
    assert "Ensure this value is greater than or equal to 1." in body
    assert 'name="denial_burst-window_minutes" value="7"' in body
    missing = client.post("/t/alpha/alerts/rules/", {
        "kind": "denial_burst", "denial_burst-enabled": "on", "denial_burst-threshold": "",
        "denial_burst-window_minutes": "7", "denial_burst-severity": "critical"})
    assert missing.status_code == 400
    assert "Give the denials (default 20)." in missing.content.decode()
    huge = client.post("/t/alpha/alerts/rules/", {
        "kind": "gateway_stale", "gateway_stale-window_minutes": "99999",
        "gateway_stale-severity": "warning"})
    assert "must be between 1 and 10080" in huge.content.decode()
    assert client.post("/t/alpha/alerts/rules/", {"kind": "nope"}).status_code == 400
    assert not AuditEvent.objects.filter(action="alert_rule.updated").exists()

    saved = client.post("/t/alpha/alerts/rules/", {
        "kind": "denial_burst", "denial_burst-enabled": "on", "denial_burst-threshold": "50",
        "denial_burst-window_minutes": "2", "denial_burst-severity": "critical"}, follow=True)
    assert saved.redirect_chain == [("/t/alpha/alerts/rules/", 302)]
    assert "Saved the rule “Burst of denials”." in saved.content.decode()
    rule = AlertRule.objects.get(tenant=tenant_a, kind="denial_burst")
    assert (rule.threshold, rule.window_minutes, rule.severity, rule.updated_by) == (
        50, 2, "critical", alice)
    client.post("/t/alpha/alerts/rules/", {"kind": "tool_drift",
                                           "tool_drift-severity": "info"})  # enabled unticked
    assert AlertRule.objects.get(tenant=tenant_a, kind="tool_drift").enabled is False


def test_only_admins_change_rules(login, cast):
    data = {"kind": "tool_drift", "tool_drift-severity": "info"}
    assert login(cast["audrey"]).post("/t/alpha/alerts/rules/", data).status_code == 403
    assert login(cast["oscar"]).post("/t/alpha/alerts/rules/", data).status_code == 404
    assert not AlertRule.objects.filter(enabled=False).exists()


# --- API ----------------------------------------------------------------------------------------


def test_the_api_lists_filters_and_acknowledges_alerts(admin, as_user, cast, tenant_a,
                                                       stale_alert):
    auditor = as_user(cast["audrey"])
    listed = auditor.get(f"{API}/alerts/")
    assert listed.status_code == 200
    [row] = listed.json()["results"]
    assert row["id"] == stale_alert.pk and row["kind"] == "gateway_stale"
    assert row["status"] == "open" and row["occurrences"] == 1
    assert auditor.get(f"{API}/alerts/?status=resolved").json()["count"] == 0
    assert auditor.get(f"{API}/alerts/?kind=tool_drift").json()["count"] == 0
    assert auditor.get(f"{API}/alerts/?severity=banana").status_code == 400
    one = auditor.get(f"{API}/alerts/{stale_alert.pk}/").json()
    assert one["detail"]["name"] == "edge-1"
    assert auditor.post(f"{API}/alerts/{stale_alert.pk}/acknowledge/").status_code == 403

    acked = admin.post(f"{API}/alerts/{stale_alert.pk}/acknowledge/", {"note": "on it"},
                       format="json")
    assert acked.status_code == 200
    assert acked.json()["status"] == "acknowledged" and acked.json()["acknowledged_by"] == "alice"
    again = admin.post(f"{API}/alerts/{stale_alert.pk}/acknowledge/", {}, format="json")
    assert again.status_code == 400 and again.json()["code"] == "invalid"
    assert "already acknowledged" in again.json()["message"]
    resolved = admin.post(f"{API}/alerts/{stale_alert.pk}/resolve/", {}, format="json")
    assert resolved.status_code == 200 and resolved.json()["status"] == "resolved"
    assert admin.get(f"{API}/alerts/?status=all").json()["count"] == 1
    assert AuditEvent.objects.get(action="alert.acknowledged").actor_type == "token"


def test_the_api_is_for_auditors_and_admins_of_the_tenant_only(as_user, api, token_for, cast,
                                                               tenant_b, stale_alert):
    for name in ("victor", "dave", "bob"):
        assert as_user(cast[name]).get(f"{API}/alerts/").status_code == 403
    outsider = api(token_for(cast["oscar"], tenant_b))
    assert outsider.get(f"{API}/alerts/{stale_alert.pk}/").status_code == 404
    assert outsider.get(f"/api/v1/t/bravo/alerts/{stale_alert.pk}/").status_code == 404
    assert outsider.post(f"/api/v1/t/bravo/alerts/{stale_alert.pk}/acknowledge/"
                         ).status_code == 404


def test_the_api_changes_rules_for_admins_only(admin, as_user, api, token_for, cast, tenant_a,
                                               tenant_b):
    listed = admin.get(f"{API}/alert-rules/")
    assert listed.status_code == 200
    rows = {r["kind"]: r for r in listed.json()["results"]}
    assert set(rows) == {"gateway_stale", "tool_drift", "denial_burst", "break_glass_used",
                         "audit_chain_broken", "export_failing", "bundle_build_failing",
                         "revision_conflict"}
    burst = rows["denial_burst"]
    assert (burst["threshold"], burst["window_minutes"], burst["enabled"]) == (20, 5, True)
    url = f"{API}/alert-rules/{burst['id']}/"
    patched = admin.patch(url, {"threshold": 40, "severity": "critical"}, format="json")
    assert patched.status_code == 200
    assert (patched.json()["threshold"], patched.json()["severity"]) == (40, "critical")
    assert patched.json()["updated_by"] == "alice"
    bad = admin.patch(url, {"window_minutes": 0}, format="json")
    assert bad.status_code == 400 and "window_minutes" in bad.json()["errors"]
    unknown = admin.patch(url, {"kind": "tool_drift"}, format="json")
    assert unknown.status_code == 400 and "kind" in unknown.json()["errors"]
    drift = rows["tool_drift"]["id"]
    no_threshold = admin.patch(f"{API}/alert-rules/{drift}/", {"threshold": 3}, format="json")
    assert no_threshold.status_code == 400 and "takes no threshold" in \
        no_threshold.json()["errors"]["threshold"][0]
    assert admin.get(url).json()["threshold"] == 40
    assert as_user(cast["audrey"]).get(f"{API}/alert-rules/").status_code == 403
    assert as_user(cast["audrey"]).patch(url, {"enabled": False},
                                         format="json").status_code == 403
    outsider = api(token_for(cast["oscar"], tenant_b))
    assert outsider.patch(f"/api/v1/t/bravo/alert-rules/{burst['id']}/", {"enabled": False},
                          format="json").status_code == 404
    assert AlertRule.objects.get(pk=burst["id"]).enabled is True
