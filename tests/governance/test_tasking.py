"""Queueing tasks (governance/tasking.py) and the task names queued messages and beat use."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from celery import current_app
from django.conf import settings
from django.db import transaction
from kombu.exceptions import OperationalError

from governance import tasking
from governance.audit.services import Actor
from registry import services, sync, tasks
from registry.models import ServerSync

SYSTEM = Actor.system("test")

# The names of every task as they were before the apps left governance/ (issue 18), and of the
# tasks added since: messages already queued and beat schedules name tasks by these, so they
# never change.
FROZEN_TASK_NAMES = sorted([
    "approvals.tasks.expire_requests",
    "governance.alerts.tasks.evaluate",  # frozen task name
    "governance.audit.tasks.verify_audit_chains",
    "governance.bundles.tasks.build_bundle",  # frozen task name
    "governance.bundles.tasks.sweep",  # frozen task name
    "governance.decisions.tasks.purge",  # frozen task name
    "governance.evidence.tasks.build_pack",  # frozen task name
    "governance.evidence.tasks.sweep",  # frozen task name
    "governance.exports.tasks.run_exporter",  # frozen task name
    "governance.exports.tasks.sweep",  # frozen task name
    "governance.notifications.tasks.deliver",  # frozen task name
    "governance.notifications.tasks.sweep",  # frozen task name
    "registry.tasks.resync_servers",
    "registry.tasks.sync_server",
    # Tasks added since: named after the module they live in.
    "decision_logs.tasks.replay",
    "decision_logs.tasks.replay_sweep",
    "governance.tenancy.tasks.clear_expired_sessions",
])


def test_every_task_keeps_its_name():
    current_app.autodiscover_tasks(force=True)  # every installed app's tasks module
    ours = sorted(name for name in current_app.tasks if not name.startswith("celery."))
    assert ours == FROZEN_TASK_NAMES


def test_every_beat_entry_names_a_registered_task():
    names = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert names <= set(FROZEN_TASK_NAMES)
    assert len(names) == len(settings.CELERY_BEAT_SCHEDULE) == 11


def test_beat_clears_expired_sessions_every_hour(db):
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session
    from django.utils import timezone

    from governance.tenancy.tasks import clear_expired_sessions

    entry = settings.CELERY_BEAT_SCHEDULE["clear-expired-sessions"]
    assert entry == {"task": clear_expired_sessions.name, "schedule": timedelta(hours=1)}
    live, old = SessionStore(), SessionStore()
    live["who"], old["who"] = "alice", "bob"
    live.create()
    old.create()
    Session.objects.filter(session_key=old.session_key).update(
        expire_date=timezone.now() - timedelta(seconds=1))
    clear_expired_sessions.apply().get()  # as the worker runs it
    assert list(Session.objects.values_list("session_key", flat=True)) == [live.session_key]


def _broker_down(*args, **kwargs):
    raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


def test_a_sync_request_commits_when_the_broker_is_down_and_the_sweep_fails_it_later(
        tenant_a, monkeypatch, caplog, django_capture_on_commit_callbacks):
    monkeypatch.setattr(tasks.sync_server, "delay", _broker_down)
    server = services.server_create(tenant=tenant_a, actor=SYSTEM, name="payroll",
                                    transport="streamable-http", url="http://127.0.0.1:9/mcp")
    server = services.server_transition(tenant=tenant_a, actor=SYSTEM, server=server,
                                        status="active")
    with caplog.at_level(logging.WARNING, logger="governance.tasking"), \
            django_capture_on_commit_callbacks(execute=True):
        run, created = sync.server_sync_request(tenant=tenant_a, actor=SYSTEM, server=server)
    assert created is True
    run.refresh_from_db()
    assert run.status == ServerSync.Status.QUEUED  # the request stands
    assert [r.getMessage() for r in caplog.records if r.name == "governance.tasking"] == [
        f"could not enqueue registry.tasks.sync_server({run.pk},); the periodic sweep will "
        "send it"]
    # The beat's sweep fails the run that never started (the next scheduled sync queues anew).
    later = run.created_at + timedelta(seconds=settings.REGISTRY_SYNC_QUEUE_EXPIRY + 1)
    assert sync.syncs_fail_stale(now=later) == 1
    run.refresh_from_db()
    assert (run.status, run.error_code) == (ServerSync.Status.FAILED, "not_started")


def test_enqueue_on_commit_sends_after_the_commit_and_never_after_a_rollback(
        db, monkeypatch, django_capture_on_commit_callbacks):
    sent = []
    monkeypatch.setattr(tasks.sync_server, "delay", lambda *a, **kw: sent.append((a, kw)))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        tasking.enqueue_on_commit("registry.tasks.sync_server", 7)
        assert sent == []
    assert len(callbacks) == 1 and sent == [((7,), {})]
    with pytest.raises(RuntimeError), transaction.atomic():
        tasking.enqueue_on_commit("registry.tasks.sync_server", 8)
        raise RuntimeError("rolled back")
    assert sent == [((7,), {})]


def test_enqueue_with_a_countdown_and_a_broker_failure_calls_on_failure(monkeypatch, caplog):
    seen = []
    monkeypatch.setattr(tasks.sync_server, "apply_async",
                        lambda args, countdown: seen.append((args, countdown)))
    assert tasking.enqueue("registry.tasks.sync_server", 3, countdown=0.5) is True
    assert seen == [([3], 0.5)]
    monkeypatch.setattr(tasks.sync_server, "apply_async", _broker_down)
    failed = []
    with caplog.at_level(logging.WARNING, logger="governance.tasking"):
        assert tasking.enqueue("registry.tasks.sync_server", 4, countdown=0.5,
                               on_failure=lambda: failed.append(4)) is False
    assert failed == [4]
    assert [r.levelname for r in caplog.records if r.name == "governance.tasking"] == ["WARNING"]
