"""How exported rows look on the wire: JSON documents, CEF, RFC 5424 syslog, Splunk HEC.

Pure functions of a row (no I/O), so each format is tested on its own and every sender shares
them.

CEF (ArcSight Common Event Format, rev. 25)
-------------------------------------------
``CEF:0|Tollgate|Tollgate|<version>|<signature id>|<name>|<severity>|<extension>``. In the seven
header fields ``\\`` and ``|`` are escaped with a backslash (and a line break becomes a space:
a header never spans lines); in extension values ``\\`` and ``=`` are escaped and line breaks
are written ``\\n`` / ``\\r``. Extension keys are fixed CEF names (``rt`` in epoch
milliseconds, ``suser``, ``act``, ``outcome``, ``externalId``, ``cs1Label``/``cs1`` …).
"""

from __future__ import annotations

import json
import socket
import tomllib
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder

from decision_logs.models import DecisionLog
from governance.audit.api.serializers import AuditEventOut
from governance.audit.models import AuditEvent

PRODUCT = "Tollgate"
APP_NAME = "tollgate"
# RFC 5612: the private enterprise number reserved for documentation; our SD-ID is local.
SD_ID = "tollgate@32473"
# RFC 5424 facilities: 13 "log audit" for the audit trail, 10 "security/authorization" for the
# gateways' authorization decisions.
FACILITY = {"audit": 13, "decisions": 10}
SOURCETYPE = {"audit": "tollgate:audit", "decisions": "tollgate:decision"}


@lru_cache(maxsize=1)
def product_version() -> str:
    """Tollgate's version (pyproject.toml), the CEF header's Device Version."""
    try:
        with (Path(settings.BASE_DIR) / "pyproject.toml").open("rb") as handle:
            return str(tomllib.load(handle)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "0"


@lru_cache(maxsize=1)
def hostname() -> str:
    """This machine's name as an RFC 5424 HOSTNAME (printable ASCII, no spaces, ≤ 255)."""
    name = "".join(c for c in socket.gethostname() if 33 <= ord(c) <= 126)
    return name[:255] or "-"


class ExportJSONEncoder(DjangoJSONEncoder):
    """Times keep their microseconds (DjangoJSONEncoder cuts them to milliseconds): RFC 3339
    in UTC with a ``Z``."""

    def default(self, o: Any) -> Any:
        if isinstance(o, datetime):
            if o.tzinfo is not None:
                o = o.astimezone(UTC)
            return o.isoformat().replace("+00:00", "Z")
        return super().default(o)


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, cls=ExportJSONEncoder))


# --- Documents (JSON lines and the HEC "event") ------------------------------------------------


def audit_document(event: AuditEvent, tenant_slug: str) -> dict[str, Any]:
    """What the audit API shows of an event (hash and prev_hash included), plus its tenant."""
    return {"type": "audit", "tenant": tenant_slug, **_json_safe(AuditEventOut(event).data)}


def decision_document(row: DecisionLog, tenant_slug: str) -> dict[str, Any]:
    """Every column of the decision-log row (a foreign key as ``<name>_id``), plus its tenant."""
    document: dict[str, Any] = {"type": "decision", "tenant": tenant_slug}
    for field in DecisionLog._meta.concrete_fields:
        if field.name == "tenant":
            continue
        document[field.attname] = field.value_from_object(row)
    return _json_safe(document)


def document(row: AuditEvent | DecisionLog, stream: str, tenant_slug: str) -> dict[str, Any]:
    if stream == "audit":
        return audit_document(row, tenant_slug)
    return decision_document(row, tenant_slug)


def json_line(doc: dict[str, Any]) -> bytes:
    """One JSON object on one line (JSON escapes every line break inside strings)."""
    return json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                      cls=ExportJSONEncoder).encode() + b"\n"


def event_time(row: AuditEvent | DecisionLog) -> datetime:
    """When the event happened: the audit event's time, the gateway's decision time."""
    return row.created_at if isinstance(row, AuditEvent) else row.timestamp


# --- CEF ---------------------------------------------------------------------------------------


def cef_header_escape(value: object) -> str:
    text = str(value).replace("\\", "\\\\").replace("|", "\\|")
    return text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def cef_value_escape(value: object) -> str:
    text = str(value).replace("\\", "\\\\").replace("=", "\\=")
    return text.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r")


def cef(signature_id: str, name: str, severity: int, extension: list[tuple[str, Any]]) -> str:
    """A CEF record; extension pairs with a None or empty value are left out."""
    header = "|".join(cef_header_escape(part) for part in (
        "CEF:0", PRODUCT, PRODUCT, product_version(), signature_id, name, severity))
    pairs = " ".join(f"{key}={cef_value_escape(value)}" for key, value in extension
                     if value is not None and value != "")
    return f"{header}|{pairs}"


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _ip(value: str | None) -> str | None:
    try:
        socket.inet_pton(socket.AF_INET6 if value and ":" in value else socket.AF_INET,
                         value or "")
    except (OSError, ValueError):
        return None
    return value


def audit_severity(action: str) -> int:
    """Break-glass and a broken chain are high; removals, revocations and refusals medium."""
    if "break_glass" in action or ("chain" in action and "broken" in action):
        return 8
    if any(word in action for word in ("deleted", "revoked", "quarantined", "disabled",
                                       "denied", "blocked", "suspended", "failed")):
        return 5
    return 3


NAME_LENGTH = 120
DECISION_SEVERITY = {"allow": 2, "escalate": 5, "deny": 6}


def audit_cef(event: AuditEvent, tenant_slug: str) -> str:
    # The name is for a person scanning a list; the full text is in msg.
    name = f"{event.action} {event.object_repr}".strip()[:NAME_LENGTH]
    return cef(event.action, name, audit_severity(event.action), [
        ("rt", _ms(event.created_at)),
        ("cat", "audit"),
        ("act", event.action),
        ("suser", event.actor_label),
        ("suid", event.actor_id),
        ("cs1Label", "tenant"), ("cs1", tenant_slug),
        ("cs2Label", "actorType"), ("cs2", event.actor_type),
        ("cs3Label", "objectType"), ("cs3", event.object_type),
        ("cs4Label", "objectId"), ("cs4", event.object_id),
        ("cs5Label", "requestId"), ("cs5", event.request_id),
        ("cs6Label", "hash"), ("cs6", event.hash),
        ("cn1Label", "seq"), ("cn1", event.seq),
        ("externalId", event.pk),
        ("src", _ip(event.ip)),
        # Last: the one long free-text field, the first to be cut when a datagram is too big.
        ("msg", event.object_repr),
    ])


def decision_cef(row: DecisionLog, tenant_slug: str) -> str:
    name = f"{row.outcome} {row.server}/{row.tool}"[:NAME_LENGTH]
    return cef(row.outcome, name, DECISION_SEVERITY.get(row.outcome, 5), [
        ("rt", _ms(row.timestamp)),
        ("cat", "decision"),
        ("act", row.outcome),
        ("outcome", row.outcome),
        ("suser", row.principal),
        ("requestClientApplication", row.agent),
        ("externalId", row.decision_id),
        ("cs1Label", "tenant"), ("cs1", tenant_slug),
        ("cs2Label", "server"), ("cs2", row.server),
        ("cs3Label", "tool"), ("cs3", row.tool),
        ("cs4Label", "argumentsSha256"), ("cs4", row.arguments_sha256),
        ("cs5Label", "callId"), ("cs5", row.call_id),
        ("cs6Label", "gatewayId"), ("cs6", row.gateway_id),
        ("cn1Label", "bundleRevision"), ("cn1", row.bundle_revision),
        ("cn2Label", "grantId"), ("cn2", row.grant_id),
        ("cn3Label", "rowId"), ("cn3", row.pk),
        ("msg", row.reason),
    ])


def probe_cef(tenant_slug: str, exporter_name: str) -> str:
    return cef("exporter.test", "Tollgate test message", 1, [
        ("rt", _ms(datetime.now(UTC))),
        ("cat", "test"),
        ("cs1Label", "tenant"), ("cs1", tenant_slug),
        ("msg", f"Test message from the exporter {exporter_name!r}; nothing to act on."),
    ])


# --- RFC 5424 syslog ---------------------------------------------------------------------------


def _sd_escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def syslog_severity(cef_severity: int) -> int:
    """CEF 0–10 → syslog: informational, notice, warning, critical."""
    if cef_severity >= 9:
        return 2
    if cef_severity >= 7:
        return 4
    if cef_severity >= 4:
        return 5
    return 6


def _fit(message: bytes, limit: int | None) -> bytes:
    """Cut an over-long message at ``limit`` bytes on a character boundary, never leaving a
    dangling CEF escape backslash."""
    if limit is None or len(message) <= limit:
        return message
    text = message[:limit].decode("utf-8", errors="ignore")
    trailing = len(text) - len(text.rstrip("\\"))
    if trailing % 2:
        text = text[:-1]
    return text.encode()


def syslog_message(*, stream: str, msgid: str, when: datetime, cef_record: str,
                   cef_severity: int, structured: dict[str, object],
                   limit: int | None = None) -> bytes:
    """``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] MSG`` (RFC 5424), MSG = CEF."""
    pri = FACILITY[stream] * 8 + syslog_severity(cef_severity)
    stamp = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    params = " ".join(f'{key}="{_sd_escape(value)}"' for key, value in structured.items())
    head = f"<{pri}>1 {stamp} {hostname()} {APP_NAME} - {msgid} [{SD_ID} {params}] "
    return _fit(head.encode() + cef_record.encode(), limit)


def row_syslog(row: AuditEvent | DecisionLog, stream: str, tenant_slug: str,
               limit: int | None = None) -> bytes:
    if stream == "audit":
        record, severity = audit_cef(row, tenant_slug), audit_severity(row.action)
    else:
        record, severity = decision_cef(row, tenant_slug), DECISION_SEVERITY.get(row.outcome, 5)
    return syslog_message(stream=stream, msgid="audit" if stream == "audit" else "decision",
                          when=event_time(row), cef_record=record, cef_severity=severity,
                          structured={"tenant": tenant_slug, "id": row.pk}, limit=limit)


def probe_syslog(stream: str, tenant_slug: str, exporter_name: str,
                limit: int | None = None) -> bytes:
    return syslog_message(stream=stream, msgid="test", when=datetime.now(UTC),
                          cef_record=probe_cef(tenant_slug, exporter_name), cef_severity=1,
                          structured={"tenant": tenant_slug, "id": 0}, limit=limit)


def octet_frame(message: bytes) -> bytes:
    """RFC 6587 octet counting: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode() + b" " + message


# --- Splunk HEC --------------------------------------------------------------------------------


def hec_event(doc: dict[str, Any], *, stream: str, when: datetime,
              index: str = "") -> dict[str, Any]:
    event: dict[str, Any] = {
        "time": round(when.timestamp(), 3),
        "host": hostname(),
        "source": APP_NAME,
        "sourcetype": SOURCETYPE[stream],
        "event": doc,
    }
    if index:
        event["index"] = index
    return event


def hec_body(events: list[dict[str, Any]]) -> bytes:
    """HEC's batch form: the event objects one after another (here one per line)."""
    return b"".join(json_line(event) for event in events)
