"""Reads of the bundles app, tenant first."""

from __future__ import annotations

import io
import tarfile
import zipfile
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from bundles import hot
from bundles.models import Bundle, Gateway, GatewayToken, PublishState, SigningKey
from bundles.packaging import rfc3339
from gateway import agentgateway
from governance.audit.models import AuditEvent
from governance.tenancy.models import Tenant

BUNDLE_ACTION_PREFIXES = ("server.", "tool.", "scope.", "agent.", "grant.", "tenant.settings")
# Recorded but without effect on the bundle's content.
NON_BUNDLE_ACTIONS = frozenset({"server.sync_requested", "server.sync_failed"})


def affects_bundle(action: str) -> bool:
    return action.startswith(BUNDLE_ACTION_PREFIXES) and action not in NON_BUNDLE_ACTIONS


def bundle_action_q() -> Q:
    q = Q()
    for prefix in BUNDLE_ACTION_PREFIXES:
        q |= Q(action__startswith=prefix)
    return q & ~Q(action__in=NON_BUNDLE_ACTIONS)


def jwks(tenant_id: int) -> dict[str, Any]:
    """The JWKS gateways verify with: pending, active and retired keys, never revoked ones."""
    keys = SigningKey.objects.filter(tenant_id=tenant_id).exclude(
        state=SigningKey.State.REVOKED).order_by("created_at", "kid")
    return {"keys": [k.public_jwk for k in keys]}


def gateways(tenant: Tenant) -> QuerySet[Gateway]:
    return Gateway.objects.for_tenant(tenant).order_by("name")


def tokens(tenant: Tenant, gateway: Gateway) -> QuerySet[GatewayToken]:
    return GatewayToken.objects.for_tenant(tenant).filter(gateway=gateway).order_by("-created_at")


def signing_keys(tenant: Tenant) -> QuerySet[SigningKey]:
    return SigningKey.objects.for_tenant(tenant).order_by("-created_at")


def bundles(tenant: Tenant) -> QuerySet[Bundle]:
    return Bundle.objects.for_tenant(tenant).select_related("key").order_by("-revision_number")


def publish_state(tenant: Tenant) -> PublishState | None:
    return PublishState.objects.filter(tenant=tenant).select_related("current").first()


# Why a gateway's revision is not this control plane's bundle of that number (fleet rows'
# ``revision_conflict``; "" when it is, or when nothing tells).
CONFLICT_AHEAD = "ahead"  # above the newest revision issued here
CONFLICT_UNKNOWN = "unknown"  # a number skipped here (issued before a restore, then passed)
CONFLICT_DIFFERENT = "different"  # the gateway's bundle hash is not ours of that number
CONFLICT_REFUSED = "refused"  # the gateway refused ours of that number as a revision_conflict
REVISION_CONFLICT_CODE = "revision_conflict"


def conflict_reason(*, running: int | None, sha256: str, codes: set[str], newest: int | None,
                    ours: str | None) -> str:
    """Whether revision ``running`` (with bundle hash ``sha256``, "" when not reported) is
    another bundle than ours of that number (``ours``: its hash, None without such a row), as
    one of the CONFLICT_* reasons, or ""."""
    if running is None:
        return ""
    if newest is None or running > newest:
        return CONFLICT_AHEAD
    if ours is None:
        return CONFLICT_UNKNOWN
    if sha256 and sha256 != ours:
        return CONFLICT_DIFFERENT
    if REVISION_CONFLICT_CODE in codes:
        return CONFLICT_REFUSED
    return ""


def revision_hashes(tenant: Tenant | int, revisions: set[int]) -> dict[int, str]:
    """``{revision number: tarball SHA-256}`` of the tenant's bundles of those numbers."""
    tenant_id = tenant if isinstance(tenant, int) else tenant.pk
    return dict(Bundle.objects.filter(tenant_id=tenant_id, revision_number__in=revisions)
                .values_list("revision_number", "blob_id"))


def fleet(tenant: Tenant, *, now: datetime | None = None,
          only: Gateway | None = None) -> list[dict[str, Any]]:
    """Every gateway (or ``only`` that one) with its freshness: last contact (poll or report),
    revision, lag, stale, and whether its revision is a bundle this control plane did not issue
    under that number (``revision_conflict``: a restore from an older backup)."""
    now = now or timezone.now()
    state = publish_state(tenant)
    current = state.current if state else None
    newest = current.revision_number if current is not None else None
    rows = [only] if only is not None else list(gateways(tenant))
    try:
        contacts = hot.contact_times([g.pk for g in rows])
    except Exception:  # the hot store is down: the database's copy is at most a minute old
        contacts = {}
    ours = revision_hashes(tenant, {g.active_revision for g in rows
                                    if g.active_revision is not None})
    stale_after = timedelta(seconds=settings.GATEWAY_STALE_SECONDS)
    result = []
    for gateway in rows:
        last = gateway.last_contact_at
        if gateway.pk in contacts:
            polled = datetime.fromtimestamp(contacts[gateway.pk], tz=UTC)
            last = max(last, polled) if last else polled
        running = gateway.active_revision
        # Never a negative lag, nor "up to date" for another bundle under the same number.
        conflict = conflict_reason(running=running, sha256=gateway.reported_sha256,
                                   codes=gateway.reported_codes, newest=newest,
                                   ours=ours.get(running))
        lag = newest - running if newest is not None and running is not None and not conflict \
            else None
        result.append({
            "gateway": gateway,
            "last_contact_at": last,
            # A gateway never heard from is stale once it has had the stale window to connect.
            "stale": gateway.status == Gateway.Status.ACTIVE and (
                now - (last or gateway.created_at) > stale_after),
            "never_seen": last is None,
            "lag": lag,
            "unknown_revision": conflict == CONFLICT_AHEAD,
            "revision_conflict": conflict,
            "newest": newest,
        })
    return result


def conflict_alert(row: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(key, subject, detail) of the ``revision_conflict`` alert about a fleet row."""
    gateway, newest, reason = row["gateway"], row["newest"], row["revision_conflict"]
    running = gateway.active_revision
    what = {CONFLICT_AHEAD: f"r{running}, ahead of this control plane's newest r{newest}",
            CONFLICT_UNKNOWN: f"r{running}, a number this control plane has no bundle of"}.get(
        reason, f"another bundle under r{running} than this control plane's")
    subject = (f"Gateway {gateway.name} runs {what}: the next bundle is published above "
               f"r{running}")
    return f"gateway:{gateway.pk}", subject, {
        "gateway": gateway.pk, "name": gateway.name, "reason": reason,
        "reported_revision": running, "reported_sha256": gateway.reported_sha256 or None,
        "newest_revision": newest}


def bundle_previous(tenant: Tenant, bundle: Bundle) -> Bundle | None:
    """The revision published before ``bundle``, if any."""
    return bundles(tenant).filter(revision_number__lt=bundle.revision_number).first()


def bundle_data(bundle: Bundle) -> dict[str, Any]:
    """The parsed ``mcp/data.json`` of a stored bundle (diff.BundleReadError if unreadable)."""
    from bundles import diff, store

    content = store.load(bundle.blob_id)
    if content is None:
        raise diff.BundleReadError("The bundle's tarball is missing from the store.")
    return diff.read_data(content)


def registry_changes(tenant: Tenant, *, after_seq: int, through_seq: int,
                     limit: int = 200) -> list[AuditEvent]:
    """The bundle-affecting audit events a revision took in (who changed what), oldest first."""
    return list(AuditEvent.objects.filter(tenant=tenant, seq__gt=after_seq,
                                          seq__lte=through_seq)
                .filter(bundle_action_q()).order_by("seq")[:limit])


def triggers(tenant: Tenant, bundles: list[Bundle]) -> dict[int, dict[str, Any]]:
    """Per bundle of a page: who made the registry changes it took in, and how many."""
    if not bundles:
        return {}
    ordered = sorted(bundles, key=lambda b: b.revision_number)
    before = (Bundle.objects.for_tenant(tenant)
              .filter(revision_number__lt=ordered[0].revision_number)
              .order_by("-revision_number").values_list("through_seq", flat=True).first()) or 0
    ranges = []
    for bundle in ordered:
        ranges.append((bundle.pk, before, bundle.through_seq))
        before = max(before, bundle.through_seq)
    low, high = ranges[0][1], max(r[2] for r in ranges)
    events = list(AuditEvent.objects.filter(tenant=tenant, seq__gt=low, seq__lte=high)
                  .filter(bundle_action_q()).values_list("seq", "actor_label")[:20000])
    result: dict[int, dict[str, Any]] = {}
    for pk, start, end in ranges:
        mine = [label for seq, label in events if start < seq <= end]
        result[pk] = {"changes": len(mine), "actors": sorted(set(mine))}
    return result


def fleet_row(tenant: Tenant, gateway: Gateway) -> dict[str, Any]:
    """The fleet view of one gateway."""
    return fleet(tenant, only=gateway)[0]


# --- Policy export for other gateways (a read of the current bundle) ------------------------

CEDAR_FILES = ("mcp/policy.cedar", "mcp/schema.cedarschema")
NO_BUNDLE = ("No bundle has been published for this tenant yet: there is no policy to export. "
             "Publish one first.")


class NoBundleToExport(Exception):
    """The tenant has no readable current bundle."""


def _bundle_files(content: bytes, names: tuple[str, ...]) -> dict[str, bytes]:
    """The regular files ``names`` of a bundle tarball, read in memory."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as tar:
            for member in tar:
                name = member.name.lstrip("/")
                if name in names and member.isfile():
                    handle = tar.extractfile(member)
                    if handle is not None:
                        files[name] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise NoBundleToExport(f"The current bundle cannot be read: {exc}") from None
    missing = [name for name in names if name not in files]
    if missing:
        raise NoBundleToExport(f"The current bundle has no {', '.join(missing)}.")
    return files


def policy_export(tenant, kind: str, *, approvals: str = "deny",
                  unpinned: str = "deny") -> tuple[bytes, str, str]:
    """(content, content type, file name) of the current bundle's policy as ``kind``
    ("agentgateway", with its ``approvals`` and ``unpinned`` options, or "cedar");
    NoBundleToExport when there is nothing to export."""
    from bundles import diff, store

    state = publish_state(tenant)
    bundle = state.current if state else None
    content = store.load(bundle.blob_id) if bundle is not None else None
    if content is None:
        raise NoBundleToExport(NO_BUNDLE)
    stem = f"{tenant.slug}-r{bundle.revision_number}"
    if kind == "agentgateway":
        try:
            data = diff.read_data(content)
        except diff.BundleReadError as exc:
            raise NoBundleToExport(str(exc)) from None
        export = agentgateway.translate(data, at=timezone.now(),
                                        revision=bundle.revision_number,
                                        expires_at=rfc3339(bundle.expires_at),
                                        approvals=approvals, unpinned=unpinned)
        return (export.text.encode("utf-8"), "application/yaml; charset=utf-8",
                f"{stem}-agentgateway.yaml")
    files = _bundle_files(content, CEDAR_FILES)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in CEDAR_FILES:  # fixed order and dates: the same bundle, the same zip
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), files[name])
    return buffer.getvalue(), "application/zip", f"{stem}-cedar.zip"
