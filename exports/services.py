"""Every write to exporters (keyword-only, atomic, audited in the same transaction) and one
export run, for the worker.

Configuration changes are audited (created, updated, enabled, disabled, deleted, cursor reset,
run requested, tested). A run's cursor advance is telemetry and is *not* audited: every audited
advance of an audit-stream exporter would be a new audit event for that exporter to send, so the
stream would feed itself forever.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from exports import selectors, senders
from exports.models import Exporter
from governance import outbound
from governance.audit.services import Actor, audit_record
from governance.names import clean_name
from governance.secrets import encrypt_text, reencrypt
from governance.tasking import enqueue_on_commit
from governance.tenancy.models import Tenant

log = logging.getLogger(__name__)

START_BEGINNING = "beginning"
START_NOW = "now"
STARTS = {START_BEGINNING: "From the beginning (every stored event)",
          START_NOW: "Only new events (from now on)"}
HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")
INDEX_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
# Printable ASCII without spaces: it goes into an HTTP header.
TOKEN = re.compile(r"[\x21-\x7e]{8,500}")
EXPORTER_FIELDS = ("name", "kind", "stream", "enabled", "path", "host", "port", "url", "index")


# --- Validation --------------------------------------------------------------------------------


def clean_file_name(name: str) -> str:
    """A plain file name for EXPORT_FILE_DIR/<tenant>/: no folders, no "..", not absolute."""
    name = (name or "").strip()
    where = "it is written to the tenant's export directory"
    if not name:
        raise ValidationError({"path": f"Give a file name, e.g. audit.jsonl ({where})."})
    if "/" in name or "\\" in name:
        raise ValidationError({"path": f"A file name only, without folders ({where})."})
    if ".." in name:
        raise ValidationError({"path": "“..” is not allowed in the file name."})
    if not senders.FILE_NAME.fullmatch(name):
        raise ValidationError({"path": "Use 1–100 letters, digits, “.”, “_” or “-”, starting "
                                       "with a letter or digit."})
    return name


def _clean_host(host: str) -> str:
    host = (host or "").strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not HOST_NAME.fullmatch(host):
        raise ValidationError({"host": "Give the syslog receiver's host name or IP address."})
    return host


def _clean_port(port: Any) -> int:
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise ValidationError({"port": "Give the receiver's port (1–65535, often 514)."}) from None
    if not 1 <= port <= 65535:
        raise ValidationError({"port": "Give the receiver's port (1–65535, often 514)."})
    return port


def _set_token(exporter: Exporter, token: str) -> None:
    if not TOKEN.fullmatch(token):
        raise ValidationError({"token": "Paste the HEC token (8–500 characters, no spaces)."})
    exporter.token_encrypted = encrypt_text(token)
    exporter.token_hint = f"…{token[-4:]}"


def _validate(exporter: Exporter, token: str | None) -> None:
    """Check an exporter for its kind and clear the fields other kinds use; ``token`` None or
    "" keeps the stored one."""
    exporter.name = clean_name(exporter.name, noun="exporter")
    if exporter.kind not in Exporter.Kind.values:
        raise ValidationError({"kind": f"Use one of {', '.join(Exporter.Kind.values)}."})
    if exporter.stream not in Exporter.Stream.values:
        raise ValidationError({"stream": f"Use one of {', '.join(Exporter.Stream.values)}."})
    kind = exporter.kind
    if kind == Exporter.Kind.JSONL:
        exporter.path = clean_file_name(exporter.path)
    else:
        exporter.path = ""
    if kind in (Exporter.Kind.SYSLOG_UDP, Exporter.Kind.SYSLOG_TCP):
        exporter.host = _clean_host(exporter.host)
        exporter.port = _clean_port(exporter.port)
        outbound.validate_host(
            exporter.host, exporter.port, field="host", purpose="syslog exporter",
            socktype=socket.SOCK_DGRAM if kind == Exporter.Kind.SYSLOG_UDP else socket.SOCK_STREAM)
    else:
        exporter.host, exporter.port = "", None
    if kind == Exporter.Kind.SPLUNK_HEC:
        exporter.url = (exporter.url or "").strip()
        try:
            URLValidator(schemes=["http", "https"])(exporter.url)
        except ValidationError:
            raise ValidationError({"url": "Enter the collector's http(s):// URL, e.g. "
                                          "https://splunk.example.com:8088/services/collector/"
                                          "event."}) from None
        outbound.validate_url(exporter.url, field="url", purpose="Splunk HEC exporter")
        exporter.index = (exporter.index or "").strip()
        if exporter.index and not INDEX_NAME.fullmatch(exporter.index):
            raise ValidationError({"index": "An index name: letters, digits, “_” and “-”."})
        if token:
            _set_token(exporter, token)
        elif not exporter.token_encrypted:
            raise ValidationError({"token": "A Splunk HEC exporter needs its token."})
    else:
        exporter.url = exporter.index = ""
        exporter.token_encrypted = exporter.token_hint = ""


def _save(exporter: Exporter) -> None:
    clash = Exporter.objects.for_tenant(exporter.tenant).filter(name=exporter.name)
    message = f"An exporter named {exporter.name!r} already exists."
    if clash.exclude(pk=exporter.pk).exists():
        raise ValidationError({"name": message})
    try:
        with transaction.atomic():
            exporter.save()
    except IntegrityError:
        raise ValidationError({"name": message}) from None


def _start_cursor(tenant: Tenant, stream: str, start: str) -> int:
    if start == START_BEGINNING:
        return 0
    if start == START_NOW:
        return selectors.stream_head(tenant, stream)
    raise ValidationError({"start": f"Use {' or '.join(STARTS)}."})


def _locked(tenant: Tenant, exporter: Exporter) -> Exporter:
    return (Exporter.objects.for_tenant(tenant).select_for_update(of=("self",))
            .select_related("tenant").get(pk=exporter.pk))


# --- Configuration -----------------------------------------------------------------------------


@transaction.atomic
def exporter_create(*, tenant: Tenant, actor: Actor, name: str, kind: str, stream: str,
                    path: str = "", host: str = "", port: int | None = None, url: str = "",
                    index: str = "", token: str = "", enabled: bool = True,
                    start: str = START_BEGINNING,
                    created_by: AbstractBaseUser | None = None) -> Exporter:
    """Add an exporter; it starts at the stream's first row or after its newest (``start``)."""
    exporter = Exporter(tenant=tenant, name=name, kind=kind, stream=stream, path=path, host=host,
                        port=port, url=url, index=index, enabled=enabled, created_by=created_by,
                        next_attempt_at=timezone.now())
    _validate(exporter, token)
    exporter.cursor = _start_cursor(tenant, stream, start)
    _save(exporter)
    audit_record(tenant=tenant, actor=actor, action="exporter.created", obj=exporter,
                 after=exporter.audit_snapshot() | {"start": start, "cursor": exporter.cursor})
    if exporter.enabled:
        enqueue_on_commit("exports.tasks.run_exporter", exporter.pk)
    return exporter


@transaction.atomic
def exporter_update(*, tenant: Tenant, actor: Actor, exporter: Exporter, token: str | None = None,
                    **changes: Any) -> Exporter:
    """Change an exporter; a token left empty keeps the stored one. Its cursor stays: a new
    target receives what comes next (reset the cursor to send everything again).
    Enabling or disabling is audited as such."""
    exporter = _locked(tenant, exporter)
    unknown = set(changes) - set(EXPORTER_FIELDS)
    if unknown:
        raise ValidationError(f"Cannot change {', '.join(sorted(unknown))} here.")
    if "stream" in changes and changes["stream"] != exporter.stream:
        raise ValidationError({"stream": "The stream cannot change (the cursor counts rows of "
                                         "one stream); add another exporter instead."})
    before, old_token = exporter.audit_snapshot(), exporter.token_encrypted
    for field, value in changes.items():
        setattr(exporter, field, value)
    _validate(exporter, token)
    after = exporter.audit_snapshot()
    config_changed = ({k: v for k, v in after.items() if k != "enabled"}
                      != {k: v for k, v in before.items() if k != "enabled"}
                      or old_token != exporter.token_encrypted)
    enabled_changed = after["enabled"] != before["enabled"]
    if not config_changed and not enabled_changed:
        return exporter
    exporter.updated_at = timezone.now()
    if enabled_changed and exporter.enabled:
        exporter.next_attempt_at = exporter.updated_at  # no leftover backoff
    _save(exporter)
    if config_changed:
        audit_after = {k: v for k, v in after.items() if k != "enabled"}
        if token:
            audit_after["token_changed"] = True
        audit_record(tenant=tenant, actor=actor, action="exporter.updated", obj=exporter,
                     before={k: v for k, v in before.items() if k != "enabled"},
                     after=audit_after)
    if enabled_changed:
        audit_record(tenant=tenant, actor=actor,
                     action="exporter.enabled" if exporter.enabled else "exporter.disabled",
                     obj=exporter, before={"enabled": before["enabled"]},
                     after={"enabled": exporter.enabled})
        if exporter.enabled:
            enqueue_on_commit("exports.tasks.run_exporter", exporter.pk)
    return exporter


@transaction.atomic
def exporter_delete(*, tenant: Tenant, actor: Actor, exporter: Exporter) -> None:
    """Delete an exporter (what it sent stays at the receiver)."""
    exporter = _locked(tenant, exporter)
    audit_record(tenant=tenant, actor=actor, action="exporter.deleted", obj=exporter,
                 before=exporter.audit_snapshot() | {"cursor": exporter.cursor,
                                            "exported_total": exporter.exported_total})
    exporter.delete()


@transaction.atomic
def exporter_reset_cursor(*, tenant: Tenant, actor: Actor, exporter: Exporter,
                          start: str) -> Exporter:
    """Send everything again (``beginning``) or skip to after the newest row (``now``)."""
    exporter = _locked(tenant, exporter)
    before = exporter.cursor
    exporter.cursor = _start_cursor(tenant, exporter.stream, start)
    exporter.next_attempt_at = exporter.updated_at = timezone.now()
    exporter.save(update_fields=["cursor", "next_attempt_at", "updated_at"])
    audit_record(tenant=tenant, actor=actor, action="exporter.cursor_reset", obj=exporter,
                 before={"cursor": before}, after={"cursor": exporter.cursor, "start": start})
    if exporter.enabled:
        enqueue_on_commit("exports.tasks.run_exporter", exporter.pk)
    return exporter


@transaction.atomic
def exporter_request_run(*, tenant: Tenant, actor: Actor, exporter: Exporter) -> Exporter:
    """Send now: make the exporter due at once (cutting a failing one's backoff short) and
    queue a run."""
    exporter = _locked(tenant, exporter)
    if not exporter.enabled:
        raise ValidationError("The exporter is disabled; enable it first.")
    exporter.next_attempt_at = timezone.now()
    exporter.save(update_fields=["next_attempt_at"])
    audit_record(tenant=tenant, actor=actor, action="exporter.run_requested", obj=exporter,
                 after={"cursor": exporter.cursor})
    enqueue_on_commit("exports.tasks.run_exporter", exporter.pk)
    return exporter


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of "Test connection"."""

    ok: bool
    message: str


def exporter_test(*, tenant: Tenant, actor: Actor, exporter: Exporter) -> ProbeResult:
    """Send one test message now (short timeout; disabled exporters too) and audit the outcome.
    The cursor and the failure counters are left alone."""
    exporter = Exporter.objects.for_tenant(tenant).select_related("tenant").get(pk=exporter.pk)
    try:
        result = ProbeResult(True, senders.send_probe(
            exporter, timeout=settings.EXPORT_TEST_TIMEOUT_SECONDS))
    except senders.SendError as exc:
        result = ProbeResult(False, str(exc))
    with transaction.atomic():  # after the send: no lock is held while it waits
        audit_record(tenant=tenant, actor=actor, action="exporter.tested", obj=exporter,
                     after={"ok": result.ok, "message": result.message[:500]})
    return result


@transaction.atomic
def exporters_reencrypt() -> int:
    """Re-encrypt every HEC token under the first SECRET_ENCRYPTION_KEYS entry."""
    count = 0
    for exporter in Exporter.objects.select_for_update().exclude(token_encrypted=""):
        exporter.token_encrypted = reencrypt(exporter.token_encrypted)
        exporter.save(update_fields=["token_encrypted"])
        count += 1
    if count:
        audit_record(tenant=None, actor=Actor.system("rotate_bundle_key"),
                     action="exporter.reencrypted", object_type="exports.exporter",
                     after={"exporters": count})
    return count


# --- Runs (the worker) -------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    """What one run did: ``sent`` (rows accepted), ``idle`` (nothing ready), ``failed``, or
    nothing at all: ``busy`` (another worker holds it), ``gone``, ``disabled``, ``not_due``
    (backing off). ``more``: rows are ready beyond this run's budget."""

    status: str
    sent: int = 0
    more: bool = False
    error: str = ""


def retry_delay(failures: int) -> int:
    """Seconds before the next attempt after ``failures`` consecutive failed ones."""
    base, cap = settings.EXPORT_RETRY_BASE_SECONDS, settings.EXPORT_RETRY_MAX_SECONDS
    return min(cap, base * 2 ** min(max(0, failures - 1), 30))


def _export_batch(exporter_id: int, now: datetime | None) -> RunResult:
    with transaction.atomic():
        # The row lock is held while the batch goes out (at most EXPORT_TIMEOUT_SECONDS), so two
        # workers never send the same exporter's rows; the other one skips it.
        exporter = (Exporter.objects.select_for_update(skip_locked=True, of=("self",))
                    .select_related("tenant").filter(pk=exporter_id).first())
        if exporter is None:
            exists = Exporter.objects.filter(pk=exporter_id).exists()
            return RunResult("busy" if exists else "gone")
        now = now or timezone.now()
        if not exporter.enabled:
            return RunResult("disabled")
        if exporter.next_attempt_at is not None and exporter.next_attempt_at > now:
            return RunResult("not_due")
        rows, more = selectors.pending_batch(exporter, limit=settings.EXPORT_BATCH_SIZE, now=now)
        if not rows:
            return RunResult("idle")
        error = ""
        try:
            senders.send_rows(exporter, rows)
        except senders.SendError as exc:
            error = str(exc)
        except Exception as exc:  # a bug or an unexpected row: shown, retried, logged
            log.exception("exporter %s: batch after %s failed", exporter.pk, exporter.cursor)
            error = f"Internal error: {type(exc).__name__}: {exc}"
        mine = Exporter.objects.filter(pk=exporter.pk)
        if error:
            failures = exporter.consecutive_failures + 1
            mine.update(consecutive_failures=failures, last_error=error[:2000],
                        last_error_at=now,
                        next_attempt_at=now + timedelta(seconds=retry_delay(failures)))
            log.warning("exporter %s (%s): %s", exporter.pk, exporter.name, error)
            return RunResult("failed", error=error)
        # Only now that the receiver took the batch does the cursor move past it.
        mine.update(cursor=rows[-1].pk, exported_total=F("exported_total") + len(rows),
                    last_success_at=now, consecutive_failures=0, next_attempt_at=now)
        return RunResult("sent", sent=len(rows), more=more)


def exporter_run(*, exporter_id: int, now: datetime | None = None,
                 max_batches: int | None = None) -> RunResult:
    """Send batches until the exporter is caught up, fails, or has used its budget
    (EXPORT_MAX_BATCHES_PER_RUN; ``more`` then says the caller should queue another run).
    Each batch commits its cursor on its own."""
    budget = max_batches or settings.EXPORT_MAX_BATCHES_PER_RUN
    sent = 0
    result = RunResult("idle")
    for _ in range(budget):
        result = _export_batch(exporter_id, now)
        sent += result.sent
        if result.status != "sent" or not result.more:
            break
    if sent and result.status == "idle":
        result = RunResult("sent")
    return replace(result, sent=sent)
