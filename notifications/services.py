"""Every write to notification channels (keyword-only, atomic, audited in the same transaction),
``notify`` — the one entry point other apps call — and one delivery attempt, for the worker."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator, validate_email
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from governance import outbound
from governance.audit.services import Actor, audit_record, to_json
from governance.names import clean_name
from governance.secrets import encrypt_text, reencrypt
from governance.tasking import enqueue_on_commit
from governance.tenancy.models import Tenant
from notifications import senders
from notifications.models import EVENTS, Channel, Delivery

log = logging.getLogger(__name__)

TEST_EVENT = "notification.test"
MIN_SECRET_LENGTH = 16
MAX_ADDRESSES = 50
# First retry after this many seconds, doubling each time, at most RETRY_MAX_SECONDS.
RETRY_BASE_SECONDS = 30
RETRY_MAX_SECONDS = 3600


def _hint(url: str) -> str:
    host = urlsplit(url).hostname or "?"
    return f"{host} …{url[-4:]}"


def _clean_events(events: Iterable[str]) -> list[str]:
    events = list(events or [])
    unknown = sorted(set(events) - set(EVENTS))
    if unknown:
        raise ValidationError({"events": f"Unknown event(s) {', '.join(unknown)}; use "
                                         f"{', '.join(EVENTS)}."})
    return [e for e in EVENTS if e in events]  # fixed order, no duplicates


def _clean_addresses(addresses: Iterable[str]) -> list[str]:
    cleaned: list[str] = []
    for address in addresses or []:
        address = str(address).strip()
        try:
            validate_email(address)
        except ValidationError:
            raise ValidationError(
                {"addresses": f"{address!r} is not an e-mail address."}) from None
        if address.lower() not in (a.lower() for a in cleaned):
            cleaned.append(address)
    if len(cleaned) > MAX_ADDRESSES:
        raise ValidationError({"addresses": f"At most {MAX_ADDRESSES} addresses."})
    return cleaned


def _set_url(channel: Channel, url: str) -> None:
    url = url.strip()
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError:
        raise ValidationError({"url": "Enter the full http(s):// URL to POST to."}) from None
    outbound.validate_url(url, field="url", purpose=f"{channel.kind} channel")
    channel.url_encrypted = encrypt_text(url)
    channel.url_hint = _hint(url)


def _set_secret(channel: Channel, secret: str) -> None:
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValidationError({"secret": f"Use at least {MIN_SECRET_LENGTH} random characters "
                                         "(the receiver verifies signatures with it)."})
    channel.secret_encrypted = encrypt_text(secret)
    channel.secret_hint = f"…{secret[-4:]}"


def _validate(channel: Channel, url: str | None, secret: str | None) -> None:
    """Check a channel for its kind; ``url``/``secret`` None or "" keep the stored ones."""
    channel.name = clean_name(channel.name, noun="channel")
    if channel.kind not in Channel.Kind.values:
        raise ValidationError({"kind": f"Use one of {', '.join(Channel.Kind.values)}."})
    channel.events = _clean_events(channel.events)
    if channel.kind == Channel.Kind.EMAIL:
        channel.addresses = _clean_addresses(channel.addresses)
        if not channel.addresses and not channel.to_recipients:
            raise ValidationError({"addresses": "Give at least one address, or send to the "
                                                "people each event names."})
        channel.url_encrypted = channel.url_hint = ""
        channel.secret_encrypted = channel.secret_hint = ""
        return
    channel.addresses, channel.to_recipients = [], False
    if url:
        _set_url(channel, url)
    elif not channel.url_encrypted:
        raise ValidationError({"url": f"A {channel.get_kind_display()} channel needs a URL."})
    if channel.kind == Channel.Kind.WEBHOOK:
        if secret:
            _set_secret(channel, secret)
        elif not channel.secret_encrypted:
            raise ValidationError({"secret": "A webhook channel needs a signing secret."})
    else:
        channel.secret_encrypted = channel.secret_hint = ""


def _save(channel: Channel) -> None:
    clash = Channel.objects.for_tenant(channel.tenant).filter(name=channel.name)
    if clash.exclude(pk=channel.pk).exists():
        raise ValidationError({"name": f"A channel named {channel.name!r} already exists."})
    try:
        with transaction.atomic():
            channel.save()
    except IntegrityError:
        raise ValidationError(
            {"name": f"A channel named {channel.name!r} already exists."}) from None


# --- Channels -----------------------------------------------------------------------------------


@transaction.atomic
def channel_create(*, tenant: Tenant, actor: Actor, name: str, kind: str, enabled: bool = True,
                   events: Sequence[str] = (), addresses: Sequence[str] = (),
                   to_recipients: bool = False, url: str = "", secret: str = "",
                   created_by: AbstractBaseUser | None = None) -> Channel:
    """Add a channel; its URL and secret are encrypted before they are stored."""
    channel = Channel(tenant=tenant, name=name, kind=kind, enabled=enabled, events=list(events),
                      addresses=list(addresses), to_recipients=to_recipients,
                      created_by=created_by)
    _validate(channel, url, secret)
    _save(channel)
    audit_record(tenant=tenant, actor=actor, action="notification_channel.created", obj=channel,
                 after=channel.audit_snapshot())
    return channel


CHANNEL_FIELDS = ("name", "kind", "enabled", "events", "addresses", "to_recipients")


@transaction.atomic
def channel_update(*, tenant: Tenant, actor: Actor, channel: Channel, url: str | None = None,
                   secret: str | None = None, **changes: Any) -> Channel:
    """Change a channel; a URL or secret left empty keeps the stored one."""
    channel = Channel.objects.for_tenant(tenant).select_for_update().get(pk=channel.pk)
    unknown = set(changes) - set(CHANNEL_FIELDS)
    if unknown:
        raise ValidationError(f"Cannot change {', '.join(sorted(unknown))} here.")
    before = channel.audit_snapshot()
    old_secrets = (channel.url_encrypted, channel.secret_encrypted)
    for field, value in changes.items():
        setattr(channel, field, value)
    _validate(channel, url, secret)
    after = channel.audit_snapshot()
    if after == before and old_secrets == (channel.url_encrypted, channel.secret_encrypted):
        return channel
    channel.updated_at = timezone.now()
    _save(channel)
    if url:
        after["url_changed"] = True
    if secret:
        after["secret_changed"] = True
    audit_record(tenant=tenant, actor=actor, action="notification_channel.updated", obj=channel,
                 before=before, after=after)
    return channel


@transaction.atomic
def channel_delete(*, tenant: Tenant, actor: Actor, channel: Channel) -> None:
    """Delete a channel and its delivery log (pending deliveries are not sent)."""
    channel = Channel.objects.for_tenant(tenant).select_for_update().get(pk=channel.pk)
    audit_record(tenant=tenant, actor=actor, action="notification_channel.deleted", obj=channel,
                 before=channel.audit_snapshot() | {"deliveries": channel.deliveries.count()})
    channel.delete()


@transaction.atomic
def channel_test(*, tenant: Tenant, actor: Actor, channel: Channel) -> Delivery:
    """Send a ``notification.test`` to this channel only (also when it is disabled or not
    subscribed to it)."""
    channel = Channel.objects.for_tenant(tenant).get(pk=channel.pk)
    delivery = _delivery(
        channel, TEST_EVENT, f"Test notification from Tollgate ({tenant.name})",
        {"text": f"{actor.label or 'An admin'} sent this test to the channel {channel.name!r}. "
                 "If you can read it, the channel works.",
         "facts": [], "link": _absolute(reverse("notifications:channels", args=[tenant.slug])),
         "data": {}, "recipients": []},
    )
    audit_record(tenant=tenant, actor=actor, action="notification_channel.tested", obj=channel,
                 after={"delivery": delivery.pk})
    return delivery


# --- Sending ------------------------------------------------------------------------------------


def _absolute(link: str) -> str:
    """A path from ``reverse()`` (which carries the path prefix, if any) on the public origin:
    TOLLGATE_BASE_URL's own path is that same prefix, so only its scheme and host are used."""
    if not link.startswith("/"):
        return link
    base = urlsplit(settings.TOLLGATE_BASE_URL)
    return f"{base.scheme}://{base.netloc}{link}"


def _emails(recipients: Iterable[AbstractBaseUser | str]) -> list[str]:
    found: list[str] = []
    for recipient in recipients:
        email = recipient if isinstance(recipient, str) else getattr(recipient, "email", "")
        if email and email not in found:
            found.append(email)
    return found


def _delivery(channel: Channel, event: str, subject: str, payload: dict[str, Any]) -> Delivery:
    delivery = Delivery.objects.create(
        tenant=channel.tenant, channel=channel, event=event, subject=subject[:300],
        payload=payload, next_attempt_at=timezone.now(),
    )
    enqueue_on_commit("notifications.tasks.deliver", delivery.pk)
    return delivery


def _facts(facts: Iterable[tuple[str, Any]]) -> list[list[str]]:
    """``[label, value]`` pairs in order (a list: JSON objects in jsonb lose their order), the
    empty ones left out."""
    return [[str(label), str(value)] for label, value in facts
            if value is not None and str(value).strip()]


@transaction.atomic
def notify(*, tenant: Tenant, event: str, subject: str, text: str, link: str,
           facts: Iterable[tuple[str, Any]] = (),
           recipients: Iterable[AbstractBaseUser | str] = (),
           data: dict[str, Any] | None = None) -> list[Delivery]:
    """One delivery per enabled channel subscribed to ``event``, sent by the worker after the
    caller's transaction commits (never during the request).

    The payload is built here once and every channel renders the same one: ``subject``,
    ``text``, ``facts`` (``(label, value)`` pairs a person triages by: who asks, why, for which
    agent and scope or tool, the risk, the deadline), ``link`` (the page to act on: required,
    made absolute with TOLLGATE_BASE_URL) and ``data`` (the same, machine-readable, for
    webhooks). ``recipients`` are the people the event names (users or e-mail addresses):
    e-mail channels with ``to_recipients`` add them."""
    if event not in EVENTS:
        raise ValueError(f"unknown notification event {event!r}")
    if not link:
        raise ValueError(f"a {event} notification needs the link of the page to act on")
    payload = {"text": text, "facts": _facts(facts), "link": _absolute(link),
               "data": to_json(data or {}), "recipients": _emails(recipients)}
    deliveries = []
    for channel in Channel.objects.for_tenant(tenant).filter(enabled=True):
        if not channel.wants(event):
            continue
        if channel.kind == Channel.Kind.EMAIL and not (
                channel.addresses or (channel.to_recipients and payload["recipients"])):
            continue  # nobody to write to
        deliveries.append(_delivery(channel, event, subject, payload))
    return deliveries


def retry_delay(attempts: int) -> int:
    """Seconds before the next attempt after ``attempts`` failed ones (exponential)."""
    return min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** max(0, attempts - 1))


def delivery_attempt(*, delivery_id: int, now: datetime | None = None) -> Delivery | None:
    """Try one pending delivery once and record the attempt. A delivery that is sent, failed,
    gone or being tried by another worker right now is left alone (returned as it is, or None).

    The row stays locked while the message goes out (at most NOTIFICATION_HTTP_TIMEOUT), so a
    redelivered task message cannot send it twice."""
    with transaction.atomic():
        delivery = (Delivery.objects.select_for_update(skip_locked=True, of=("self",))
                    .filter(pk=delivery_id).first())
        if delivery is None or delivery.status != Delivery.Status.PENDING:
            return delivery
        error, final = "", False
        if not delivery.channel.enabled and delivery.event != TEST_EVENT:
            error, final = "The channel was disabled before this was sent.", True
        else:
            try:
                senders.send(delivery)
            except senders.SendError as exc:
                error = str(exc)
        now = now or timezone.now()
        delivery.attempts += 1
        delivery.last_error = error[:2000]
        if not error:
            delivery.status, delivery.sent_at, delivery.next_attempt_at = (
                Delivery.Status.SENT, now, None)
        elif final or delivery.attempts >= settings.NOTIFICATION_MAX_ATTEMPTS:
            delivery.status, delivery.next_attempt_at = Delivery.Status.FAILED, None
        else:
            delivery.next_attempt_at = now + timedelta(seconds=retry_delay(delivery.attempts))
        # The payload too: an e-mail attempt records whom it has written to (``sent_to``).
        delivery.save(update_fields=["attempts", "last_error", "status", "sent_at",
                                     "next_attempt_at", "payload"])
    return delivery


@transaction.atomic
def deliveries_claim_lost(*, now: datetime | None = None, grace_seconds: int = 300) -> list[int]:
    """Pending deliveries overdue by ``grace_seconds`` (their task message was lost: broker down
    at enqueue time, worker killed), marked due now so the next sweep leaves them alone."""
    now = now or timezone.now()
    ids = list(Delivery.objects.filter(
        status=Delivery.Status.PENDING, next_attempt_at__lte=now - timedelta(seconds=grace_seconds),
    ).order_by("next_attempt_at").values_list("pk", flat=True)[:500])
    Delivery.objects.filter(pk__in=ids, status=Delivery.Status.PENDING).update(next_attempt_at=now)
    return ids


@transaction.atomic
def channels_reencrypt() -> int:
    """Re-encrypt every channel URL and secret under the first SECRET_ENCRYPTION_KEYS entry
    (``manage.py rotate_bundle_key --reencrypt``)."""
    count = 0
    for channel in Channel.objects.select_for_update().exclude(url_encrypted=""):
        channel.url_encrypted = reencrypt(channel.url_encrypted)
        if channel.secret_encrypted:
            channel.secret_encrypted = reencrypt(channel.secret_encrypted)
        channel.save(update_fields=["url_encrypted", "secret_encrypted"])
        count += 1
    if count:
        audit_record(tenant=None, actor=Actor.system("rotate_bundle_key"),
                     action="notification_channel.reencrypted",
                     object_type="notifications.channel", after={"channels": count})
    return count
