"""How one delivery goes out: e-mail, Slack incoming webhook, or a signed generic webhook.

Plain functions the worker calls (notifications.services.delivery_attempt); each
raises :class:`SendError` with a message for the delivery log, never containing the URL.

Webhook signature
-----------------
``X-Tollgate-Signature: sha256=<hex>`` is HMAC-SHA256, keyed with the channel's secret, of
``"<X-Tollgate-Timestamp>.<raw request body>"`` (timestamp: Unix seconds). A receiver recomputes
it over the bytes it received, compares in constant time (``hmac.compare_digest``) and refuses
timestamps more than a few minutes old (replays); ``X-Tollgate-Delivery`` is the same for every
retry of one delivery, so a receiver can drop duplicates.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx2
from django.conf import settings
from django.core.mail import EmailMessage, get_connection

from governance import outbound
from governance.secrets import KeyUnavailable, decrypt_text

if TYPE_CHECKING:
    from notifications.models import Delivery

USER_AGENT = "Tollgate-Notifications/1"
SIGNATURE_HEADER = "X-Tollgate-Signature"


class SendError(Exception):
    """This attempt failed; the message says why (shown to admins, retried)."""


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Tollgate-Signature`` value of a webhook body."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def _secret(token: str) -> str:
    try:
        return decrypt_text(token)
    except KeyUnavailable as exc:
        raise SendError(str(exc)) from None


def _post(url: str, body: bytes, headers: dict[str, str]) -> None:
    try:
        # Checked again now, as the URL was saved (both parsers' reading of its host); then the
        # connection goes only to addresses checked as it is made (no second lookup), and
        # redirects are not followed, so nothing else is connected to.
        outbound.check_url(url, purpose="notification")
        with httpx2.Client(transport=outbound.pinned_transport("notification"),
                           timeout=settings.NOTIFICATION_HTTP_TIMEOUT) as client:
            response = client.post(
                url, content=body, follow_redirects=False,
                headers={"Content-Type": "application/json", "User-Agent": USER_AGENT,
                         **headers},
            )
    except outbound.OutboundBlocked as exc:
        raise SendError(f"Not sent: {exc}") from None
    except httpx2.TimeoutException:
        raise SendError(
            f"No answer within {settings.NOTIFICATION_HTTP_TIMEOUT} s.") from None
    except httpx2.HTTPError as exc:  # connection refused, DNS, TLS …
        raise SendError(f"{type(exc).__name__}: {str(exc).replace(url, '<url>')}") from None
    if not 200 <= response.status_code < 300:
        raise SendError(f"HTTP {response.status_code}: {response.text[:300].strip()}")


def _mrkdwn(text: str) -> str:
    """Slack asks for exactly these three escaped in message text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def facts(delivery: Delivery) -> list[tuple[str, str]]:
    """The delivery's ``(label, value)`` pairs: who asks, why, agent, scope or tool, risk,
    deadline… (built once by ``notify``; every channel shows all of them)."""
    return [(label, value) for label, value in delivery.payload.get("facts", [])]


def facts_text(delivery: Delivery) -> str:
    """The facts as plain text lines, ``Label: value`` (continuation lines indented)."""
    return "\n".join(f"{label}: {value}".replace("\n", "\n    ")
                     for label, value in facts(delivery))


# Slack's limits: 10 fields per section block, 2,000 characters per field text.
SLACK_FIELDS, SLACK_FIELD_CHARS = 10, 2000


def slack_message(delivery: Delivery) -> dict[str, Any]:
    """Slack incoming-webhook JSON: ``text`` (notifications, fallback) and Block Kit blocks:
    the text, every fact as a field, the button to the page."""
    text, link = delivery.payload.get("text", ""), delivery.payload.get("link", "")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": delivery.subject[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _mrkdwn(text)[:3000] or " "}},
    ]
    fields = [{"type": "mrkdwn",
               "text": f"*{_mrkdwn(label)}*\n{_mrkdwn(value)}"[:SLACK_FIELD_CHARS]}
              for label, value in facts(delivery)]
    for start in range(0, len(fields), SLACK_FIELDS):
        blocks.append({"type": "section", "fields": fields[start:start + SLACK_FIELDS]})
    if link:
        blocks.append({"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Open in Tollgate"},
             "url": link},
        ]})
    blocks.append({"type": "context", "elements": [
        {"type": "mrkdwn", "text": f"`{delivery.event}` · {_mrkdwn(delivery.tenant.name)}"},
    ]})
    fallback = f"*{_mrkdwn(delivery.subject)}*\n{_mrkdwn(text)}"
    if facts(delivery):
        fallback += "\n" + "\n".join(f"*{_mrkdwn(label)}:* {_mrkdwn(value)}"
                                     for label, value in facts(delivery))
    if link:
        fallback += f"\n<{link}|Open in Tollgate>"
    return {"text": fallback, "blocks": blocks}


def webhook_body(delivery: Delivery, sent_at: datetime) -> dict[str, Any]:
    payload = delivery.payload
    return {
        "event": delivery.event,
        "tenant": delivery.tenant.slug,
        "subject": delivery.subject,
        "text": payload.get("text", ""),
        "facts": [{"label": label, "value": value} for label, value in facts(delivery)],
        "link": payload.get("link", ""),
        "data": payload.get("data", {}),
        "delivery_id": delivery.pk,
        "sent_at": sent_at.isoformat().replace("+00:00", "Z"),
    }


def email_body(delivery: Delivery) -> str:
    """The text, the facts one per line, and the link."""
    parts = [delivery.payload.get("text", ""), facts_text(delivery)]
    if delivery.payload.get("link"):
        parts.append(delivery.payload["link"])
    return "\n\n".join(part for part in parts if part)


def email_recipients(delivery: Delivery) -> list[str]:
    """Who an e-mail delivery goes to: the channel's addresses, then (``to_recipients``) the
    people the event names, each address once."""
    channel = delivery.channel
    to = list(channel.addresses)
    if channel.to_recipients:
        seen = {a.lower() for a in to}
        for address in delivery.payload.get("recipients", []):
            if address.lower() not in seen:
                to.append(address)
                seen.add(address.lower())
    return to


def send_email(delivery: Delivery) -> None:
    """One message per recipient, each addressed to that recipient only, so no recipient (an
    external list, a pager address) learns who else was told. The addresses already sent to are
    kept in ``payload["sent_to"]`` (saved with the attempt), so a retry after a partial failure
    writes only to the others."""
    to = email_recipients(delivery)
    if not to:
        raise SendError("Nobody to write to: the channel has no addresses and the event named "
                        "nobody.")
    body = email_body(delivery)
    sent = delivery.payload.setdefault("sent_to", [])
    try:
        connection = get_connection(fail_silently=False)
        with connection:
            for address in to:
                if address in sent:
                    continue
                EmailMessage(subject=f"[Tollgate] {delivery.subject}", body=body,
                             from_email=settings.DEFAULT_FROM_EMAIL, to=[address],
                             connection=connection,
                             headers={"X-Tollgate-Event": delivery.event,
                                      "X-Tollgate-Delivery": str(delivery.pk)}).send()
                sent.append(address)
    except Exception as exc:  # SMTP and socket errors alike: this attempt failed
        done = sum(1 for a in to if a in sent)
        raise SendError(f"E-mail not accepted ({done} of {len(to)} recipients done): "
                        f"{type(exc).__name__}: {exc}") from None


def send_slack(delivery: Delivery) -> None:
    url = _secret(delivery.channel.url_encrypted)
    _post(url, json.dumps(slack_message(delivery)).encode(), {})


def send_webhook(delivery: Delivery) -> None:
    channel = delivery.channel
    url, secret = _secret(channel.url_encrypted), _secret(channel.secret_encrypted)
    now = datetime.now(UTC)
    timestamp = str(int(now.timestamp()))
    body = json.dumps(webhook_body(delivery, now), separators=(",", ":"),
                      ensure_ascii=False).encode()
    _post(url, body, {
        "X-Tollgate-Event": delivery.event,
        "X-Tollgate-Delivery": str(delivery.pk),
        "X-Tollgate-Timestamp": timestamp,
        SIGNATURE_HEADER: signature(secret, timestamp, body),
    })


SENDERS = {"email": send_email, "slack": send_slack, "webhook": send_webhook}


def send(delivery: Delivery) -> None:
    """Send one delivery over its channel's kind; SendError when this attempt failed."""
    SENDERS[delivery.channel.kind](delivery)
