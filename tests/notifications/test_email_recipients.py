"""E-mail channels write one message per recipient: no message reveals another recipient's
address (Django's locmem outbox holds exactly what would go over SMTP), and a retry after a
partial failure writes only to those not yet written to."""

from __future__ import annotations

import pytest
from django.core import mail
from django.core.mail.backends import locmem

from governance.audit.services import Actor
from notifications import services, tasks
from notifications.models import Delivery

SYSTEM = Actor.system("test")
ADDRESSES = ["sec@example.com", "oncall@pager.example.net"]


class FlakyBackend(locmem.EmailBackend):
    """locmem, but the SMTP server refuses one address once (then accepts it)."""

    refuse_once: set[str] = set()

    def send_messages(self, messages):
        for message in messages:
            for address in message.recipients():
                if address in FlakyBackend.refuse_once:
                    FlakyBackend.refuse_once.discard(address)
                    raise ConnectionError(f"451 try again later ({address})")
        return super().send_messages(messages)


def _notify(tenant, recipients) -> Delivery:
    [delivery] = services.notify(tenant=tenant, event="approval.requested",
                                 subject="payroll:read for payroll-bot",
                                 text="dave asks for payroll:read.", link="/t/alpha/approvals/",
                                 recipients=recipients)
    return delivery


def _deliver(delivery: Delivery) -> Delivery:
    services.delivery_attempt(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    return delivery


def _everyone(alice, bob) -> list[str]:
    return [*ADDRESSES, bob.email, alice.email]


@pytest.fixture
def mail_channel(tenant_a):
    return services.channel_create(tenant=tenant_a, actor=SYSTEM, name="mail", kind="email",
                                   addresses=ADDRESSES, to_recipients=True)


def test_each_recipient_gets_a_message_naming_only_them(tenant_a, alice, bob, mailoutbox,
                                                        mail_channel,
                                                        django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        delivery = _notify(tenant_a, [bob, alice, "SEC@example.com"])  # the last one: a dup
    delivery = _deliver(delivery)
    assert delivery.status == "sent"
    everyone = _everyone(alice, bob)
    assert [m.to for m in mailoutbox] == [[address] for address in everyone]
    for message in mailoutbox:
        assert message.cc == [] and message.bcc == [] and message.reply_to == []
        wire = message.message().as_string()  # every header and the body, as sent
        others = [a for a in everyone if a != message.to[0]]
        assert not [a for a in others if a.lower() in wire.lower()], wire
        assert message.subject == "[Tollgate] payroll:read for payroll-bot"
        assert message.extra_headers["X-Tollgate-Delivery"] == str(delivery.pk)
    assert delivery.payload["sent_to"] == everyone


def test_a_retry_after_a_partial_failure_writes_only_to_the_others(
        tenant_a, alice, bob, settings, mail_channel, django_capture_on_commit_callbacks):
    settings.EMAIL_BACKEND = f"{__name__}.FlakyBackend"
    FlakyBackend.refuse_once = {bob.email}
    mail.outbox = []
    with django_capture_on_commit_callbacks(execute=False):
        delivery = _notify(tenant_a, [bob, alice])
    first = _deliver(delivery)
    assert (first.status, first.attempts) == ("pending", 1)
    assert "2 of 4 recipients done" in first.last_error
    assert first.payload["sent_to"] == ADDRESSES
    tasks.deliver.apply(args=[delivery.pk])
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("sent", 2)
    assert sorted(m.to[0] for m in mail.outbox) == sorted(_everyone(alice, bob))  # each once
