"""Every write of the bundles app: gateways, gateway tokens, signing keys, status reports.

Keyword-only, atomic, audited in the same transaction. Writes that change what the gateway
API's hot path answers (tokens, gateway status, keys) refresh the hot store after commit.
Publishing bundles is in ``publish.py``.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from bundles import hot, keys, publish, selectors
from bundles.models import Gateway, GatewayToken, PublishState, SigningKey, bundle_entry
from bundles.signing import _jwks_changed, _new_key
from bundles.signing import signing_key_for_build as signing_key_for_build  # public here too
from governance import alerting
from governance.audit.models import AuditEvent
from governance.audit.services import Actor, audit_record
from governance.tenancy.models import Tenant, hash_token

TOKEN_PREFIX = "tgw_"  # noqa: S105 - a public marker that makes leaked tokens greppable
MAX_LABELS = 32


def gateway_actor(gateway: Gateway) -> Actor:
    return Actor(AuditEvent.ActorType.GATEWAY, str(gateway.pk), gateway.name)


def _clean_labels(labels: Any) -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise ValidationError({"labels": "Labels are an object of text keys and text values."})
    if len(labels) > MAX_LABELS:
        raise ValidationError({"labels": f"At most {MAX_LABELS} labels."})
    clean: dict[str, str] = {}
    for key, value in labels.items():
        key = key.strip() if isinstance(key, str) else key
        if not isinstance(key, str) or not key or len(key) > 63:
            raise ValidationError({"labels": f"Label name {key!r}: 1–63 characters."})
        if key in clean:
            raise ValidationError({"labels": f"Label {key} is given twice."})
        if not isinstance(value, str) or len(value) > 200:
            raise ValidationError({"labels": f"Label {key}: the value must be text of at most "
                                             "200 characters."})
        clean[key] = value
    return dict(sorted(clean.items()))


def _clean_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "A name is required."})
    if len(name) > 100:
        raise ValidationError({"name": "At most 100 characters."})
    return name


# --- Gateways ---------------------------------------------------------------------------------

@transaction.atomic
def gateway_create(*, tenant: Tenant, actor: Actor, name: str, description: str = "",
                   labels: dict[str, str] | None = None, created_by=None) -> Gateway:
    gateway = Gateway(tenant=tenant, name=_clean_name(name), description=description or "",
                      labels=_clean_labels(labels), created_by=created_by)
    if Gateway.objects.for_tenant(tenant).filter(name=gateway.name).exists():
        raise ValidationError({"name": f"A gateway named {gateway.name} already exists."})
    try:
        with transaction.atomic():
            gateway.save()
    except IntegrityError:
        raise ValidationError({"name": f"A gateway named {gateway.name} already exists."}) from None
    audit_record(tenant=tenant, actor=actor, action="gateway.created", obj=gateway,
                 after=gateway.audit_snapshot())
    return gateway


@transaction.atomic
def gateway_update(*, tenant: Tenant, actor: Actor, gateway: Gateway, name: str | None = None,
                   description: str | None = None, labels: dict[str, str] | None = None) -> Gateway:
    gateway = Gateway.objects.for_tenant(tenant).select_for_update().get(pk=gateway.pk)
    before = gateway.audit_snapshot()
    if name is not None:
        gateway.name = _clean_name(name)
        if Gateway.objects.for_tenant(tenant).filter(name=gateway.name).exclude(
                pk=gateway.pk).exists():
            raise ValidationError({"name": f"A gateway named {gateway.name} already exists."})
    if description is not None:
        gateway.description = description
    if labels is not None:
        gateway.labels = _clean_labels(labels)
    try:
        with transaction.atomic():
            gateway.save(update_fields=["name", "description", "labels"])
    except IntegrityError:
        raise ValidationError({"name": f"A gateway named {gateway.name} already exists."}) from None
    after = gateway.audit_snapshot()
    if after != before:
        audit_record(tenant=tenant, actor=actor, action="gateway.updated", obj=gateway,
                     before=before, after=after)
    return gateway


def _forget_tokens(hashes: list[str], slug: str) -> None:
    """After commit: the hot path refuses these tokens at once and waiting polls re-check."""
    def apply() -> None:
        for token_hash in hashes:
            hot.safely("token revoke", hot.set_json, hot.token_key(token_hash), hot.REVOKED,
                       hot.TOKEN_TTL)
        hot.safely("announce revoke", hot.publish, {"tenant": slug, "kind": "tokens"})
    transaction.on_commit(apply)


@transaction.atomic
def gateway_set_status(*, tenant: Tenant, actor: Actor, gateway: Gateway, status: str) -> Gateway:
    """Disable (every token refused at once) or re-enable a gateway."""
    if status not in Gateway.Status.values:
        raise ValidationError({"status": f"Use one of {', '.join(Gateway.Status.values)}."})
    gateway = Gateway.objects.for_tenant(tenant).select_for_update().get(pk=gateway.pk)
    if gateway.status == status:
        return gateway
    before = gateway.status
    gateway.status = status
    gateway.save(update_fields=["status"])
    verb = "disabled" if status == Gateway.Status.DISABLED else "enabled"
    audit_record(tenant=tenant, actor=actor, action=f"gateway.{verb}", obj=gateway,
                 before={"status": before}, after={"status": status})
    hashes = list(gateway.tokens.values_list("token_hash", flat=True))
    if status == Gateway.Status.DISABLED:
        _forget_tokens(hashes, tenant.slug)
    else:  # the next request looks the tokens up again (revoked ones stay refused)
        transaction.on_commit(lambda: hot.safely(
            "token refresh", hot.delete, *[hot.token_key(h) for h in hashes]))
    return gateway


# --- Gateway tokens ---------------------------------------------------------------------------

@transaction.atomic
def gateway_token_issue(*, tenant: Tenant, actor: Actor, gateway: Gateway, name: str,
                        created_by=None) -> tuple[GatewayToken, str]:
    """A new token for ``gateway``: (the record, the plaintext shown once)."""
    gateway = Gateway.objects.for_tenant(tenant).get(pk=gateway.pk)
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)  # 256 random bits
    token = GatewayToken.objects.create(
        tenant=tenant, gateway=gateway, name=_clean_name(name), token_hash=hash_token(plaintext),
        prefix=plaintext[:12], created_by=created_by,
    )
    audit_record(tenant=tenant, actor=actor, action="gateway.token_issued", obj=token,
                 after=token.audit_snapshot())
    return token, plaintext


@transaction.atomic
def gateway_token_revoke(*, tenant: Tenant, actor: Actor, token: GatewayToken) -> GatewayToken:
    token = GatewayToken.objects.for_tenant(tenant).select_for_update(of=("self",)).select_related(
        "gateway").get(pk=token.pk)
    if token.revoked_at is not None:
        return token
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    audit_record(tenant=tenant, actor=actor, action="gateway.token_revoked", obj=token,
                 after=token.audit_snapshot())
    _forget_tokens([token.token_hash], tenant.slug)
    return token


# --- Status reports ---------------------------------------------------------------------------

def _report_error(bundle: dict[str, Any]) -> str:
    code = bundle.get("code") or ""
    message = bundle.get("message") or ""
    errors = bundle.get("errors") or []
    parts = [p for p in (str(code), str(message)) if p]
    if isinstance(errors, list):
        parts += [str(e.get("message", e)) if isinstance(e, dict) else str(e)
                  for e in errors[:5]]
    return ": ".join(parts[:2]) + ("; " + "; ".join(parts[2:]) if len(parts) > 2 else "")


@transaction.atomic
def gateway_record_status(*, gateway: Gateway, report: dict[str, Any],
                          now: datetime | None = None) -> Gateway:
    """Store an OPA status report. Reports are telemetry, not changes: only a change of the
    running revision or of the error state is written to the audit trail."""
    now = now or timezone.now()
    # of=self: a lock on the joined tenant row would block the deferred tenant FK checks of
    # every concurrent write in the tenant (a deadlock with their audit-chain lock).
    gateway = (Gateway.objects.select_for_update(of=("self",)).select_related("tenant")
               .get(pk=gateway.pk))
    bundle = bundle_entry(report)
    revision = bundle.get("active_revision")
    try:
        revision = int(revision) if revision not in (None, "") else None
    except (TypeError, ValueError):
        revision = None
    error = _report_error(bundle)[:2000]
    before = {"active_revision": gateway.active_revision, "error": gateway.last_error}
    held_before = (gateway.active_revision, gateway.reported_sha256)
    gateway.active_revision = revision if revision is not None else gateway.active_revision
    gateway.last_error = error
    gateway.last_report = report
    gateway.last_status_at = now
    gateway.last_contact_at = now
    gateway.save(update_fields=["active_revision", "last_error", "last_report", "last_status_at",
                                "last_contact_at"])
    after = {"active_revision": gateway.active_revision, "error": gateway.last_error}
    if after != before:
        action = "gateway.bundle_error" if error and error != before["error"] else (
            "gateway.activated_revision")
        audit_record(tenant=gateway.tenant, actor=gateway_actor(gateway), action=action,
                     obj=gateway, before=before, after=after)
    if revision is not None:
        _check_revision(gateway, revision, held_before)
    return gateway


# A gateway can raise the revision counter by at most this much per report: a restore gap is
# far smaller, and a token holder reporting 2^63 − 1 must not exhaust the numbers.
MAX_REVISION_JUMP = 1_000_000_000


def _check_revision(gateway: Gateway, revision: int, held_before: tuple[int | None, str]) -> None:
    """A gateway running a revision this control plane did not issue under that number (its
    database was restored from an older backup): never issue that number again. Raises
    ``last_revision`` to it (never lowers it), records ``bundle.revision_conflict``, raises the
    ``revision_conflict`` alert and builds a bundle above it — once per gateway and revision."""
    sha, codes = gateway.reported_sha256, gateway.reported_codes
    state, _ = PublishState.objects.get_or_create(tenant_id=gateway.tenant_id)
    ours = selectors.revision_hashes(gateway.tenant_id, {revision}).get(revision)
    reason = selectors.conflict_reason(running=revision, sha256=sha, codes=codes,
                                       newest=state.last_revision, ours=ours)
    if not reason or (revision <= state.conflict_revision and held_before == (revision, sha)):
        return  # not a conflict, or this one is known and its build scheduled
    tenant = gateway.tenant
    state = PublishState.objects.select_for_update(of=("self",)).select_related(
        "current").get(pk=tenant.pk)
    # Again under the lock (a build or another report may have moved the counter meanwhile).
    reason = selectors.conflict_reason(running=revision, sha256=sha, codes=codes,
                                       newest=state.last_revision, ours=ours) or reason
    before = {"last_revision": state.last_revision, "conflict_revision": state.conflict_revision}
    state.last_revision = max(state.last_revision,
                              min(revision, state.last_revision + MAX_REVISION_JUMP))
    state.conflict_revision = max(state.conflict_revision, min(revision, state.last_revision))
    state.save(update_fields=["last_revision", "conflict_revision"])
    newest = state.current.revision_number if state.current else None
    audit_record(
        tenant=tenant, actor=gateway_actor(gateway), action="bundle.revision_conflict",
        obj=gateway, before=before,
        after={"last_revision": state.last_revision, "conflict_revision": state.conflict_revision,
               "reason": reason, "gateway": gateway.name, "reported_revision": revision,
               "reported_sha256": sha or None, "our_sha256": ours, "newest_revision": newest})
    row = {"gateway": gateway, "newest": newest, "revision_conflict": reason}
    key, subject, detail = selectors.conflict_alert(row)
    alerting.alert_raise(tenant=tenant, kind="revision_conflict", key=key, subject=subject,
                         detail=detail, actor=Actor.system("bundle publisher"))
    if state.conflict_pending:
        publish.schedule_build_on_commit(tenant.pk, "revision conflict")


def gateway_contacts_flush() -> int:
    """Copy the hot path's contact and token-use times to the database (bookkeeping for the
    fleet page and token lists, not audited): one read and one bulk update per table, only for
    rows that moved forward. Returns how many gateways moved forward."""
    def forward(model, field: str, seen: dict[int, int]) -> int:
        stored = dict(model.objects.filter(pk__in=seen).values_list("pk", field))
        changed = []
        for pk, ts in seen.items():
            at = datetime.fromtimestamp(ts, tz=UTC)
            if pk in stored and (stored[pk] is None or stored[pk] < at):
                changed.append(model(pk=pk, **{field: at}))
        model.objects.bulk_update(changed, [field], batch_size=500)
        return len(changed)

    gateway_ids = list(Gateway.objects.values_list("pk", flat=True))
    moved = forward(Gateway, "last_contact_at", hot.contact_times(gateway_ids))
    token_ids = list(GatewayToken.objects.filter(revoked_at__isnull=True).values_list(
        "pk", flat=True))
    forward(GatewayToken, "last_used_at", hot.token_use_times(token_ids))
    return moved


# --- Signing keys -----------------------------------------------------------------------------

@transaction.atomic
def signing_key_rotate(*, tenant: Tenant, actor: Actor, immediate: bool = False,
                       created_by=None) -> SigningKey:
    """Publish a new key now; it signs after BUNDLE_KEY_PUBLISH_LEAD_SECONDS (gateways have
    fetched it by then). ``immediate`` is for a compromised key: the new key signs at once, the
    old one is revoked (out of the JWKS, so gateways stop trusting what it signed) and the bundle
    is re-signed straight after commit; gateways that have not refreshed their JWKS keep their
    last good bundle until they do. A tenant without an active key gets an active one at once
    (no gateway can hold anything signed by it yet)."""
    locked = list(SigningKey.objects.for_tenant(tenant).select_for_update().exclude(
        state=SigningKey.State.REVOKED))
    pending = [k for k in locked if k.state == SigningKey.State.PENDING]
    previous = [k for k in locked if k.state == SigningKey.State.ACTIVE]
    if not previous:
        immediate = True
    if pending and not immediate:
        raise ValidationError(
            f"A rotation is already under way: key {pending[0].kid} starts signing at "
            f"{pending[0].activate_after:%Y-%m-%d %H:%M} UTC. Activate or revoke it first."
        )
    lead = timedelta(seconds=settings.BUNDLE_KEY_PUBLISH_LEAD_SECONDS)
    key = _new_key(tenant, SigningKey.State.PENDING, created_by=created_by,
                   activate_after=timezone.now() + lead)
    audit_record(tenant=tenant, actor=actor, action="bundle_key.rotated", obj=key,
                 after={**key.audit_snapshot(), "immediate": immediate})
    _jwks_changed(tenant)
    if immediate:
        for other in pending:
            _revoke(tenant, actor, other)
        key = _activate(tenant, actor, key)
        for old in previous:
            old.refresh_from_db()
            _revoke(tenant, actor, old)
        def resign() -> None:
            try:
                publish.bundle_publish(tenant=tenant, trigger="key rotation", force=True)
            except Exception:  # the scheduled build and the sweep retry it
                publish.log.warning("re-signing after key rotation failed", exc_info=True)
        transaction.on_commit(resign)
    return key


def _activate(tenant: Tenant, actor: Actor, key: SigningKey) -> SigningKey:
    now = timezone.now()
    for current in SigningKey.objects.for_tenant(tenant).select_for_update().filter(
            state=SigningKey.State.ACTIVE):
        current.state = SigningKey.State.RETIRED
        current.retired_at = now
        current.save(update_fields=["state", "retired_at"])
        audit_record(tenant=tenant, actor=actor, action="bundle_key.retired", obj=current,
                     after=current.audit_snapshot())
    key.state = SigningKey.State.ACTIVE
    key.activated_at = now
    key.save(update_fields=["state", "activated_at"])
    audit_record(tenant=tenant, actor=actor, action="bundle_key.activated", obj=key,
                 after=key.audit_snapshot())
    _jwks_changed(tenant)
    # Bundles are re-signed by the new key straight away.
    publish.schedule_build_on_commit(tenant.pk)
    return key


@transaction.atomic
def signing_key_activate(*, tenant: Tenant, actor: Actor, key: SigningKey) -> SigningKey:
    key = SigningKey.objects.for_tenant(tenant).select_for_update().get(pk=key.pk)
    if key.state != SigningKey.State.PENDING:
        raise ValidationError(f"Only a pending key can be activated; this one is {key.state}.")
    return _activate(tenant, actor, key)


def signing_keys_activate_due(*, now: datetime | None = None) -> list[SigningKey]:
    """Pending keys whose publication lead has passed start signing (Celery beat)."""
    now = now or timezone.now()
    done = []
    for key in SigningKey.objects.filter(state=SigningKey.State.PENDING, activate_after__lte=now
                                         ).select_related("tenant"):
        with transaction.atomic():
            fresh = SigningKey.objects.select_for_update().get(pk=key.pk)
            if fresh.state == SigningKey.State.PENDING:
                done.append(_activate(key.tenant, Actor.system("key rotation"), fresh))
    return done


def _revoke(tenant: Tenant, actor: Actor, key: SigningKey) -> SigningKey:
    before = key.audit_snapshot()
    key.state = SigningKey.State.REVOKED
    key.revoked_at = timezone.now()
    key.save(update_fields=["state", "revoked_at"])
    audit_record(tenant=tenant, actor=actor, action="bundle_key.revoked", obj=key, before=before,
                 after=key.audit_snapshot())
    _jwks_changed(tenant)
    return key


@transaction.atomic
def signing_key_revoke(*, tenant: Tenant, actor: Actor, key: SigningKey) -> SigningKey:
    """Withdraw a retired key (or cancel a pending one): it leaves the JWKS, and gateways then
    reject anything it signed. The active key cannot be revoked: rotate first."""
    key = SigningKey.objects.for_tenant(tenant).select_for_update().get(pk=key.pk)
    if key.state == SigningKey.State.REVOKED:
        return key
    if key.state == SigningKey.State.ACTIVE:
        raise ValidationError(
            "The active key signs the current bundle: rotate (immediately, if it is "
            "compromised) and then revoke it."
        )
    current = PublishState.objects.filter(tenant=tenant).values_list(
        "current__key_id", "current__revision_number").first()
    if current and current[0] == key.pk:
        raise ValidationError(
            f"The current bundle (revision {current[1]}) is still signed by this key; revoking "
            "it now would make gateways reject what they are served. Wait for the re-signed "
            "bundle (seconds after the new key became active), or rotate immediately if the key "
            "is compromised."
        )
    return _revoke(tenant, actor, key)


@transaction.atomic
def signing_keys_reencrypt() -> int:
    """Re-encrypt every private key under the first SECRET_ENCRYPTION_KEYS entry."""
    count = 0
    for key in SigningKey.objects.select_for_update().exclude(state=SigningKey.State.REVOKED):
        key.private_key_encrypted = keys.reencrypt(key.private_key_encrypted)
        key.save(update_fields=["private_key_encrypted"])
        count += 1
    if count:
        audit_record(tenant=None, actor=Actor.system("rotate_bundle_key"),
                     action="bundle_key.reencrypted", object_type="bundles.signingkey",
                     after={"keys": count})
    return count
