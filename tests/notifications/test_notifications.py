"""Notification channels and deliveries: services (audited, secrets encrypted), notify, the
worker's attempts against a real local HTTP receiver, e-mail, retries, and the pages and API."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from governance.audit.models import AuditEvent
from governance.audit.services import Actor
from governance.secrets import decrypt_text
from notifications import services, tasks
from notifications.models import Channel, Delivery

SYSTEM = Actor.system("test")
SECRET = "s3cret-signing-key-0123456789"
API = "/api/v1/t/alpha"


class Receiver:
    """A real HTTP server on 127.0.0.1: records every POST, answers the queued statuses."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.statuses: list[int] = []
        self.base = ""

    def url(self, path: str = "/hook") -> str:
        return self.base + path


@pytest.fixture
def receiver():
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            rec.requests.append({"path": self.path, "headers": self.headers, "body": body})
            status = rec.statuses.pop(0) if rec.statuses else 200
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"ok" if status < 300 else b"receiver exploded")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    rec.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield rec
    server.shutdown()
    server.server_close()


def webhook(tenant, url, **kwargs) -> Channel:
    return services.channel_create(tenant=tenant, actor=SYSTEM, name=kwargs.pop("name", "siem"),
                                   kind="webhook", url=url, secret=SECRET, **kwargs)


def actions(tenant) -> list[str]:
    return list(AuditEvent.objects.filter(tenant=tenant, action__startswith="notification")
                .order_by("seq").values_list("action", flat=True))


def notify(tenant, event="approval.requested", **kwargs) -> list[Delivery]:
    return services.notify(tenant=tenant, event=event, subject="payroll:read for payroll-bot",
                           text="dave asks for payroll:read (2 h): month-end run.",
                           link="/t/alpha/approvals/", **kwargs)


def deliver(delivery: Delivery) -> Delivery:
    """Run the Celery task in this process (eager: retries run at once, without countdown)."""
    tasks.deliver.apply(args=[delivery.pk])
    delivery.refresh_from_db()
    return delivery


# --- Channels ---------------------------------------------------------------------------------


def test_secrets_are_encrypted_at_rest_and_never_audited(tenant_a, alice):
    url = "https://hooks.example.com/services/T000/B000/XyZsecretTokenAbCd"
    channel = services.channel_create(tenant=tenant_a, actor=Actor.user(alice), name="#sec",
                                      kind="slack", url=url, events=["approval.requested"])
    hook = webhook(tenant_a, "https://siem.example.com/in/tok3n")
    row = Channel.objects.get(pk=channel.pk)
    assert url not in row.url_encrypted and decrypt_text(row.url_encrypted) == url
    assert row.target == "hooks.example.com …AbCd"
    hook_row = Channel.objects.get(pk=hook.pk)
    assert SECRET not in hook_row.secret_encrypted
    assert decrypt_text(hook_row.secret_encrypted) == SECRET
    assert hook_row.secret_hint == "…6789"
    assert actions(tenant_a) == ["notification_channel.created"] * 2
    events = AuditEvent.objects.filter(tenant=tenant_a, action__startswith="notification")
    dumped = json.dumps([[e.before, e.after] for e in events])
    assert "XyZsecret" not in dumped and SECRET not in dumped and "tok3n" not in dumped
    first = events.order_by("seq").first()
    assert first.actor_label == "alice"
    assert first.after == {"name": "#sec", "kind": "slack", "enabled": True,
                           "events": ["approval.requested"], "addresses": [],
                           "to_recipients": False, "url": "hooks.example.com …AbCd", "secret": ""}


def test_an_update_keeps_secrets_left_empty_and_audits_only_real_changes(tenant_a):
    hook = webhook(tenant_a, "https://siem.example.com/in")
    stored = (hook.url_encrypted, hook.secret_encrypted)
    services.channel_update(tenant=tenant_a, actor=SYSTEM, channel=hook, url="", secret="",
                            name="siem")
    assert actions(tenant_a) == ["notification_channel.created"]  # nothing changed
    hook = services.channel_update(tenant=tenant_a, actor=SYSTEM, channel=hook, enabled=False,
                                   secret="another-secret-0000-zzzz")
    assert hook.url_encrypted == stored[0] and hook.secret_encrypted != stored[1]
    assert decrypt_text(hook.secret_encrypted) == "another-secret-0000-zzzz"
    event = AuditEvent.objects.get(action="notification_channel.updated")
    assert event.before["enabled"] is True and event.after["enabled"] is False
    assert event.after["secret_changed"] is True and "url_changed" not in event.after
    assert "another-secret" not in json.dumps(event.after)


def test_switching_a_webhook_to_email_forgets_its_url_and_secret(tenant_a):
    hook = webhook(tenant_a, "https://siem.example.com/in")
    hook = services.channel_update(tenant=tenant_a, actor=SYSTEM, channel=hook, kind="email",
                                   addresses=["sec@example.com"])
    assert (hook.url_encrypted, hook.secret_encrypted, hook.url_hint) == ("", "", "")
    assert hook.target == "sec@example.com"


@pytest.mark.parametrize(("values", "field", "message"), [
    ({"kind": "email"}, "addresses",
     "Give at least one address, or send to the people each event names."),
    ({"kind": "email", "addresses": ["not-an-address"]}, "addresses",
     "'not-an-address' is not an e-mail address."),
    ({"kind": "slack"}, "url", "A Slack (incoming webhook) channel needs a URL."),
    ({"kind": "slack", "url": "ftp://example.com/x"}, "url",
     "Enter the full http(s):// URL to POST to."),
    ({"kind": "webhook", "url": "https://example.com/x"}, "secret",
     "A webhook channel needs a signing secret."),
    ({"kind": "webhook", "url": "https://example.com/x", "secret": "short"}, "secret",
     "Use at least 16 random characters (the receiver verifies signatures with it)."),
    ({"kind": "email", "to_recipients": True, "events": ["approval.sneezed"]}, "events",
     "Unknown event(s) approval.sneezed; use approval.requested, approval.reminder, "
     "approval.decided, escalation.created, escalation.decided, escalation.flood, "
     "break_glass.used, alert.raised, notification.test."),
    ({"kind": "pager", "addresses": ["a@example.com"]}, "kind",
     "Use one of email, slack, webhook."),
])
def test_a_channel_is_validated_for_its_kind(tenant_a, values, field, message):
    with pytest.raises(ValidationError) as caught:
        services.channel_create(tenant=tenant_a, actor=SYSTEM, name="x", **values)
    assert caught.value.message_dict == {field: [message]}
    assert not Channel.objects.exists() and actions(tenant_a) == []


def test_names_are_unique_per_tenant(tenant_a, tenant_b):
    webhook(tenant_a, "https://example.com/a")
    webhook(tenant_b, "https://example.com/b")  # another tenant may use the name
    with pytest.raises(ValidationError) as caught:
        webhook(tenant_a, "https://example.com/c")
    assert caught.value.message_dict == {"name": ["A channel named 'siem' already exists."]}


def test_deleting_a_channel_deletes_its_log_and_is_audited(tenant_a,
                                                            django_capture_on_commit_callbacks):
    hook = webhook(tenant_a, "https://example.com/a")
    with django_capture_on_commit_callbacks(execute=False):
        notify(tenant_a)
    services.channel_delete(tenant=tenant_a, actor=SYSTEM, channel=hook)
    assert not Channel.objects.exists() and not Delivery.objects.exists()
    event = AuditEvent.objects.get(action="notification_channel.deleted")
    assert event.before["name"] == "siem" and event.before["deliveries"] == 1


def test_rotating_the_encryption_key_reencrypts_channel_secrets(tenant_a, settings, capsys):
    from django.core.management import call_command

    hook = webhook(tenant_a, "https://siem.example.com/in")
    services.channel_create(tenant=tenant_a, actor=SYSTEM, name="mail", kind="email",
                            addresses=["a@example.com"])
    old = settings.SECRET_ENCRYPTION_KEYS[0]
    new = "bmV3LW5ldy1uZXctbmV3LW5ldy1uZXctbmV3LW5ldy0="
    settings.SECRET_ENCRYPTION_KEYS = [new, old]
    call_command("rotate_bundle_key", "--reencrypt")
    assert "Re-encrypted the URLs and secrets of 1 notification channel(s)." in (
        capsys.readouterr().out)
    settings.SECRET_ENCRYPTION_KEYS = [new]
    hook.refresh_from_db()
    assert decrypt_text(hook.url_encrypted) == "https://siem.example.com/in"
    assert decrypt_text(hook.secret_encrypted) == SECRET
    assert AuditEvent.objects.get(action="notification_channel.reencrypted").after == {
        "channels": 1}


# --- notify -----------------------------------------------------------------------------------


def test_notify_creates_deliveries_for_enabled_subscribed_channels_and_enqueues_on_commit(
        tenant_a, tenant_b, bob, monkeypatch, django_capture_on_commit_callbacks):
    every = services.channel_create(tenant=tenant_a, actor=SYSTEM, name="all", kind="email",
                                    addresses=["sec@example.com"])
    decided_only = webhook(tenant_a, "https://example.com/a", events=["approval.decided"])
    webhook(tenant_a, "https://example.com/b", name="off", enabled=False)
    approvers = services.channel_create(tenant=tenant_a, actor=SYSTEM, name="approvers",
                                        kind="email", to_recipients=True)
    webhook(tenant_b, "https://example.com/other-tenant")
    enqueued = []
    monkeypatch.setattr(tasks.deliver, "delay", enqueued.append)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        created = notify(tenant_a)  # names nobody: the approvers channel has no one to write to
    assert [d.channel for d in created] == [every]
    assert len(callbacks) == 1 and enqueued == []  # nothing is sent before the commit

    with django_capture_on_commit_callbacks(execute=True):
        created = notify(tenant_a, event="approval.decided", recipients=[bob, "x@example.com"],
                         data={"request": 7, "at": timezone.now()})
    assert {d.channel for d in created} == {every, decided_only, approvers}
    assert sorted(enqueued) == sorted(d.pk for d in created)
    delivery = created[0]
    assert delivery.status == "pending" and delivery.attempts == 0
    assert delivery.payload["recipients"] == ["bob@example.com", "x@example.com"]
    assert delivery.payload["link"] == "https://tollgate.example.test/t/alpha/approvals/"
    assert delivery.payload["data"]["request"] == 7
    assert isinstance(delivery.payload["data"]["at"], str)
    assert Delivery.objects.filter(tenant=tenant_b).count() == 0
    assert actions(tenant_a) == ["notification_channel.created"] * 4  # notify audits nothing


def test_notify_refuses_an_unknown_event(tenant_a):
    with pytest.raises(ValueError, match="unknown notification event 'approval.sneezed'"):
        notify(tenant_a, event="approval.sneezed")


def test_a_broker_outage_does_not_break_the_caller(tenant_a, monkeypatch,
                                                   django_capture_on_commit_callbacks):
    webhook(tenant_a, "https://example.com/a")

    def down(*args):
        raise ConnectionError("broker down")

    monkeypatch.setattr(tasks.deliver, "delay", down)
    with django_capture_on_commit_callbacks(execute=True):
        [delivery] = notify(tenant_a)
    assert Delivery.objects.get(pk=delivery.pk).status == "pending"  # the sweep sends it later


def test_the_sweep_requeues_deliveries_whose_message_was_lost(tenant_a, monkeypatch,
                                                              django_capture_on_commit_callbacks):
    webhook(tenant_a, "https://example.com/a")
    with django_capture_on_commit_callbacks(execute=False):
        lost = notify(tenant_a)
        notify(tenant_a)
    Delivery.objects.filter(pk=lost[0].pk).update(
        next_attempt_at=timezone.now() - timedelta(minutes=10))
    enqueued = []
    monkeypatch.setattr(tasks.deliver, "delay", enqueued.append)
    assert tasks.sweep() == 1 and enqueued == [lost[0].pk]
    assert tasks.sweep() == 0  # marked due now: the next sweep leaves it to the worker


# --- Delivering ---------------------------------------------------------------------------------


def test_a_webhook_delivery_is_signed_and_carries_the_event(tenant_a, receiver,
                                                            django_capture_on_commit_callbacks):
    webhook(tenant_a, receiver.url("/tollgate?k=1"))
    with django_capture_on_commit_callbacks(execute=False):
        [delivery] = notify(tenant_a, data={"request": 7})
    delivery = deliver(delivery)

    assert (delivery.status, delivery.attempts, delivery.last_error) == ("sent", 1, "")
    assert delivery.sent_at is not None and delivery.next_attempt_at is None
    [request] = receiver.requests
    headers, body = request["headers"], request["body"]
    assert request["path"] == "/tollgate?k=1"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Tollgate-Event"] == "approval.requested"
    assert headers["X-Tollgate-Delivery"] == str(delivery.pk)
    timestamp = headers["X-Tollgate-Timestamp"]
    assert abs(int(timestamp) - timezone.now().timestamp()) < 60
    # What a receiver does: HMAC-SHA256 of "<timestamp>.<raw body>", compared in constant time.
    expected = hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    assert hmac.compare_digest(headers["X-Tollgate-Signature"], "sha256=" + expected.hexdigest())
    document = json.loads(body)
    assert set(document) == {"event", "tenant", "subject", "text", "facts", "link", "data",
                             "delivery_id", "sent_at"}
    assert document["event"] == "approval.requested" and document["tenant"] == "alpha"
    assert document["subject"] == "payroll:read for payroll-bot"
    assert document["text"] == "dave asks for payroll:read (2 h): month-end run."
    assert document["link"] == "https://tollgate.example.test/t/alpha/approvals/"
    assert document["data"] == {"request": 7} and document["delivery_id"] == delivery.pk
    assert document["sent_at"].endswith("Z")


def test_a_slack_delivery_uses_the_incoming_webhook_format(tenant_a, receiver,
                                                           django_capture_on_commit_callbacks):
    services.channel_create(tenant=tenant_a, actor=SYSTEM, name="#sec", kind="slack",
                            url=receiver.url("/services/T0/B0/abc"))
    with django_capture_on_commit_callbacks(execute=False):
        [delivery] = services.notify(tenant=tenant_a, event="break_glass.used",
                                     subject="alice used break-glass",
                                     text="payroll:write for 30 min <because> R&D", link="/t/x/")
    assert deliver(delivery).status == "sent"
    message = json.loads(receiver.requests[0]["body"])
    assert receiver.requests[0]["path"] == "/services/T0/B0/abc"
    assert message["text"] == ("*alice used break-glass*\npayroll:write for 30 min "
                               "&lt;because&gt; R&amp;D\n"
                               "<https://tollgate.example.test/t/x/|Open in Tollgate>")
    header, section, actions_block, context = message["blocks"]
    assert header == {"type": "header",
                      "text": {"type": "plain_text", "text": "alice used break-glass"}}
    assert section["text"]["type"] == "mrkdwn"
    assert actions_block["elements"][0]["url"] == "https://tollgate.example.test/t/x/"
    assert context["elements"][0]["text"] == "`break_glass.used` · Alpha Corp"


def test_an_email_goes_to_the_addresses_and_the_people_named(tenant_a, bob, mailoutbox,
                                                              django_capture_on_commit_callbacks):
    services.channel_create(tenant=tenant_a, actor=SYSTEM, name="mail", kind="email",
                            addresses=["sec@example.com"], to_recipients=True)
    with django_capture_on_commit_callbacks(execute=False):
        [delivery] = notify(tenant_a, recipients=[bob])
    assert deliver(delivery).status == "sent"
    assert [m.to for m in mailoutbox] == [["sec@example.com"], ["bob@example.com"]]
    mail = mailoutbox[0]
    assert mail.subject == "[Tollgate] payroll:read for payroll-bot"
    assert mail.body == ("dave asks for payroll:read (2 h): month-end run.\n\n"
                         "https://tollgate.example.test/t/alpha/approvals/")
    assert mail.extra_headers["X-Tollgate-Event"] == "approval.requested"


def test_failed_attempts_are_recorded_and_retried_with_backoff(tenant_a, receiver,
                                                               django_capture_on_commit_callbacks):
    webhook(tenant_a, receiver.url())
    with django_capture_on_commit_callbacks(execute=False):
        [delivery] = notify(tenant_a)
    receiver.statuses = [500, 500]
    now = timezone.now()
    first = services.delivery_attempt(delivery_id=delivery.pk, now=now)
    assert (first.status, first.attempts) == ("pending", 1)
    assert first.last_error == "HTTP 500: receiver exploded"
    assert first.next_attempt_at == now + timedelta(seconds=30)
    second = services.delivery_attempt(delivery_id=delivery.pk, now=now)
    assert second.attempts == 2 and second.next_attempt_at == now + timedelta(seconds=60)
    third = services.delivery_attempt(delivery_id=delivery.pk)
    assert (third.status, third.attempts, third.last_error) == ("sent", 3, "")
    assert len(receiver.requests) == 3
    assert [services.retry_delay(n) for n in (1, 2, 3, 4, 5, 8, 20)] == [
        30, 60, 120, 240, 480, 3600, 3600]


def test_the_task_retries_until_the_receiver_accepts(tenant_a, receiver,
                                                     django_capture_on_commit_callbacks):
    webhook(tenant_a, receiver.url())
    with django_capture_on_commit_callbacks(execute=False):
        [delivery] = notify(tenant_a)
    receiver.statuses = [500, 500, 200]
    delivery = deliver(delivery)
    assert (delivery.status, delivery.attempts) == ("sent", 3)
    assert len(receiver.requests) == 3
    assert len({r["headers"]["X-Tollgate-Delivery"] for r in receiver.requests}) == 1


def test_a_delivery_fails_for_good_after_the_last_attempt(tenant_a, receiver, settings,
                                                          django_capture_on_commit_callbacks):
    settings.NOTIFICATION_MAX_ATTEMPTS = 3
    webhook(tenant_a, receiver.url())
    with django_capture_on_commit_callbacks(execute=False):
        [delivery] = notify(tenant_a)
    receiver.statuses = [503] * 10
    delivery = deliver(delivery)
    assert (delivery.status, delivery.attempts) == ("failed", 3)
    assert delivery.last_error == "HTTP 503: receiver exploded"
    assert delivery.next_attempt_at is None and len(receiver.requests) == 3


def test_delivering_a_sent_delivery_again_sends_nothing(tenant_a, receiver,
                                                        django_capture_on_commit_callbacks):
    webhook(tenant_a, receiver.url())
    with django_capture_on_commit_callbacks(execute=False):
        [delivery] = notify(tenant_a)
    deliver(delivery)
    assert tasks.deliver.apply(args=[delivery.pk]).get() == "sent"  # a redelivered message
    assert len(receiver.requests) == 1
    assert Delivery.objects.get(pk=delivery.pk).attempts == 1
    assert tasks.deliver.apply(args=[987654]).get() == "gone or busy"


def test_an_unreachable_url_is_reported_without_the_url(tenant_a, settings,
                                                        django_capture_on_commit_callbacks):
    settings.NOTIFICATION_MAX_ATTEMPTS = 1
    services.channel_create(tenant=tenant_a, actor=SYSTEM, name="#sec", kind="slack",
                            url="http://127.0.0.1:9/services/T0/B0/token-in-path")
    with django_capture_on_commit_callbacks(execute=False):
        [delivery] = notify(tenant_a)
    delivery = deliver(delivery)
    assert delivery.status == "failed" and delivery.last_error.startswith("ConnectError")
    assert "token-in-path" not in delivery.last_error


def test_a_channel_disabled_after_notify_gets_nothing(tenant_a, receiver,
                                                      django_capture_on_commit_callbacks):
    hook = webhook(tenant_a, receiver.url())
    with django_capture_on_commit_callbacks(execute=False):
        [delivery] = notify(tenant_a)
    services.channel_update(tenant=tenant_a, actor=SYSTEM, channel=hook, enabled=False)
    delivery = deliver(delivery)
    assert (delivery.status, delivery.attempts) == ("failed", 1)
    assert delivery.last_error == "The channel was disabled before this was sent."
    assert receiver.requests == []


def test_a_test_message_reaches_a_disabled_channel(tenant_a, alice, receiver,
                                                   django_capture_on_commit_callbacks):
    hook = webhook(tenant_a, receiver.url(), enabled=False, events=["approval.decided"])
    with django_capture_on_commit_callbacks(execute=False):
        delivery = services.channel_test(tenant=tenant_a, actor=Actor.user(alice), channel=hook)
    assert deliver(delivery).status == "sent"
    document = json.loads(receiver.requests[0]["body"])
    assert document["event"] == "notification.test"
    assert document["text"].startswith("alice sent this test to the channel 'siem'.")
    assert actions(tenant_a)[-1] == "notification_channel.tested"


# --- Web pages ----------------------------------------------------------------------------------


def test_admin_sees_the_empty_state_and_the_nav_link(login, alice, bob):
    response = login(alice).get("/t/alpha/notifications/")
    assert response.status_code == 200
    assert b'id="channels-empty"' in response.content
    assert b'href="/t/alpha/notifications/">Notifications</a>' in response.content
    home = login(bob).get("/t/alpha/")
    assert b"/t/alpha/notifications/" not in home.content


@pytest.mark.parametrize("path", ["notifications/", "notifications/new/",
                                  "notifications/deliveries/"])
def test_only_admins_reach_the_pages(login, cast, path):
    assert login(cast["bob"]).get(f"/t/alpha/{path}").status_code == 403
    assert login(cast["victor"]).get(f"/t/alpha/{path}").status_code == 403
    assert login(cast["oscar"]).get(f"/t/alpha/{path}").status_code == 404
    assert login(cast["alice"]).get(f"/t/alpha/{path}").status_code == 200


def test_admin_adds_a_webhook_and_the_secret_is_never_shown(login, alice, tenant_a):
    client = login(alice)
    response = client.post("/t/alpha/notifications/new/", {
        "name": "siem", "kind": "webhook", "enabled": "on", "url": "https://siem.example.com/in",
        "secret": SECRET, "events": ["approval.requested", "break_glass.used"],
    }, follow=True)
    assert response.redirect_chain == [("/t/alpha/notifications/", 302)]
    assert b"Added channel siem." in response.content
    assert b"siem.example.com \xe2\x80\xa6m/in" in response.content
    channel = Channel.objects.get(tenant=tenant_a)
    assert channel.events == ["approval.requested", "break_glass.used"]
    edit = client.get(f"/t/alpha/notifications/{channel.pk}/edit/")
    assert SECRET.encode() not in edit.content
    assert b"https://siem.example.com/in" not in edit.content
    assert b"Set (ends \xe2\x80\xa66789); leave empty to keep it." in edit.content
    saved = client.post(f"/t/alpha/notifications/{channel.pk}/edit/", {
        "name": "siem-2", "kind": "webhook", "url": "", "secret": ""})
    assert saved.status_code == 302
    channel.refresh_from_db()
    assert channel.name == "siem-2" and channel.enabled is False
    assert decrypt_text(channel.secret_encrypted) == SECRET


def test_the_form_says_what_is_missing_and_keeps_the_input(login, alice):
    response = login(alice).post("/t/alpha/notifications/new/", {
        "name": "pager", "kind": "webhook", "url": "https://pager.example.com/x"})
    assert response.status_code == 400
    assert b"A webhook channel needs a signing secret." in response.content
    assert b'value="pager"' in response.content
    assert not Channel.objects.exists()


def test_admin_deletes_a_channel_after_confirming(login, alice, tenant_a):
    channel = webhook(tenant_a, "https://example.com/a")
    client = login(alice)
    confirm = client.get(f"/t/alpha/notifications/{channel.pk}/delete/")
    assert b"Delete channel siem?" in confirm.content
    response = client.post(f"/t/alpha/notifications/{channel.pk}/delete/", follow=True)
    assert b"Deleted channel siem." in response.content
    assert not Channel.objects.exists()


def test_send_test_queues_a_delivery_and_shows_it(login, alice, tenant_a,
                                                  django_capture_on_commit_callbacks):
    channel = webhook(tenant_a, "https://example.com/a")
    client = login(alice)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(f"/t/alpha/notifications/{channel.pk}/test/")
    assert response.status_code == 302
    assert response["Location"] == f"/t/alpha/notifications/deliveries/?channel={channel.pk}"
    assert len(callbacks) == 1
    page = client.get(response["Location"])
    assert b"notification.test" in page.content and b"Pending" in page.content


def test_the_delivery_log_is_newest_first_filtered_and_paginated(
        login, alice, tenant_a, django_capture_on_commit_callbacks):
    first = webhook(tenant_a, "https://example.com/a")
    second = webhook(tenant_a, "https://example.com/b", name="other")
    with django_capture_on_commit_callbacks(execute=False):
        for _ in range(26):
            notify(tenant_a)
    Delivery.objects.filter(channel=second).update(status="failed", attempts=6,
                                                   last_error="HTTP 500: nope")
    client = login(alice)
    page = client.get("/t/alpha/notifications/deliveries/").content.decode()
    assert "Page 1 of 3 (52 in all)" in page
    failed = client.get(f"/t/alpha/notifications/deliveries/?status=failed&channel={second.pk}")
    body = failed.content.decode()
    assert "26 in all" in body and "HTTP 500: nope" in body
    assert client.get(f"/t/alpha/notifications/deliveries/?channel={first.pk}&status=sent"
                      ).content.decode().count("No delivery matches these filters.") == 1
    assert client.get("/t/alpha/notifications/deliveries/?status=lost").status_code == 400


# --- API ----------------------------------------------------------------------------------------


def test_the_api_manages_channels_with_write_only_secrets(admin, tenant_a,
                                                          django_capture_on_commit_callbacks):
    created = admin.post(f"{API}/notification-channels/", {
        "name": "siem", "kind": "webhook", "url": "https://siem.example.com/in/tok3n",
        "secret": SECRET, "events": ["escalation.created"]}, format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert "url" not in body and "secret" not in body
    assert body["target"] == "siem.example.com …ok3n" and body["secret_hint"] == "…6789"
    assert body["events"] == ["escalation.created"] and body["created_by"] == "alice"
    assert SECRET not in created.content.decode() and "tok3n" not in created.content.decode()
    pk = body["id"]
    listed = admin.get(f"{API}/notification-channels/").json()
    assert [c["id"] for c in listed["results"]] == [pk]
    patched = admin.patch(f"{API}/notification-channels/{pk}/", {"enabled": False},
                          format="json")
    assert patched.status_code == 200 and patched.json()["enabled"] is False
    bad = admin.patch(f"{API}/notification-channels/{pk}/", {"secret": "short"}, format="json")
    assert bad.status_code == 400 and bad.json()["code"] == "invalid"
    assert "secret" in bad.json()["errors"]
    with django_capture_on_commit_callbacks(execute=False):
        tested = admin.post(f"{API}/notification-channels/{pk}/test/")
    assert tested.status_code == 202 and tested.json()["event"] == "notification.test"
    deliveries = admin.get(f"{API}/notification-deliveries/?status=pending").json()
    assert [d["id"] for d in deliveries["results"]] == [tested.json()["id"]]
    assert admin.get(f"{API}/notification-deliveries/?status=sent").json()["count"] == 0
    one = admin.get(f"{API}/notification-deliveries/{tested.json()['id']}/").json()
    assert one["channel_name"] == "siem" and one["attempts"] == 0
    assert admin.delete(f"{API}/notification-channels/{pk}/").status_code == 204
    assert actions(tenant_a) == ["notification_channel.created", "notification_channel.updated",
                                 "notification_channel.tested", "notification_channel.deleted"]
    assert AuditEvent.objects.filter(action="notification_channel.created").get().actor_type \
        == "token"


def test_the_api_is_for_admins_of_the_tenant_only(as_user, api, token_for, bob, oscar,
                                                  tenant_a, tenant_b):
    channel = webhook(tenant_a, "https://example.com/a")
    assert as_user(bob).get(f"{API}/notification-channels/").status_code == 403
    assert as_user(bob).get(f"{API}/notification-deliveries/").status_code == 403
    outsider = api(token_for(oscar, tenant_b))
    assert outsider.get(f"{API}/notification-channels/{channel.pk}/").status_code == 404
    own_slug = outsider.get(f"/api/v1/t/bravo/notification-channels/{channel.pk}/")
    assert own_slug.status_code == 404


# --- With a real Celery worker (PostgreSQL: the worker reads the test database) ---------------


@pytest.mark.postgres
def test_a_real_worker_delivers_after_the_commit(celery_worker_process, tenant_a, receiver):
    worker = celery_worker_process()
    webhook(tenant_a, receiver.url())
    [delivery] = notify(tenant_a)  # transactional_db: on_commit runs and sends the message
    worker.wait_until(lambda: Delivery.objects.get(pk=delivery.pk).status != "pending")
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("sent", 1), delivery.last_error
    [request] = receiver.requests
    assert json.loads(request["body"])["delivery_id"] == delivery.pk
