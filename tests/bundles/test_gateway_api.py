"""The gateway API (DESIGN.md §5): bundles with ETag / 304 / long poll, JWKS, status reports,
and the errors a gateway can meet. Long polls run against real threads publishing meanwhile."""

from __future__ import annotations

import gzip
import json
import os
import threading
import time

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from bundles import publish, services
from bundles.models import Gateway
from gateway.verify import verify_bundle
from governance.audit.models import AuditEvent
from registry import services as registry
from tests.bundle_support import SYSTEM, data_of, jwks_of, make_gateway, small_registry
from tests.clock_support import away_from_a_minute_boundary

BUNDLE = "/api/v1/gateway/bundles/{}"


@pytest.fixture
def gateway(world, tenant_a):
    gw, plaintext = make_gateway(tenant_a)
    publish.bundle_publish(tenant=tenant_a, trigger="test")
    return gw, plaintext


def _get(plaintext, slug="alpha", **headers):
    extra = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()}
    if plaintext is not None:
        extra["HTTP_AUTHORIZATION"] = f"Bearer {plaintext}"
    return Client().get(BUNDLE.format(slug), **extra)


def test_the_current_bundle_with_its_etag_then_304(gateway, tenant_a):
    _, token = gateway
    response = _get(token)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/gzip"
    etag = response["ETag"]
    verified = verify_bundle(response.content, jwks=jwks_of(tenant_a), tenant="alpha")
    assert etag == f'"{__import__("hashlib").sha256(response.content).hexdigest()}"'
    assert response["X-Bundle-Revision"] == str(verified.revision_number)
    again = _get(token, if_none_match=etag)
    assert again.status_code == 304 and again.content == b""
    assert again["ETag"] == etag


def test_no_bad_or_revoked_tokens_get_401_and_other_tenants_404(
        gateway, tenant_a, tenant_b, django_capture_on_commit_callbacks):
    gw, token = gateway
    assert _get(None).status_code == 401
    assert _get(None)["WWW-Authenticate"].startswith("Bearer")
    assert _get("tgw_not-a-real-token").json()["code"] == "not_authenticated"
    assert _get(token, slug="bravo").status_code == 404
    assert _get(token, slug="nope").status_code == 404
    _, other = make_gateway(tenant_b, name="b-edge")
    assert _get(other, slug="alpha").status_code == 404
    [record] = gw.tokens.all()
    with django_capture_on_commit_callbacks(execute=True):
        services.gateway_token_revoke(tenant=tenant_a, actor=SYSTEM, token=record)
    assert _get(token).status_code == 401


def test_a_disabled_gateway_is_refused_and_can_come_back(gateway, tenant_a,
                                                         django_capture_on_commit_callbacks):
    gw, token = gateway
    assert _get(token).status_code == 200  # its token is now in the hot store
    with django_capture_on_commit_callbacks(execute=True):
        services.gateway_set_status(tenant=tenant_a, actor=SYSTEM, gateway=gw,
                                    status=Gateway.Status.DISABLED)
    assert _get(token).status_code == 401
    with django_capture_on_commit_callbacks(execute=True):
        services.gateway_set_status(tenant=tenant_a, actor=SYSTEM, gateway=gw,
                                    status=Gateway.Status.ACTIVE)
    assert _get(token).status_code == 200


def test_revocation_reaches_the_hot_path_at_once(gateway, tenant_a,
                                                 django_capture_on_commit_callbacks):
    gw, token = gateway
    assert _get(token).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        services.gateway_token_revoke(tenant=tenant_a, actor=SYSTEM, token=gw.tokens.get())
    assert _get(token).status_code == 401


def test_the_hot_path_runs_no_sql(gateway, settings, redis_url):
    """With Redis (production), a poll answered 304 costs no database query at all."""
    settings.REDIS_URL = redis_url
    _, token = gateway
    etag = _get(token)["ETag"]  # warms the token and pointer entries
    with CaptureQueriesContext(connection) as queries:
        for _ in range(3):
            assert _get(token, if_none_match=etag).status_code == 304
    assert [q["sql"] for q in queries.captured_queries] == []


def test_announcements_stay_within_their_redis_database(settings, redis_url):
    """Redis pub/sub ignores the database number: two deployments on one Redis server (each
    with its own database) must not wake each other's long polls."""
    import redis

    from bundles import hot

    base = redis_url.rsplit("/", 1)[0]
    listener = redis.Redis.from_url(f"{base}/9").pubsub()
    settings.REDIS_URL = f"{base}/9"
    listener.subscribe(hot.channel())
    assert listener.get_message(timeout=30)["type"] == "subscribe"  # the confirmation
    settings.REDIS_URL = f"{base}/8"
    hot.publish({"tenant": "acme", "sha256": "0" * 64})
    settings.REDIS_URL = f"{base}/9"
    hot.publish({"tenant": "acme", "sha256": "1" * 64})
    # Only the second arrives: the first (another deployment's announcement) would come first.
    message = listener.get_message(timeout=30)
    assert message is not None and b"1" * 64 in message["data"]
    listener.close()


def test_publishing_updates_the_pointer_the_hot_path_serves(gateway, tenant_a, world,
                                                            django_capture_on_commit_callbacks):
    _, token = gateway
    first = _get(token)
    with django_capture_on_commit_callbacks(execute=True):
        registry.grant_revoke(tenant=tenant_a, actor=SYSTEM, grant=world["grant"], reason="x")
        publish.bundle_publish(tenant=tenant_a, trigger="test")
    second = _get(token, if_none_match=first["ETag"])
    assert second.status_code == 200 and second["ETag"] != first["ETag"]
    assert data_of(second.content)["grants"] == []


def test_rate_limit_per_gateway(gateway, settings):
    settings.GATEWAY_RATE_LIMIT_PER_MINUTE = 3
    _, token = gateway
    away_from_a_minute_boundary()  # the window is a UTC minute
    codes = [_get(token).status_code for _ in range(4)]
    assert codes[:3] == [200, 200, 200]
    limited = _get(token)
    assert limited.status_code == 429 and int(limited["Retry-After"]) >= 1


def test_before_the_first_bundle_the_poll_says_retry(world, tenant_a):
    _, token = make_gateway(tenant_a)
    response = _get(token)
    assert response.status_code == 503 and response["Retry-After"]
    assert response.json()["code"] == "no_bundle"


def test_jwks_lists_published_keys_only(gateway, tenant_a):
    _, token = gateway
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    response = client.get("/api/v1/gateway/keys/alpha")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/jwk-set+json"
    [key] = response.json()["keys"]
    assert key["kty"] == "EC" and key["crv"] == "P-256" and key["alg"] == "ES256"
    assert "d" not in key
    assert client.get("/api/v1/gateway/keys/alpha",
                      HTTP_IF_NONE_MATCH=response["ETag"]).status_code == 304
    assert client.get("/api/v1/gateway/keys/bravo").status_code == 404
    assert Client().get("/api/v1/gateway/keys/alpha").status_code == 401


def _status(token, body, content_type="application/json", **extra):
    return Client().post("/api/v1/gateway/status", body, content_type=content_type,
                         HTTP_AUTHORIZATION=f"Bearer {token}", **extra)


def _report(revision, code=None, message=None):
    entry = {"name": "mcp", "active_revision": str(revision),
             "last_successful_download": timezone.now().isoformat(),
             "last_successful_activation": timezone.now().isoformat()}
    if code:
        entry |= {"code": code, "message": message, "errors": [{"message": "signature"}]}
    return json.dumps({"labels": {"id": "edge-1", "version": "1.0"},
                       "bundles": {"mcp": entry}})


def test_status_reports_drive_the_fleet_view(gateway):
    gw, token = gateway
    assert _status(token, _report(1)).status_code == 204
    gw.refresh_from_db()
    assert gw.active_revision == 1 and gw.last_error == "" and gw.last_status_at
    assert _status(token, _report(1, "bundle_error", "verification failed")).status_code == 204
    gw.refresh_from_db()
    assert gw.active_revision == 1
    assert gw.last_error.startswith("bundle_error: verification failed")
    actions = list(AuditEvent.objects.filter(object_id=str(gw.pk), actor_type="gateway")
                   .values_list("action", flat=True))
    assert sorted(actions) == ["gateway.activated_revision", "gateway.bundle_error"]
    # The same report again is telemetry only: no new audit event.
    _status(token, _report(1, "bundle_error", "verification failed"))
    assert AuditEvent.objects.filter(actor_type="gateway").count() == 2
    assert Client().post(f"/api/v1/gateway/status/{'alpha'}", _report(1), content_type=
                         "application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
                         ).status_code == 204
    assert Client().post("/api/v1/gateway/status/bravo", _report(1), content_type=
                         "application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
                         ).status_code == 404


@pytest.mark.parametrize(("body", "message"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "is a JSON object"),
    ('{"bundles": []}', "bundles: must be an object"),
    ('{"bundles": {"mcp": {"errors": "x"}}}', "bundles.mcp.errors: must be a list"),
])
def test_malformed_status_is_400_with_a_message(gateway, body, message):
    _, token = gateway
    response = _status(token, body)
    assert response.status_code == 400
    assert message in response.json()["message"]


def test_oversized_status_is_413(gateway, settings):
    settings.GATEWAY_MAX_BODY_BYTES = 2048
    _, token = gateway
    big = json.dumps({"labels": {"x": "y" * 4096}})
    assert _status(token, big).status_code == 413
    assert _status(None or "bad", "{}").status_code == 401


# --- Long polls -------------------------------------------------------------------------------

def _later(seconds, fn):
    def run():
        time.sleep(seconds)
        try:
            fn()
        finally:
            connection.close()
    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.django_db(transaction=True)
def test_long_poll_times_out_with_304_in_the_long_poll_type(tenant_a):
    small_registry(tenant_a)
    _, token = make_gateway(tenant_a)
    publish.bundle_publish(tenant=tenant_a, trigger="test")
    etag = _get(token)["ETag"]
    started = time.monotonic()
    response = _get(token, if_none_match=etag, prefer="wait=1")
    assert response.status_code == 304
    assert response["Content-Type"] == "application/vnd.openpolicyagent.bundles"
    assert time.monotonic() - started >= 0.9


@pytest.mark.django_db(transaction=True)
def test_long_poll_wakes_on_a_publish(tenant_a):
    world = small_registry(tenant_a)
    _, token = make_gateway(tenant_a)
    publish.bundle_publish(tenant=tenant_a, trigger="test")
    etag = _get(token)["ETag"]

    def change():
        registry.grant_revoke(tenant=tenant_a, actor=SYSTEM, grant=world["grant"], reason="x")
        publish.bundle_publish(tenant=tenant_a, trigger="test")

    thread = _later(0.5, change)
    started = time.monotonic()
    response = _get(token, if_none_match=etag, prefer="wait=20")
    thread.join()
    assert response.status_code == 200
    assert response["Content-Type"] == "application/vnd.openpolicyagent.bundles"
    assert data_of(response.content)["grants"] == []
    assert time.monotonic() - started < 10


@pytest.mark.django_db(transaction=True)
def test_a_token_revoked_mid_poll_ends_the_poll_with_401(tenant_a):
    small_registry(tenant_a)
    gw, token = make_gateway(tenant_a)
    publish.bundle_publish(tenant=tenant_a, trigger="test")
    etag = _get(token)["ETag"]
    thread = _later(0.5, lambda: services.gateway_token_revoke(
        tenant=tenant_a, actor=SYSTEM, token=gw.tokens.get()))
    response = _get(token, if_none_match=etag, prefer="wait=20")
    thread.join()
    assert response.status_code == 401


def test_prefer_wait_is_capped(gateway, settings):
    from bundles.gateway_api import _wait_seconds

    class R:
        headers = {"Prefer": "respond-async, wait=100000"}
    assert _wait_seconds(R()) == 300
    R.headers = {"Prefer": "wait=7"}
    assert _wait_seconds(R()) == 7
    R.headers = {}
    assert _wait_seconds(R()) is None


def test_accel_redirect_offload(gateway, settings):
    settings.BUNDLE_ACCEL_REDIRECT = "/_bundles/"
    _, token = gateway
    response = _get(token)
    assert response.status_code == 200 and response.content == b""
    sha = response["ETag"].strip('"')
    assert response["X-Accel-Redirect"] == f"/_bundles/{sha}.tar.gz"
    from bundles import store

    assert store.local_path(sha).exists()


def test_local_copies_are_group_readable_and_take_the_setgid_directory_group(
        gateway, settings, tmp_path):
    """nginx's workers (another user) read offloaded bundles through the directory's group: a
    copy is 0640 whatever the umask, and inherits the group of a setgid directory (2750)."""
    import grp
    import stat

    from bundles import store

    directory = tmp_path / "bundles"
    directory.mkdir()
    other = next((g for g in os.getgroups() if g != os.getegid()), None)
    if os.geteuid() == 0:
        other = grp.getgrnam("nogroup").gr_gid
    if other is not None:
        os.chown(directory, -1, other)
    directory.chmod(0o2750)
    settings.BUNDLE_LOCAL_DIR = directory
    settings.BUNDLE_ACCEL_REDIRECT = "/_bundles/"
    old_umask = os.umask(0o077)
    try:
        sha = _get(gateway[1])["ETag"].strip('"')
    finally:
        os.umask(old_umask)
    info = store.local_path(sha).stat()
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert info.st_gid == (other if other is not None else os.getegid())
    assert [p.name for p in directory.iterdir()] == [f"{sha}.tar.gz"]  # no temporary left


def test_the_local_copy_is_refetched_when_damaged(gateway):
    from bundles import store

    _, token = gateway
    first = _get(token)
    sha = first["ETag"].strip('"')
    store._memory.clear()
    store.local_path(sha).write_bytes(gzip.compress(b"tampered"))
    assert _get(token).content == first.content


def test_contact_and_token_use_times_reach_the_database(gateway):
    gw, token = gateway
    assert gw.last_contact_at is None
    _get(token)
    assert services.gateway_contacts_flush() == 1
    gw.refresh_from_db()
    assert gw.last_contact_at is not None
    assert gw.tokens.get().last_used_at is not None
    assert services.gateway_contacts_flush() == 0  # nothing newer since


def test_served_bundles_verify_across_a_key_rotation(gateway, tenant_a, world, tmp_path,
                                                     django_capture_on_commit_callbacks):
    """What a gateway does: fetch JWKS and bundle over HTTP, verify, keep the state; through a
    scheduled rotation (the new key is in the JWKS before it signs), then the old key's
    revocation. Also with the reference CLI, as a gateway vendor would run it."""
    import subprocess
    import sys

    _, token = gateway
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")

    def fetch():
        jwks = client.get("/api/v1/gateway/keys/alpha").json()
        return client.get(BUNDLE.format("alpha")).content, jwks

    content, jwks = fetch()
    old_content = content
    last = verify_bundle(content, jwks=jwks, tenant="alpha").revision_number
    with django_capture_on_commit_callbacks(execute=True):
        pending = services.signing_key_rotate(tenant=tenant_a, actor=SYSTEM)
    content, jwks = fetch()
    assert pending.kid in {k["kid"] for k in jwks["keys"]}
    with django_capture_on_commit_callbacks(execute=True):
        services.signing_keys_activate_due(now=pending.activate_after)
        publish.bundle_publish(tenant=tenant_a, trigger="test")
    content, jwks = fetch()
    verified = verify_bundle(content, jwks=jwks, tenant="alpha", last_revision=last)
    assert verified.kid == pending.kid and verified.revision_number == last + 1

    bundle_file, jwks_file, state = (tmp_path / "b.tar.gz", tmp_path / "jwks.json",
                                     tmp_path / "state.json")
    bundle_file.write_bytes(content)
    jwks_file.write_text(json.dumps(jwks))
    state.write_text(json.dumps({"tenant": "alpha", "revision": last}))
    run = subprocess.run([sys.executable, "-m", "gateway.verify", str(bundle_file), "--jwks",
                          str(jwks_file), "--state", str(state)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(state.read_text())["revision"] == last + 1
    # Replaying the older bundle is a rollback, refused.
    bundle_file.write_bytes(old_content)
    rerun = subprocess.run([sys.executable, "-m", "gateway.verify", str(bundle_file), "--jwks",
                            str(jwks_file), "--state", str(state)], capture_output=True,
                           text=True, timeout=60)
    assert rerun.returncode == 1 and "rollback" in rerun.stderr
