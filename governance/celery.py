"""Celery application: broker and limits come from Django settings (CELERY_*).

A task carries the request id of the unit of work that queued it (message header
``tollgate_request_id``), and the worker runs the task inside that context: the JSON log lines
the task writes and the audit events it records name the same request id as the web request
(or the beat tick) that caused them. Tasks queued outside any context get their task id.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import before_task_publish, task_postrun, task_prerun

from governance import context

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "governance.settings")

app = Celery("governance")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

REQUEST_ID_HEADER = "tollgate_request_id"
_tokens: dict[str, object] = {}


@before_task_publish.connect
def _stamp_request_id(headers: dict | None = None, **_: object) -> None:
    ctx = context.current()
    if ctx is not None and headers is not None:
        headers.setdefault(REQUEST_ID_HEADER, ctx.request_id)


@task_prerun.connect
def _enter_request_context(task_id: str | None = None, task=None, **_: object) -> None:
    request = getattr(task, "request", None)
    request_id = getattr(request, REQUEST_ID_HEADER, None) if request is not None else None
    if not request_id:
        outer = context.current()  # eager execution inside a request: keep its id
        request_id = outer.request_id if outer is not None else (task_id or
                                                                 context.new_request_id())
    if task_id:
        _tokens[task_id] = context.activate(context.RequestContext(request_id=request_id))


@task_postrun.connect
def _leave_request_context(task_id: str | None = None, **_: object) -> None:
    token = _tokens.pop(task_id, None) if task_id else None
    if token is not None:
        context.deactivate(token)

