"""The publish pipeline: registry change → (debounced) build → sign → store → record → announce.

* **Trigger.** Every audited registry change (``server.*``, ``tool.*``, ``scope.*``, ``agent.*``,
  ``grant.*``, the tenant's settings) schedules a build *after its transaction commits*. The
  first change of a burst enqueues one Celery task ``BUNDLE_DEBOUNCE_MS`` ahead and marks the
  tenant "scheduled" in the cache; later changes of the burst find the mark and add nothing. The
  task clears the mark before it builds, so a change made during a build schedules the next one.
* **Durability.** A lost task or a lost mark (Redis restarted, broker down) cannot lose a change:
  each bundle records the audit sequence number it reflects (``through_seq``), and the beat sweep
  builds any tenant with a bundle-affecting audit event past it. The same sweep re-issues bundles
  before 40 % of their lifetime has passed and rebuilds when a grant inside one expires.
* **One builder at a time per tenant.** The build runs in one transaction holding the tenant's
  ``PublishState`` row lock, so revision numbers are allocated strictly increasingly and a later
  build always compiles a later state. Registry edits never wait for a build: they do not touch
  that row.
* **Atomic publication.** Compile, sign and package happen before anything is written; the
  tarball (content-addressed by SHA-256), the ``Bundle`` row, the new current pointer and the
  ``bundle.published`` audit event commit together. Only after commit is the bundle announced
  (hot store pointer + Redis pub/sub). A crash or error anywhere before commit leaves the previous
  bundle current and served, and the task is retried.
* **Nothing changed.** If the compiled content equals the current bundle's, no revision is made
  (unless it is due for re-issue, or the signing key changed).
* **A number never names two bundles.** After a restore from an older backup, gateways may hold
  revisions this database never issued. Their status reports raise ``last_revision`` to what
  they hold and mark it in ``conflict_revision`` (``services.gateway_record_status``); while the
  current bundle is not above that mark a build is due and publishes even if nothing changed.
"""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from bundles import cedar, extensions, hot, keys, packaging
from bundles.models import Bundle, BundleBlob, PublishState
from bundles.selectors import (  # noqa: F401 - publish.bundle_action_q is used elsewhere
    BUNDLE_ACTION_PREFIXES,
    NON_BUNDLE_ACTIONS,
    affects_bundle,
    bundle_action_q,
)
from bundles.signing import signing_key_for_build
from governance.audit.models import AuditChain, AuditEvent
from governance.audit.services import Actor, add_listener, audit_record
from governance.tasking import enqueue
from governance.tenancy.models import Tenant

log = logging.getLogger(__name__)

# Re-issue once this share of a bundle's lifetime has passed (DESIGN.md: before half).
REISSUE_FRACTION = 0.4


# --- Scheduling -------------------------------------------------------------------------------

def _scheduled_key(tenant_id: int) -> str:
    return f"bundles:scheduled:{tenant_id}"


def schedule_build(tenant_id: int, trigger: str = "registry change") -> None:
    """Enqueue one build ``BUNDLE_DEBOUNCE_MS`` ahead unless one is already scheduled."""
    delay = settings.BUNDLE_DEBOUNCE_MS / 1000
    try:
        # The mark outlives a lost task by at most a minute; the sweep covers that minute.
        if not cache.add(_scheduled_key(tenant_id), "1", timeout=60):
            return
    except Exception:  # cache down: schedule anyway; duplicate builds find nothing changed
        log.warning("bundle build: debounce mark unavailable", exc_info=True)
    # Broker down: logged by enqueue; the beat sweep builds from the audit trail later, and the
    # mark goes so that the next edit tries again.
    args = (tenant_id,) if trigger == "registry change" else (tenant_id, trigger)
    enqueue("bundles.tasks.build_bundle", *args, countdown=delay,
            on_failure=lambda: clear_schedule(tenant_id))


def clear_schedule(tenant_id: int) -> None:
    try:
        cache.delete(_scheduled_key(tenant_id))
    except Exception:
        log.warning("bundle build: could not clear the debounce mark", exc_info=True)


def schedule_build_on_commit(tenant_id: int, trigger: str = "registry change") -> None:
    transaction.on_commit(lambda: schedule_build(tenant_id, trigger))


def _on_audit_event(event: AuditEvent) -> None:
    if event.tenant_id is not None and affects_bundle(event.action):
        schedule_build_on_commit(event.tenant_id)


def connect() -> None:
    add_listener(_on_audit_event)


# --- Building ---------------------------------------------------------------------------------

def bundle_files(data: dict[str, Any]) -> dict[str, bytes]:
    """The content files of a bundle (everything but .manifest and .signatures.json)."""
    return {
        "mcp/data.json": packaging.bundle_json(data),
        "mcp/policy.cedar": cedar.compile_policy(data).encode("utf-8"),
        "mcp/schema.cedarschema": cedar.compile_schema(data).encode("utf-8"),
    }


def content_digest(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return digest.hexdigest()


def _next_change(data: dict[str, Any]) -> datetime | None:
    times = [datetime.fromisoformat(g["expires_at"].replace("Z", "+00:00"))
             for g in data["grants"] if g["expires_at"]]
    return min(times) if times else None


def _summary(data: dict[str, Any]) -> dict[str, int]:
    return {name: len(data[name]) for name in ("agents", "servers", "tools", "scopes", "grants")}


def reissue_due(bundle: Bundle, now: datetime) -> bool:
    lifetime = (bundle.expires_at - bundle.created_at).total_seconds()
    return now >= bundle.created_at + timedelta(seconds=lifetime * REISSUE_FRACTION)


def _chain_seq(tenant: Tenant) -> int:
    return AuditChain.objects.filter(tenant=tenant).values_list("last_seq", flat=True).first() or 0


def bundle_publish(*, tenant: Tenant, trigger: str, actor: Actor | None = None,
                   force: bool = False, now: datetime | None = None) -> Bundle | None:
    """Build, sign, store and record the tenant's next bundle; None when nothing changed."""
    PublishState.objects.get_or_create(tenant=tenant)
    started = time.perf_counter()
    with transaction.atomic():
        state = PublishState.objects.select_for_update(of=("self",)).select_related(
            "current").get(pk=tenant.pk)
        now = now or timezone.now()
        through_seq = _chain_seq(tenant)
        data = extensions.compile_data(tenant, at=now)
        files = bundle_files(data)
        digest = content_digest(files)
        key = signing_key_for_build(tenant=tenant)
        current = state.current
        # A gateway holds a revision at or above the current one that is not ours (a restore):
        # a new revision is due even when nothing changed here.
        if (not force and not state.conflict_pending and current is not None
                and current.content_sha256 == digest
                and current.key_id == key.pk and not reissue_due(current, now)):
            if through_seq > current.through_seq:  # bookkeeping: the sweep need not look again
                Bundle.objects.filter(pk=current.pk).update(through_seq=through_seq)
            return None
        revision = state.last_revision + 1
        expires_at = now + timedelta(seconds=settings.BUNDLE_TTL_SECONDS)
        tarball = packaging.package(
            files, scope=tenant.slug, revision_number=revision, issued_at=now,
            expires_at=expires_at, issuer=settings.TOLLGATE_BASE_URL, kid=key.kid,
            private_key=keys.load_private(key.private_key_encrypted),
            schema_version=data["schema_version"],
        )
        sha = hashlib.sha256(tarball).hexdigest()
        blob, _ = BundleBlob.objects.get_or_create(
            sha256=sha, defaults={"content": tarball, "size": len(tarball), "created_at": now})
        bundle = Bundle.objects.create(
            tenant=tenant, revision_number=revision, blob=blob, size=len(tarball),
            created_at=now, expires_at=expires_at, key=key, content_sha256=digest,
            through_seq=through_seq, next_change_at=_next_change(data), trigger=trigger,
            summary=_summary(data), build_ms=int((time.perf_counter() - started) * 1000),
        )
        state.last_revision = revision
        state.current = bundle
        state.last_error = ""
        state.last_error_at = None
        state.save()
        audit_record(
            tenant=tenant, actor=actor or Actor.system("bundle publisher"),
            action="bundle.published", obj=bundle,
            after={"revision_number": revision, "sha256": sha, "size": len(tarball),
                   "kid": key.kid, "trigger": trigger, "expires_at": expires_at.isoformat()},
        )
        pointer = pointer_of(bundle, tenant.slug)
        transaction.on_commit(lambda: announce(pointer))
    return bundle


def bundle_publish_failed(*, tenant: Tenant, error: str) -> None:
    """Record a failed build where the history page shows it (the previous bundle stays)."""
    PublishState.objects.get_or_create(tenant=tenant)
    PublishState.objects.filter(pk=tenant.pk).update(last_error=error[:2000],
                                                    last_error_at=timezone.now())


# --- Announcing -------------------------------------------------------------------------------

def pointer_of(bundle: Bundle, slug: str) -> dict[str, Any]:
    """What the hot path needs to answer a poll without SQL."""
    return {"tenant": slug, "revision": bundle.revision_number, "sha256": bundle.blob_id,
            "size": bundle.size, "expires_at": int(bundle.expires_at.timestamp())}


def announce(pointer: dict[str, Any]) -> None:
    hot.safely("pointer", hot.set_json, hot.current_key(pointer["tenant"]), pointer)
    hot.safely("announce", hot.publish, {**pointer, "kind": "bundle"})


def current_pointer(slug: str) -> dict[str, Any] | None:
    """The current bundle of a tenant from the database (the hot path's fallback)."""
    row = (PublishState.objects.filter(tenant__slug=slug, current__isnull=False)
           .values("current__revision_number", "current__blob_id", "current__size",
                   "current__expires_at").first())
    if row is None:
        return None
    return {"tenant": slug, "revision": row["current__revision_number"],
            "sha256": row["current__blob_id"], "size": row["current__size"],
            "expires_at": int(row["current__expires_at"].timestamp())}


def refresh_hot_store() -> int:
    """Re-assert what the hot path serves from the database (beat), so an announcement or an
    invalidation lost to a Redis outage is repaired within one sweep: every tenant's current
    pointer and JWKS, and recently revoked or disabled tokens. Returns pointers corrected."""
    from bundles import selectors
    from bundles.models import Gateway, GatewayToken

    corrected = 0
    for state in PublishState.objects.filter(current__isnull=False).select_related(
            "current", "tenant"):
        pointer = pointer_of(state.current, state.tenant.slug)
        if hot.get_json(hot.current_key(state.tenant.slug)) != pointer:
            announce(pointer)
            corrected += 1
        hot.set_json(hot.jwks_key(state.tenant.slug), selectors.jwks(state.tenant_id), 3600)
    since = timezone.now() - timedelta(seconds=hot.TOKEN_TTL * 2)
    refused = GatewayToken.objects.filter(
        Q(revoked_at__gte=since) | Q(gateway__status=Gateway.Status.DISABLED))
    for token_hash in refused.values_list("token_hash", flat=True):
        hot.set_json(hot.token_key(token_hash), hot.REVOKED, hot.TOKEN_TTL)
    return corrected


# --- The sweep (beat) -------------------------------------------------------------------------

def tenants_due(now: datetime) -> list[tuple[Tenant, str]]:
    """Tenants whose bundle should be (re)built now, and why."""
    due = []
    states = {s.tenant_id: s for s in PublishState.objects.select_related("current")}
    seqs = dict(AuditChain.objects.filter(tenant__isnull=False).values_list("tenant_id",
                                                                            "last_seq"))
    for tenant in Tenant.objects.all():
        state = states.get(tenant.pk)
        current = state.current if state else None
        if current is None:
            due.append((tenant, "first bundle"))
        elif state.conflict_pending:
            due.append((tenant, "revision conflict"))
        elif reissue_due(current, now):
            due.append((tenant, "re-issue"))
        elif current.next_change_at is not None and current.next_change_at <= now:
            due.append((tenant, "grant expired"))
        elif seqs.get(tenant.pk, 0) > current.through_seq and AuditEvent.objects.filter(
                tenant=tenant, seq__gt=current.through_seq).filter(bundle_action_q()).exists():
            due.append((tenant, "registry change"))
    return due
