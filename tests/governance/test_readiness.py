"""/readyz (readiness: database migrated, Redis or the embedded broker and cache, bundle store)
and /healthz (liveness only)."""

from __future__ import annotations

import pytest
from django.db import OperationalError, connection
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder

from tests.outage_support import free_port

pytestmark = pytest.mark.django_db


def _ready(client, expected_status):
    response = client.get("/readyz")
    assert response.status_code == expected_status, response.content
    assert response["Cache-Control"] == "no-store"
    return response.json()


def test_it_is_ready_on_a_migrated_database_with_redis(client, redis_url, settings):
    settings.REDIS_URL = redis_url
    assert _ready(client, 200) == {"status": "ready", "checks": {
        "database": "ok", "redis": "ok", "bundle_store": "ok"}}


def test_the_embedded_default_checks_the_filesystem_broker_and_the_database_cache(
        client, settings, tmp_path):
    settings.REDIS_URL = ""
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"data_folder_in": str(tmp_path / "queue")}
    assert _ready(client, 200)["checks"] == {
        "database": "ok", "broker": "ok", "cache": "ok", "bundle_store": "ok"}
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"data_folder_in": str(blocker / "queue")}
    assert _ready(client, 503)["checks"]["broker"] == "not writable"


def test_an_unapplied_migration_is_not_ready_and_named(client):
    """The database answers but lacks a migration the code has (new code, old schema)."""
    app, name = sorted(MigrationLoader(None, ignore_no_migrations=True).graph.leaf_nodes())[0]
    MigrationRecorder(connection).record_unapplied(app, name)  # rolled back with the test
    body = _ready(client, 503)
    assert body["status"] == "not_ready"
    assert body["checks"]["database"] == f"1 unapplied migration(s): {app}.{name}"
    assert body["checks"]["bundle_store"] == "ok"


def test_an_unreachable_database_is_not_ready(client, monkeypatch):
    def refused():
        raise OperationalError('connection to server at "db.internal" failed: password secret')

    monkeypatch.setattr(connection, "ensure_connection", refused)
    body = _ready(client, 503)
    assert body["checks"]["database"] == "unreachable"
    assert "secret" not in str(body) and "db.internal" not in str(body)


def test_unreachable_redis_is_not_ready_and_hides_the_url(client, settings):
    settings.REDIS_URL = f"redis://:hunter2@127.0.0.1:{free_port()}/0"  # nothing listens there
    body = _ready(client, 503)
    assert body == {"status": "not_ready", "checks": {
        "database": "ok", "redis": "unreachable", "bundle_store": "ok"}}
    assert "hunter2" not in str(body)


def test_an_unwritable_bundle_store_is_not_ready(client, settings, tmp_path):
    # As root permissions do not stop writes; a path under a regular file does (ENOTDIR).
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the bundle directory should be")
    settings.BUNDLE_LOCAL_DIR = blocker / "bundles"
    body = _ready(client, 503)
    assert body["checks"]["bundle_store"] == "not writable"
    assert body["checks"]["database"] == "ok"
    assert str(tmp_path) not in str(body)


def test_the_bundle_store_is_created_when_missing_and_left_clean(client, settings, tmp_path):
    settings.BUNDLE_LOCAL_DIR = tmp_path / "new" / "bundles"
    _ready(client, 200)
    assert list((tmp_path / "new" / "bundles").iterdir()) == []


def test_liveness_touches_no_database(client, django_assert_num_queries, monkeypatch):
    def refused():
        raise OperationalError("down")

    with django_assert_num_queries(0):
        monkeypatch.setattr(connection, "ensure_connection", refused)
        response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
