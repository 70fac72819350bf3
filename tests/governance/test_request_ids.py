"""One request id from the web request to the worker: the JSON log lines and audit events of a
task carry the id of the request that queued it (governance/celery.py)."""

from __future__ import annotations

import json
import logging

import pytest

from governance import context
from governance.audit.models import AuditEvent
from governance.celery import (
    REQUEST_ID_HEADER,
    _enter_request_context,
    _leave_request_context,
    _stamp_request_id,
)
from governance.logging import JsonFormatter, RequestContextFilter
from tests.worker_support import celery_worker_process  # noqa: F401 - fixture


def _json_lines() -> tuple[list[dict], logging.Handler]:
    """A handler formatting records as production does (filter + JSON), and what it kept."""
    lines: list[dict] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(JsonFormatter().format(record)))

    handler = Keep()
    handler.addFilter(RequestContextFilter())
    return lines, handler


def test_a_queued_task_carries_the_request_id_of_its_caller():
    headers: dict = {}
    token = context.activate(context.RequestContext(request_id="req-from-web-1"))
    try:
        _stamp_request_id(headers=headers)
    finally:
        context.deactivate(token)
    assert headers == {REQUEST_ID_HEADER: "req-from-web-1"}

    outside: dict = {}
    _stamp_request_id(headers=outside)
    assert outside == {}


def test_the_worker_runs_a_task_inside_the_request_context_it_was_queued_from():
    class Request:
        tollgate_request_id = "req-from-web-2"

    class Task:
        request = Request()

    _enter_request_context(task_id="t-1", task=Task())
    try:
        assert context.current().request_id == "req-from-web-2"
    finally:
        _leave_request_context(task_id="t-1")
    assert context.current() is None

    class Bare:
        request = object()

    _enter_request_context(task_id="t-2", task=Bare())
    try:
        assert context.current().request_id == "t-2"  # queued by beat: the task's own id
    finally:
        _leave_request_context(task_id="t-2")


def test_the_access_log_line_and_the_audit_event_of_one_request_share_its_id(
        client, alice, tenant_a):
    client.force_login(alice)
    lines, handler = _json_lines()
    access = logging.getLogger("governance.access")
    access.addHandler(handler)
    try:
        response = client.post(f"/t/{tenant_a.slug}/scopes/new/",
                               {"name": "ids:one", "risk_level": "low"},
                               HTTP_X_REQUEST_ID="req-one-line-42")
    finally:
        access.removeHandler(handler)
    assert response["X-Request-ID"] == "req-one-line-42"
    event = AuditEvent.objects.filter(tenant=tenant_a, action="scope.created").get()
    assert event.request_id == "req-one-line-42"
    [line] = lines
    assert line["request_id"] == "req-one-line-42"
    assert (line["method"], line["path"], line["status"], line["user"]) == (
        "POST", f"/t/{tenant_a.slug}/scopes/new/", response.status_code, alice.username)
    assert line["duration_ms"] >= 0


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_bundle_a_web_request_caused_is_audited_with_that_requests_id(
        celery_worker_process, as_user, alice, tenant_a):  # noqa: F811 - fixture
    import os
    if not os.environ.get("REDIS_URL"):
        pytest.skip("needs REDIS_URL (the worker and this test share the Redis broker)")
    worker = celery_worker_process()
    response = as_user(alice).post(f"/api/v1/t/{tenant_a.slug}/scopes/",
                                   {"name": "ids:two", "tools": []}, format="json",
                                   HTTP_X_REQUEST_ID="req-to-worker-77")
    assert response.status_code == 201, response.content
    worker.wait_until(lambda: AuditEvent.objects.filter(
        tenant=tenant_a, action="bundle.published").exists())
    published = AuditEvent.objects.get(tenant=tenant_a, action="bundle.published")
    assert published.request_id == "req-to-worker-77"
    assert "req-to-worker-77" in worker.log()


def test_djangos_own_line_for_a_returned_4xx_names_the_request_id(client, db):
    lines, handler = _json_lines()
    django_request = logging.getLogger("django.request")
    django_request.addHandler(handler)
    try:
        response = client.post("/login/", {"username": "nobody", "password": "wrong"},
                               HTTP_X_REQUEST_ID="req-four-oh-x1")
    finally:
        django_request.removeHandler(handler)
    assert response.status_code == 400
    assert lines[-1]["message"] == "Bad Request: /login/"
    assert lines[-1]["request_id"] == "req-four-oh-x1"
