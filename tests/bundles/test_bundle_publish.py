"""The publish pipeline (bundles/publish.py) and signing keys, against the reference
verifier (gateway/verify.py): what is built, when, by which key, and what survives a failure."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from bundles import keys, packaging, publish, services
from bundles.models import Bundle, BundleBlob, PublishState, SigningKey
from bundles.packaging import bundle_json
from bundles.tasks import build_bundle, sweep
from gateway.verify import BundleRejected, verify_bundle
from governance.audit.models import AuditEvent
from registry import services as registry
from registry.compiler import compile_data
from registry.sync import server_sync_request
from tests.bundle_support import SYSTEM, data_of, jwks_of, small_registry, tar_files


def _publish(tenant, **kwargs):
    return publish.bundle_publish(tenant=tenant, trigger="test", **kwargs)


def test_a_published_bundle_verifies_and_carries_the_compiled_state(world, tenant_a):
    bundle = _publish(tenant_a)
    assert bundle.revision_number == 1
    content = bytes(BundleBlob.objects.get(sha256=bundle.sha256).content)
    verified = verify_bundle(content, jwks=jwks_of(tenant_a), tenant="alpha", now=timezone.now())
    assert verified.revision_number == 1
    assert verified.kid == bundle.key.kid
    files = tar_files(content)
    assert sorted(files) == [".manifest", ".signatures.json", "mcp/data.json",
                             "mcp/policy.cedar", "mcp/schema.cedarschema"]
    assert files["mcp/data.json"] == bundle_json(compile_data(tenant_a, at=bundle.created_at))
    assert data_of(content)["grants"][0]["id"] == str(world["grant"].pk)
    assert bundle.expires_at - bundle.created_at == timedelta(hours=24)
    assert bundle.summary == {"agents": 1, "servers": 1, "tools": 2, "scopes": 1, "grants": 1}
    event = AuditEvent.objects.get(action="bundle.published")
    assert event.after["revision_number"] == 1 and event.after["sha256"] == bundle.sha256
    assert PublishState.objects.get(tenant=tenant_a).current == bundle


def test_nothing_changed_means_no_new_revision(world, tenant_a):
    first = _publish(tenant_a)
    assert _publish(tenant_a) is None
    registry.agent_update(tenant=tenant_a, actor=SYSTEM, agent=world["agent"],
                          purpose="pays people")  # not in data.json: still nothing new
    assert _publish(tenant_a) is None
    registry.grant_revoke(tenant=tenant_a, actor=SYSTEM, grant=world["grant"], reason="done")
    second = _publish(tenant_a)
    assert second.revision_number == first.revision_number + 1
    assert data_of(bytes(second.blob.content))["grants"] == []


def test_a_bundle_is_reissued_before_half_its_lifetime(world, tenant_a):
    first = _publish(tenant_a)
    assert _publish(tenant_a, now=first.created_at + timedelta(hours=9)) is None
    again = _publish(tenant_a, now=first.created_at + timedelta(hours=10))
    assert again.revision_number == 2
    assert again.content_sha256 == first.content_sha256


def test_the_sweep_finds_what_is_due(world, tenant_a, tenant_b):
    now = timezone.now()
    due = dict((t.slug, why) for t, why in publish.tenants_due(now))
    assert due == {"alpha": "first bundle", "bravo": "first bundle"}
    _publish(tenant_a)
    _publish(tenant_b)
    assert publish.tenants_due(timezone.now()) == []
    # A change whose scheduled build was lost (no task ran) is found in the audit trail…
    registry.grant_revoke(tenant=tenant_a, actor=SYSTEM, grant=world["grant"], reason="x")
    assert [(t.slug, why) for t, why in publish.tenants_due(timezone.now())] == [
        ("alpha", "registry change")]
    # …but an audited change that does not affect bundles is not.
    _publish(tenant_a)
    server_sync_request(tenant=tenant_a, actor=SYSTEM, server=world["server"])
    assert publish.tenants_due(timezone.now()) == []
    later = timezone.now() + timedelta(hours=10)
    assert {why for _, why in publish.tenants_due(later)} == {"re-issue"}


def test_an_expiring_grant_makes_the_bundle_due(world, tenant_a):
    expires = timezone.now() + timedelta(hours=1)
    registry.grant_create(tenant=tenant_a, actor=SYSTEM, agent=world["agent"],
                          scope=world["scope"], expires_at=expires)
    bundle = _publish(tenant_a)
    assert bundle.next_change_at == expires.replace(microsecond=0) or bundle.next_change_at
    assert publish.tenants_due(expires - timedelta(minutes=1)) == []
    assert [why for _, why in publish.tenants_due(expires + timedelta(seconds=1))] == [
        "grant expired"]
    rebuilt = _publish(tenant_a, now=expires + timedelta(seconds=1))
    assert len(data_of(bytes(rebuilt.blob.content))["grants"]) == 1


def test_a_burst_of_edits_is_one_scheduled_build(world, tenant_a, monkeypatch,
                                                 django_capture_on_commit_callbacks):
    enqueued = []
    monkeypatch.setattr(build_bundle, "apply_async",
                        lambda args, countdown: enqueued.append((args, countdown)))
    with django_capture_on_commit_callbacks(execute=True):
        for i in range(100):
            registry.agent_create(tenant=tenant_a, actor=SYSTEM, name=f"burst-{i}", owner=None)
    assert enqueued == [([tenant_a.pk], 0.2)]
    # The task clears the mark first: an edit made during or after the build schedules again.
    publish.clear_schedule(tenant_a.pk)
    with django_capture_on_commit_callbacks(execute=True):
        registry.agent_create(tenant=tenant_a, actor=SYSTEM, name="after", owner=None)
    assert len(enqueued) == 2


def test_changes_that_do_not_affect_bundles_schedule_nothing(world, tenant_a, monkeypatch,
                                                            django_capture_on_commit_callbacks):
    enqueued = []
    monkeypatch.setattr(build_bundle, "apply_async", lambda **kw: enqueued.append(kw))
    with django_capture_on_commit_callbacks(execute=True):
        services.gateway_create(tenant=tenant_a, actor=SYSTEM, name="gw")
        server_sync_request(tenant=tenant_a, actor=SYSTEM, server=world["server"])
    assert enqueued == []


def test_a_failed_build_leaves_the_previous_bundle_current(world, tenant_a, monkeypatch):
    first = _publish(tenant_a)
    registry.grant_revoke(tenant=tenant_a, actor=SYSTEM, grant=world["grant"], reason="x")

    def broken(*args, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(packaging, "package", broken)
    with pytest.raises(OSError):  # called directly, Celery's retry re-raises the error
        build_bundle.run(tenant_a.pk)
    state = PublishState.objects.get(tenant=tenant_a)
    assert state.current == first and state.last_revision == 1
    assert "disk on fire" in state.last_error
    assert Bundle.objects.count() == 1 and BundleBlob.objects.count() == 1
    assert not AuditEvent.objects.filter(action="bundle.published", after__revision_number=2)
    monkeypatch.undo()
    assert build_bundle.run(tenant_a.pk) == 2
    assert PublishState.objects.get(tenant=tenant_a).last_error == ""


def test_private_keys_are_encrypted_at_rest(world, tenant_a, settings):
    bundle = _publish(tenant_a)
    stored = bundle.key.private_key_encrypted
    assert "PRIVATE KEY" not in stored and "BEGIN" not in stored
    assert "d" not in bundle.key.public_jwk
    settings.SECRET_ENCRYPTION_KEYS = ["b3RoZXItb3RoZXItb3RoZXItb3RoZXItb3RoZXItMTI="]
    with pytest.raises(keys.KeyUnavailable):
        keys.load_private(stored)
    registry.grant_revoke(tenant=tenant_a, actor=SYSTEM, grant=world["grant"], reason="x")
    with pytest.raises(keys.KeyUnavailable):
        _publish(tenant_a)
    assert PublishState.objects.get(tenant=tenant_a).current == bundle


def test_the_encryption_key_can_be_rotated(world, tenant_a, settings):
    bundle = _publish(tenant_a)
    old = settings.SECRET_ENCRYPTION_KEYS[0]
    new = "bmV3LW5ldy1uZXctbmV3LW5ldy1uZXctbmV3LW5ldy0="
    settings.SECRET_ENCRYPTION_KEYS = [new, old]
    call_command("rotate_bundle_key", "--reencrypt")
    settings.SECRET_ENCRYPTION_KEYS = [new]
    key = SigningKey.objects.get(pk=bundle.key.pk)
    assert keys.load_private(key.private_key_encrypted)


def test_rotation_publishes_the_new_key_before_it_signs(world, tenant_a, settings):
    first = _publish(tenant_a)
    old_kid = first.key.kid
    before = timezone.now()
    pending = services.signing_key_rotate(tenant=tenant_a, actor=SYSTEM)
    assert pending.state == "pending"
    assert {k["kid"] for k in jwks_of(tenant_a)["keys"]} == {old_kid, pending.kid}
    assert pending.activate_after >= before + timedelta(
        seconds=settings.BUNDLE_KEY_PUBLISH_LEAD_SECONDS - 5)
    # Until it is due, the old key keeps signing.
    assert services.signing_keys_activate_due() == []
    forced = _publish(tenant_a, force=True)
    assert forced.key.kid == old_kid
    # Once due, the sweep activates it and the bundle is re-signed by it.
    [activated] = services.signing_keys_activate_due(now=pending.activate_after)
    assert activated.kid == pending.kid
    assert SigningKey.objects.get(kid=old_kid).state == "retired"
    resigned = _publish(tenant_a)
    assert resigned.key.kid == pending.kid and resigned.revision_number == 3
    jwks = jwks_of(tenant_a)
    verify_bundle(bytes(resigned.blob.content), jwks=jwks, tenant="alpha", last_revision=2)
    verify_bundle(bytes(forced.blob.content), jwks=jwks, tenant="alpha", last_revision=1)
    # Revoking the retired key withdraws it: what it signed no longer verifies.
    services.signing_key_revoke(tenant=tenant_a, actor=SYSTEM,
                                key=SigningKey.objects.get(kid=old_kid))
    assert [k["kid"] for k in jwks_of(tenant_a)["keys"]] == [pending.kid]
    with pytest.raises(BundleRejected) as rejected:
        verify_bundle(bytes(forced.blob.content), jwks=jwks_of(tenant_a), tenant="alpha")
    assert rejected.value.code == "unknown_key"


def test_rotation_rules(world, tenant_a):
    first = _publish(tenant_a)
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError, match="rotate"):
        services.signing_key_revoke(tenant=tenant_a, actor=SYSTEM, key=first.key)
    services.signing_key_rotate(tenant=tenant_a, actor=SYSTEM)
    with pytest.raises(ValidationError, match="already under way"):
        services.signing_key_rotate(tenant=tenant_a, actor=SYSTEM)
    urgent = services.signing_key_rotate(tenant=tenant_a, actor=SYSTEM, immediate=True)
    states = dict(SigningKey.objects.values_list("kid", "state"))
    assert states[urgent.kid] == "active"
    # Immediate = compromised: the old key and the cancelled pending one are both withdrawn.
    assert sorted(states.values()) == ["active", "revoked", "revoked"]
    assert AuditEvent.objects.filter(action="bundle_key.activated").count() == 1


def test_rotate_bundle_key_command(world, tenant_a, capsys):
    _publish(tenant_a)
    call_command("rotate_bundle_key", "alpha")
    assert "published (pending)" in capsys.readouterr().out
    call_command("rotate_bundle_key", "alpha", "--immediate")
    assert "is active now" in capsys.readouterr().out
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="No tenant"):
        call_command("rotate_bundle_key", "nope")


def test_the_sweep_task_activates_due_keys_and_enqueues_due_builds(world, tenant_a,
                                                                    monkeypatch):
    enqueued = []
    monkeypatch.setattr(build_bundle, "delay", lambda *args: enqueued.append(args))
    assert sweep() == {"keys_activated": 0, "builds": 1, "pointers_repaired": 0, "contacts": 0}
    assert enqueued == [(tenant_a.pk, "first bundle")]


def test_the_sweep_repairs_a_lost_announcement_and_a_lost_revocation(world, tenant_a):
    """Publishing and revoking commit even when Redis is away; the next sweep restores what
    the hot path must answer."""
    from bundles import hot
    from tests.bundle_support import make_gateway

    bundle = _publish(tenant_a)  # its on-commit announcement never ran (test transaction)
    gateway, _ = make_gateway(tenant_a)
    token = gateway.tokens.get()
    hot.set_json(hot.token_key(token.token_hash), {"tenant": "alpha", "gateway": gateway.pk})
    services.gateway_token_revoke(tenant=tenant_a, actor=SYSTEM, token=token)
    assert hot.get_json(hot.current_key("alpha")) is None
    assert publish.refresh_hot_store() == 1
    assert hot.get_json(hot.current_key("alpha"))["sha256"] == bundle.sha256
    assert hot.get_json(hot.token_key(token.token_hash)) == hot.REVOKED
    assert hot.get_json(hot.jwks_key("alpha")) == jwks_of(tenant_a)
    assert publish.refresh_hot_store() == 0


@pytest.mark.django_db(transaction=True)
def test_concurrent_builders_allocate_strictly_increasing_revisions(postgres_only, tenant_a):
    """Eight builders at once on PostgreSQL: eight distinct, gap-free revisions in the order the
    row lock granted them (a later revision never holds an older compile)."""
    small_registry(tenant_a)
    _publish(tenant_a)
    errors = []

    def build():
        try:
            _publish(tenant_a, force=True)
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=build) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = list(Bundle.objects.filter(tenant=tenant_a).order_by("revision_number").values_list(
        "revision_number", "created_at"))
    assert [r for r, _ in rows] == list(range(1, 10))
    assert [c for _, c in rows] == sorted(c for _, c in rows)
    assert PublishState.objects.get(tenant=tenant_a).last_revision == 9


def test_a_key_still_signing_the_current_bundle_cannot_be_revoked(world, tenant_a):
    from django.core.exceptions import ValidationError

    first = _publish(tenant_a)
    pending = services.signing_key_rotate(tenant=tenant_a, actor=SYSTEM)
    services.signing_key_activate(tenant=tenant_a, actor=SYSTEM, key=pending)
    with pytest.raises(ValidationError, match="still signed by this key"):
        services.signing_key_revoke(tenant=tenant_a, actor=SYSTEM, key=first.key)
    _publish(tenant_a)  # re-signed by the new key
    services.signing_key_revoke(tenant=tenant_a, actor=SYSTEM, key=first.key)
    assert SigningKey.objects.get(pk=first.key.pk).state == "revoked"


def test_the_first_key_of_a_tenant_is_active_at_once(tenant_a):
    key = services.signing_key_rotate(tenant=tenant_a, actor=SYSTEM)
    assert key.state == "active"
