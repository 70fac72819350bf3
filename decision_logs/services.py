"""Writes of decision logs: validation of an uploaded batch, its bulk ingestion, the retention
purge.

Ingestion is the product's highest-volume write (DESIGN.md §5 ``POST logs``), so it is shaped
for throughput rather than written through the ORM:

* ``validate_events`` is a pure function (no database): it turns a decoded batch into row
  tuples or raises ``BatchInvalid`` naming the event index, its ``decision_id`` and the field.
  The gateway API runs it in a worker thread, apart from the database work.
* ``decisions_store`` writes a validated batch in ONE transaction: bulk
  ``INSERT … ON CONFLICT (tenant_id, decision_id) DO NOTHING RETURNING decision_id``, then one
  upsert of the hourly roll-up counting only the rows really inserted. On PostgreSQL the rows
  reach the server by ``COPY`` into a session-local staging table and go in with one
  ``INSERT … SELECT``; on SQLite (≥ 3.35) as multi-row ``VALUES``. Measured on PostgreSQL 15
  with 5,000-event batches (bench/ingest.py prints it again): COPY + INSERT … SELECT ≈ 2.6× the
  rows/s of one ``unnest`` of column arrays, itself ≈ 2× multi-row ``VALUES`` — with arrays or
  ``VALUES`` most of the time goes into escaping and parsing the parameters, not the insert.
  A re-sent event is skipped by the unique constraint, within a batch and across batches, also
  when two uploads race (the second waits on the first's uncommitted key and then skips it).
  Rows go in in ``decision_id`` order and roll-up buckets in (hour, outcome) order, so
  concurrent batches take their row locks in the same order and cannot deadlock.
* No audit event per batch: decision logs are gateway telemetry, not a change anybody made, and
  appending to the tenant's hash chain would serialise every upload on the chain's row lock. The
  retention purge, which does destroy records, is audited (one event per tenant and run).

The SQL below is assembled from model metadata and constants only, never from input (hence the
S608 exemption); every value travels as a bound parameter or through COPY.
"""

# ruff: noqa: S608

from __future__ import annotations

import json
import logging
import re
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from decision_logs.models import DecisionLog, DecisionRollup
from governance.audit.services import Actor, audit_record
from governance.tenancy.models import Tenant

logger = logging.getLogger(__name__)

OUTCOMES = ("allow", "deny", "escalate")
MAX_BIGINT = 2**63 - 1
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_DIGITS = re.compile(r"[0-9]{1,19}\Z")
# Longest value per column (the model's max_length); ``reason`` is cut, the others refused.
_LIMITS = {"decision_id": 100, "agent": 200, "principal": 500, "server": 200, "tool": 200,
           "call_id": 200, "on_behalf_of": 500}
MAX_GROUPS, GROUP_MAX = 1000, 200
REASON_MAX = 1000


class BatchInvalid(ValidationError):
    """The batch is refused as a whole: ``message`` names the event and the field."""


class DecisionEvent(NamedTuple):
    """One validated event, in the column order of the insert."""

    decision_id: str
    timestamp: datetime  # UTC
    bundle_revision: int | None
    agent: str
    principal: str
    server: str
    tool: str
    call_id: str
    arguments_sha256: str
    arguments: str | None  # JSON text
    outcome: str
    reason: str
    grant_id: int | None
    escalation_id: uuid.UUID | None
    labels: str  # JSON text
    on_behalf_of: str  # the person a delegated call was made for ("" for none)
    on_behalf_of_groups: str  # JSON text: their groups as the token listed them


@dataclass(frozen=True)
class IngestResult:
    """What one upload did: rows stored now, and events already stored (or repeated)."""

    accepted: int
    duplicates: int

    def as_dict(self) -> dict[str, int]:
        return {"accepted": self.accepted, "duplicates": self.duplicates}


# --- Validation (pure) ---------------------------------------------------------------------------

class _Bad(Exception):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(field, problem)
        self.field, self.problem = field, problem


def _json_text(value: Any, field: str) -> str:
    try:
        text = orjson.dumps(value)
    except TypeError:  # an integer beyond 64 bits: the standard library writes it
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode()
    if b"\\u0000" in text:
        # PostgreSQL's jsonb cannot hold NUL; better refused here than a 5xx retried forever.
        raise _Bad(field, "must not contain NUL (\\u0000) characters")
    return text.decode()


def _string(container: dict, key: str, path: str, *, required: bool) -> str:
    value = container.get(key)
    if value is None:
        if required:
            raise _Bad(path, "required")
        return ""
    if type(value) is not str:
        raise _Bad(path, "must be a string")
    if required and not value:
        raise _Bad(path, "must not be empty")
    limit = _LIMITS.get(key)
    if limit is not None and len(value) > limit:
        raise _Bad(path, f"must be at most {limit} characters")
    if "\x00" in value:
        raise _Bad(path, "must not contain NUL characters")
    return value


def _timestamp(value: Any) -> datetime:
    if value is None:
        raise _Bad("timestamp", "required")
    if type(value) is not str or not _RFC3339.match(value):
        raise _Bad("timestamp", "must be an RFC 3339 date-time with a time zone, e.g. "
                                "2026-01-31T12:00:00.123Z")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _Bad("timestamp", "is not a valid date and time") from None
    return parsed.astimezone(UTC)


def _bundle_revision(bundles: Any) -> int | None:
    """The Tollgate bundle's revision number: the first bundle whose ``revision`` is a decimal
    number (other OPA bundles, with opaque revisions, are ignored)."""
    if bundles is None:
        return None
    if type(bundles) is not dict:
        raise _Bad("bundles", "must be an object keyed by bundle name")
    found = None
    for name, entry in bundles.items():
        if type(entry) is not dict:
            raise _Bad(f"bundles.{name}", "must be an object")
        revision = entry.get("revision")
        if revision is None:
            continue
        if type(revision) is not str:
            raise _Bad(f"bundles.{name}.revision", "must be a string")
        if found is None and _DIGITS.match(revision):
            number = int(revision)
            if number > MAX_BIGINT:
                raise _Bad(f"bundles.{name}.revision", "is out of range")
            found = number
    return found


def _principal(value: Any) -> str:
    if value is None:
        return ""
    if type(value) is str:
        principal = value
    elif type(value) is dict:
        issuer, subject = value.get("issuer"), value.get("subject")
        if type(issuer) is not str or type(subject) is not str:
            raise _Bad("input.principal", "must be a string or an object with string issuer "
                                          "and subject")
        principal = f"{subject} ({issuer})"
    else:
        raise _Bad("input.principal", "must be a string or an object {issuer, subject}")
    if len(principal) > _LIMITS["principal"]:
        raise _Bad("input.principal", f"must be at most {_LIMITS['principal']} characters")
    if "\x00" in principal:
        raise _Bad("input.principal", "must not contain NUL characters")
    return principal


def _on_behalf_of(value: Any) -> tuple[str, str]:
    """``input.on_behalf_of`` ({subject, groups?}) → (subject, groups as JSON text)."""
    if value is None:
        return "", "[]"
    path = "input.on_behalf_of"
    if type(value) is not dict:
        raise _Bad(path, "must be an object {subject, groups}")
    subject = value.get("subject")
    if type(subject) is not str or not subject:
        raise _Bad(f"{path}.subject", "must be a non-empty string")
    if len(subject) > _LIMITS["on_behalf_of"] or "\x00" in subject:
        raise _Bad(f"{path}.subject", f"must be at most {_LIMITS['on_behalf_of']} characters, "
                                      f"without NUL")
    groups = value.get("groups", [])
    if type(groups) is not list or len(groups) > MAX_GROUPS or any(
            type(g) is not str or len(g) > GROUP_MAX or "\x00" in g for g in groups):
        raise _Bad(f"{path}.groups", f"must be a list of at most {MAX_GROUPS} strings of at "
                                     f"most {GROUP_MAX} characters")
    return subject, _json_text(sorted(set(groups)), f"{path}.groups")


def _call_id(value: Any) -> str:
    if value is None:
        return ""
    if type(value) is int:  # a JSON-RPC id may be a number
        return str(value)
    if type(value) is not str:
        raise _Bad("input.call_id", "must be a string or an integer")
    if len(value) > _LIMITS["call_id"]:
        raise _Bad("input.call_id", f"must be at most {_LIMITS['call_id']} characters")
    if "\x00" in value:
        raise _Bad("input.call_id", "must not contain NUL characters")
    return value


def _grant(value: Any) -> int | None:
    if value is None:
        return None
    if type(value) is int:
        number = value
    elif type(value) is str and _DIGITS.match(value):
        number = int(value)
    else:
        raise _Bad("result.grant", "must be a grant id (a positive integer, or one as a string)")
    if number < 1 or number > MAX_BIGINT:
        raise _Bad("result.grant", "must be a grant id (a positive integer, or one as a string)")
    return number


def _escalation(value: Any) -> uuid.UUID | None:
    if value is None:
        return None
    if type(value) is not str:
        raise _Bad("result.escalation_id", "must be a UUID string")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise _Bad("result.escalation_id", "must be a UUID string") from None


def _event(raw: Any) -> DecisionEvent:
    if type(raw) is not dict:
        raise _Bad("event", "must be an object")
    decision_id = _string(raw, "decision_id", "decision_id", required=True)
    timestamp = _timestamp(raw.get("timestamp"))
    labels = raw.get("labels")
    if labels is None:
        labels = {}
    elif type(labels) is not dict:
        raise _Bad("labels", "must be an object")
    revision = _bundle_revision(raw.get("bundles"))
    call = raw.get("input")
    if call is None:
        raise _Bad("input", "required")
    if type(call) is not dict:
        raise _Bad("input", "must be an object")
    server = _string(call, "server", "input.server", required=True)
    tool = _string(call, "tool", "input.tool", required=True)
    agent = _string(call, "agent", "input.agent", required=False)
    sha = call.get("arguments_sha256")
    if sha is None:
        raise _Bad("input.arguments_sha256", "required")
    if type(sha) is not str or not _SHA256.match(sha):
        raise _Bad("input.arguments_sha256", "must be 64 lowercase hexadecimal characters")
    arguments = call.get("arguments")
    if arguments is not None:
        if type(arguments) is not dict:
            raise _Bad("input.arguments", "must be an object")
        arguments = _json_text(arguments, "input.arguments")
    result = raw.get("result")
    if result is None:
        raise _Bad("result", "required")
    if type(result) is not dict:
        raise _Bad("result", "must be an object")
    outcome = result.get("outcome")
    if outcome is None:
        raise _Bad("result.outcome", "required")
    if outcome not in OUTCOMES or type(outcome) is not str:
        raise _Bad("result.outcome", "must be one of allow, deny, escalate")
    reason = result.get("reason")
    if reason is None:
        reason = ""
    elif type(reason) is not str:
        raise _Bad("result.reason", "must be a string")
    elif "\x00" in reason:
        raise _Bad("result.reason", "must not contain NUL characters")
    if len(reason) > REASON_MAX:
        reason = reason[:REASON_MAX - 1] + "…"
    return DecisionEvent(
        decision_id, timestamp, revision, agent, _principal(call.get("principal")), server,
        tool, _call_id(call.get("call_id")), sha, arguments, outcome, reason,
        _grant(result.get("grant")), _escalation(result.get("escalation_id")),
        _json_text(labels, "labels"), *_on_behalf_of(call.get("on_behalf_of")),
    )


def validate_events(events: Any) -> list[DecisionEvent]:
    """Every event of a decoded upload as a row, or ``BatchInvalid`` for the first bad one
    (``event 17 (decision_id d-17): input.tool: required``; events count from 0). Pure: no
    database, no clock."""
    if type(events) is not list:
        raise BatchInvalid("The body must be a JSON array of decision-log events.",
                           code="invalid")
    rows = []
    append = rows.append
    for index, raw in enumerate(events):
        try:
            append(_event(raw))
        except _Bad as bad:
            ident = raw.get("decision_id") if type(raw) is dict else None
            named = f" (decision_id {ident[:100]})" if type(ident) is str and ident else ""
            where = "" if bad.field == "event" else f"{bad.field}: "
            raise BatchInvalid(f"event {index}{named}: {where}{bad.problem}",
                               code="invalid") from None
    return rows


# --- Ingestion -----------------------------------------------------------------------------------

_LOG = DecisionLog._meta.db_table
_ROLLUP = DecisionRollup._meta.db_table
_COLUMNS = ("tenant_id", "gateway_id", "received_at") + DecisionEvent._fields
_ROW_COLUMNS = len(DecisionEvent._fields)
# PostgreSQL, the other two ways (kept for bench/ingest.py's comparison): one array per column
# unnested into rows, or multi-row VALUES.
_PG_TYPES = ("varchar", "timestamptz", "bigint", "varchar", "varchar", "varchar", "varchar",
             "varchar", "varchar", "text", "varchar", "varchar", "bigint", "uuid", "text",
             "varchar", "text")
_PG_CASTS = {"arguments": "::jsonb", "labels": "::jsonb", "on_behalf_of_groups": "::jsonb"}


def _quoted(names) -> str:
    return ", ".join(connection.ops.quote_name(n) for n in names)


def _insert_unnest_sql() -> str:
    aliases = [f"c{i}" for i in range(_ROW_COLUMNS)]
    select = ", ".join(f"{a}{_PG_CASTS.get(f, '')}" for a, f in zip(aliases, DecisionEvent._fields,
                                                                    strict=True))
    arrays = ", ".join(f"%s::{t}[]" for t in _PG_TYPES)
    return (f"INSERT INTO {connection.ops.quote_name(_LOG)} ({_quoted(_COLUMNS)}) "
            f"SELECT %s, %s, %s, {select} FROM unnest({arrays}) AS u({', '.join(aliases)}) "
            f"ON CONFLICT (tenant_id, decision_id) DO NOTHING RETURNING decision_id")


_STAGE = "decisions_stage"


def _stage_sql() -> str:
    # ON COMMIT DELETE ROWS and IF NOT EXISTS: a persistent (or pooled) connection reuses the
    # table, always empty at the start of a transaction.
    columns = ", ".join(
        f"{connection.ops.quote_name(f)} {'jsonb' if f in _PG_CASTS else t}"
        for f, t in zip(DecisionEvent._fields, _PG_TYPES, strict=True))
    return f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} ({columns}) ON COMMIT DELETE ROWS"


def _insert_copy(cursor, tenant_id: int, gateway_id: int | None, received_at: datetime,
                 rows: list[DecisionEvent], nested: bool) -> list[str]:
    cursor.execute(_stage_sql())
    with cursor.copy(f"COPY {_STAGE} FROM STDIN") as copy:
        write = copy.write_row
        for row in rows:
            write(row)
    names = _quoted(DecisionEvent._fields)
    cursor.execute(
        f"INSERT INTO {connection.ops.quote_name(_LOG)} ({_quoted(_COLUMNS)}) "
        f"SELECT %s, %s, %s, {names} FROM {_STAGE} "
        f"ON CONFLICT (tenant_id, decision_id) DO NOTHING RETURNING decision_id",
        [tenant_id, gateway_id, received_at])
    inserted = [r[0] for r in cursor.fetchall()]
    if nested:  # inside a caller's transaction the rows stay until it commits: clear them
        cursor.execute(f"DELETE FROM {_STAGE}")
    return inserted


def _insert_values_sql(rows: int) -> str:
    one = "(" + ", ".join(
        ["%s"] * 3 + [f"%s{_PG_CASTS.get(f, '') if connection.vendor == 'postgresql' else ''}"
                      for f in DecisionEvent._fields]) + ")"
    return (f"INSERT INTO {connection.ops.quote_name(_LOG)} ({_quoted(_COLUMNS)}) VALUES "
            + ", ".join([one] * rows)
            + " ON CONFLICT (tenant_id, decision_id) DO NOTHING RETURNING decision_id")


def _chunks(rows: list, size: int):
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def _insert_rows(cursor, tenant_id: int, gateway_id: int | None, received_at: datetime,
                 rows: list[DecisionEvent], method: str, nested: bool) -> list[str]:
    """Insert ``rows`` (distinct decision ids), skipping those already stored; the decision ids
    really inserted."""
    inserted: list[str] = []
    if method == "copy":
        return _insert_copy(cursor, tenant_id, gateway_id, received_at, rows, nested)
    if method == "unnest":
        sql = _insert_unnest_sql()
        for chunk in _chunks(rows, settings.DECISION_LOG_INSERT_ROWS):
            cursor.execute(sql, [tenant_id, gateway_id, received_at, *map(list, zip(*chunk,
                                                                                  strict=True))])
            inserted.extend(r[0] for r in cursor.fetchall())
        return inserted
    ops = connection.ops
    sqlite = connection.vendor == "sqlite"
    received = ops.adapt_datetimefield_value(received_at) if sqlite else received_at
    # SQLite binds at most 32,766 parameters per statement.
    size = min(settings.DECISION_LOG_INSERT_ROWS, 32_766 // len(_COLUMNS)) if sqlite else \
        settings.DECISION_LOG_INSERT_ROWS
    for chunk in _chunks(rows, size):
        params: list[Any] = []
        extend = params.extend
        for row in chunk:
            if sqlite:
                row = row._replace(timestamp=ops.adapt_datetimefield_value(row.timestamp),
                                   escalation_id=row.escalation_id.hex if row.escalation_id
                                   else None)
            extend((tenant_id, gateway_id, received))
            extend(row)
        cursor.execute(_insert_values_sql(len(chunk)), params)
        inserted.extend(r[0] for r in cursor.fetchall())
    return inserted


def _add_to_rollup(cursor, tenant_id: int, buckets: Counter) -> None:
    """Add the inserted rows' counts to their (hour, outcome) buckets, in bucket order."""
    if not buckets:
        return
    sqlite = connection.vendor == "sqlite"
    params: list[Any] = []
    for (hour, outcome), count in sorted(buckets.items()):
        params.extend((tenant_id, connection.ops.adapt_datetimefield_value(hour) if sqlite
                       else hour, outcome, count))
    table = connection.ops.quote_name(_ROLLUP)
    cursor.execute(
        f"INSERT INTO {table} (tenant_id, hour, outcome, count) VALUES "
        + ", ".join(["(%s, %s, %s, %s)"] * len(buckets))
        + f" ON CONFLICT (tenant_id, hour, outcome) DO UPDATE SET count = {table}.count + "
          "excluded.count", params)


def decisions_store(*, tenant_id: int, gateway_id: int | None, events: list[DecisionEvent],
                    method: str | None = None) -> IngestResult:
    """Store validated events in one transaction (the log rows, then their roll-up); an event
    whose decision id the tenant already has, or that repeats one of the batch, is skipped."""
    unique: dict[str, DecisionEvent] = {}
    for event in events:
        unique.setdefault(event.decision_id, event)  # the first of a repeated id wins
    rows = sorted(unique.values())  # decision_id order: concurrent batches lock alike
    if method is None:
        method = "copy" if connection.vendor == "postgresql" else "values"
    received_at = timezone.now()
    nested = connection.in_atomic_block
    with transaction.atomic(), connection.cursor() as cursor:
        inserted = _insert_rows(cursor, tenant_id, gateway_id, received_at, rows, method,
                                nested)
        buckets: Counter = Counter()
        for decision_id in inserted:
            row = unique[decision_id]
            buckets[(row.timestamp.replace(minute=0, second=0, microsecond=0), row.outcome)] += 1
        _add_to_rollup(cursor, tenant_id, buckets)
    return IngestResult(accepted=len(inserted), duplicates=len(events) - len(inserted))


def decisions_ingest(*, tenant_id: int, gateway_id: int | None, events: Any) -> IngestResult:
    """Validate a decoded upload (a list of OPA decision-log events) and store it; raises
    ``BatchInvalid`` (nothing stored) for a malformed event."""
    return decisions_store(tenant_id=tenant_id, gateway_id=gateway_id,
                           events=validate_events(events))


# --- Retention -----------------------------------------------------------------------------------

PURGE_ACTOR = Actor.system("decision-log retention")


def _purge_tenant(tenant: Tenant, cutoff: datetime, chunk: int) -> tuple[int, int]:
    table = connection.ops.quote_name(_LOG)
    sqlite = connection.vendor == "sqlite"
    bound = connection.ops.adapt_datetimefield_value(cutoff) if sqlite else cutoff
    deleted = 0
    with connection.cursor() as cursor:
        while True:
            # Chunks keep each statement short; the (tenant, -timestamp) index finds them.
            cursor.execute(
                f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE tenant_id = %s "
                f"AND {connection.ops.quote_name('timestamp')} < %s LIMIT %s)",
                [tenant.pk, bound, chunk])
            deleted += cursor.rowcount
            if cursor.rowcount < chunk:
                break
    # A roll-up hour is dropped once all of it is past the cutoff.
    rollups, _ = DecisionRollup.objects.filter(
        tenant=tenant, hour__lte=cutoff - timedelta(hours=1)).delete()
    return deleted, rollups


def decisions_purge_expired(*, now: datetime | None = None) -> dict[str, int]:
    """Delete each tenant's decisions older than its ``decision_log_retention_days`` (and the
    roll-up hours wholly before that), recording one ``decisions.purged`` audit event per tenant
    that lost rows, in the same transaction as its deletions; {tenant slug: rows deleted}."""
    now = now or timezone.now()
    chunk = settings.DECISION_LOG_PURGE_CHUNK
    purged: dict[str, int] = {}
    for tenant in Tenant.objects.order_by("pk"):
        cutoff = now - timedelta(days=tenant.decision_log_retention_days)
        with transaction.atomic():
            deleted, rollups = _purge_tenant(tenant, cutoff, chunk)
            if deleted:
                audit_record(
                    tenant=tenant, actor=PURGE_ACTOR, action="decisions.purged",
                    object_type="decisions.decisionlog", object_id="",
                    object_repr=f"{deleted} decision log(s) before {cutoff:%Y-%m-%d %H:%M} UTC",
                    after={"deleted": deleted, "cutoff": cutoff.isoformat(),
                           "retention_days": tenant.decision_log_retention_days,
                           "rollup_rows_deleted": rollups})
        if deleted:
            purged[tenant.slug] = deleted
            logger.info("decision logs purged", extra={"tenant": tenant.slug,
                                                       "deleted": deleted})
    return purged
