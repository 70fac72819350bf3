"""Writing and verifying the audit chain.

Every service in Tollgate calls ``audit_record`` inside its own transaction, so a change and its
audit event commit together or not at all. Never call it from a signal.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from gateway.canonical import canonical_json
from governance import context
from governance.audit.models import GENESIS_HASH, AuditChain, AuditEvent
from governance.tenancy.models import Tenant


@dataclass(frozen=True)
class Actor:
    """Who performed an action, as recorded in the audit trail."""

    type: str
    id: str = ""
    label: str = ""

    @classmethod
    def user(cls, user) -> Actor:
        return cls(AuditEvent.ActorType.USER, str(user.pk), user.get_username())

    @classmethod
    def system(cls, label: str = "system") -> Actor:
        return cls(AuditEvent.ActorType.SYSTEM, "", label)

    @classmethod
    def anonymous(cls, label: str = "") -> Actor:
        return cls(AuditEvent.ActorType.ANONYMOUS, "", label)


def to_json(value: Any) -> Any:
    """Plain JSON types only, so the stored value hashes the same after a database round trip."""
    if value is None:
        return None
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_document(event: AuditEvent, chain_key: str) -> dict[str, Any]:
    """The fields that are hashed: everything an auditor relies on."""
    return {
        "chain": chain_key,
        "seq": event.seq,
        "created_at": _timestamp(event.created_at),
        "actor": {"type": event.actor_type, "id": event.actor_id, "label": event.actor_label},
        "action": event.action,
        "object": {"type": event.object_type, "id": event.object_id, "repr": event.object_repr},
        "before": event.before,
        "after": event.after,
        "request_id": event.request_id,
        "ip": event.ip,
    }


def compute_hash(prev_hash: str, event: AuditEvent, chain_key: str) -> str:
    """hash = sha256(prev_hash || canonical event)."""
    digest = hashlib.sha256(prev_hash.encode("ascii"))
    digest.update(canonical_json(event_document(event, chain_key)))
    return digest.hexdigest()


def _chain_for_update(tenant: Tenant | None) -> AuditChain:
    key = AuditChain.key_for(tenant)
    try:
        return AuditChain.objects.select_for_update().get(key=key)
    except AuditChain.DoesNotExist:
        pass
    try:
        with transaction.atomic():
            AuditChain.objects.create(key=key, tenant=tenant)
    except IntegrityError:
        pass  # created by a concurrent writer; the locked read below waits for it
    return AuditChain.objects.select_for_update().get(key=key)


# Called with every recorded event, inside its transaction (e.g. the bundles app schedules a
# build on commit when a registry change is recorded). Registered once at app start-up.
_listeners: list[Callable[[AuditEvent], None]] = []


def add_listener(listener: Callable[[AuditEvent], None]) -> None:
    if listener not in _listeners:
        _listeners.append(listener)


def audit_record(
    *,
    tenant: Tenant | None,
    actor: Actor,
    action: str,
    obj: models.Model | None = None,
    object_type: str = "",
    object_id: str = "",
    object_repr: str = "",
    before: Any = None,
    after: Any = None,
) -> AuditEvent:
    """Append one event to the tenant's chain (``tenant=None``: the platform chain)."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit_record must run inside the transaction of the change it records")
    if obj is not None:
        object_type = object_type or obj._meta.label_lower
        object_id = object_id or str(obj.pk)
        object_repr = object_repr or str(obj)[:300]
    ctx = context.current()
    chain = _chain_for_update(tenant)
    event = AuditEvent(
        chain=chain,
        tenant=tenant,
        seq=chain.last_seq + 1,
        created_at=timezone.now(),
        actor_type=actor.type,
        actor_id=actor.id,
        actor_label=actor.label[:200],
        action=action,
        object_type=object_type,
        object_id=object_id,
        object_repr=object_repr[:300],
        before=to_json(before),
        after=to_json(after),
        request_id=ctx.request_id if ctx else "",
        ip=ctx.ip if ctx else None,
        prev_hash=chain.last_hash,
    )
    event.hash = compute_hash(chain.last_hash, event, chain.key)
    event.save(force_insert=True)
    AuditChain.objects.filter(pk=chain.pk).update(last_seq=event.seq, last_hash=event.hash)
    for listener in _listeners:
        listener(event)
    return event


@dataclass(frozen=True)
class ChainReport:
    """Result of verifying one chain: ``ok`` or the first broken event and why."""

    chain: str
    events: int
    ok: bool
    problem: str = ""
    event_id: int | None = None
    seq: int | None = None

    def line(self) -> str:
        if self.ok:
            return f"{self.chain}: OK ({self.events} events)"
        where = f"event #{self.seq} (id {self.event_id})" if self.seq is not None else "chain head"
        return f"{self.chain}: BROKEN at {where}: {self.problem}"


def _label(chain: AuditChain) -> str:
    return f"tenant {chain.tenant.slug}" if chain.tenant_id else "platform"


def audit_verify_chain(chain: AuditChain) -> ChainReport:
    """Recompute the chain in order; report the first edited, deleted or reordered event."""
    label = _label(chain)
    expected_prev = GENESIS_HASH
    expected_seq = 1
    count = 0
    rows = AuditEvent.objects.filter(chain=chain).order_by("seq").iterator(chunk_size=2000)
    for event in rows:
        count += 1
        problem = ""
        if event.seq > expected_seq:
            last_missing = f"–#{event.seq - 1}" if event.seq - 1 > expected_seq else ""
            problem = f"event #{expected_seq}{last_missing} is missing (deleted)"
        elif event.seq < expected_seq:
            problem = "sequence number out of order (reordered or duplicated)"
        elif event.prev_hash != expected_prev:
            problem = ("previous-hash link does not match (an earlier event was removed or "
                       "events were reordered)")
        elif compute_hash(event.prev_hash, event, chain.key) != event.hash:
            problem = "content does not match its hash (the row was edited)"
        if problem:
            return ChainReport(label, count, False, problem, event.pk, event.seq)
        expected_prev = event.hash
        expected_seq += 1
    if chain.last_seq != expected_seq - 1 or chain.last_hash != expected_prev:
        return ChainReport(
            label,
            count,
            False,
            f"head says {chain.last_seq} events but {expected_seq - 1} are present "
            "(the newest events were deleted)",
        )
    return ChainReport(label, count, True)


def audit_verify(*, tenant: Tenant | None = None, platform: bool = True) -> Iterator[ChainReport]:
    """Verify one tenant's chain, or every chain (tenants and platform)."""
    chains = AuditChain.objects.select_related("tenant").order_by("key")
    if tenant is not None:
        chains = chains.filter(tenant=tenant)
    elif not platform:
        chains = chains.exclude(key=AuditChain.PLATFORM_KEY)
    for chain in chains:
        yield audit_verify_chain(chain)
