"""Celery application: broker and limits come from Django settings (CELERY_*).

A task carries the request id of the unit of work that queued it (message header
``tollgate_request_id``), and the worker runs the task inside that context: the JSON log lines
the task writes and the audit events it records name the same request id as the web request
(or the beat tick) that caused them. Tasks queued outside any context get their task id.

The worker and beat announce themselves in one JSON log line like every other line (not
Celery's ASCII-art banner printed on stdout): ``TollgateCelery`` binds both to subclasses whose
banner is a log record.
"""

from __future__ import annotations

import logging
import os

from celery import Celery
from celery.apps import worker as celery_worker
from celery.apps.beat import Beat
from celery.apps.worker import Worker
from celery.signals import before_task_publish, task_postrun, task_prerun, worker_shutting_down
from kombu.utils.objects import cached_property

from governance import context

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "governance.settings")

log = logging.getLogger(__name__)


class QuietWorker(Worker):
    """``celery worker`` whose start-up summary is one log line (``--quiet`` still silences it)."""

    def emit_banner(self) -> None:
        queues = ", ".join(sorted(self.app.amqp.queues.keys())) or "-"
        log.info("celery worker %s starting: concurrency %s, queues %s, broker %s, %d tasks",
                 self.hostname, self.concurrency, queues, self.app.connection().as_uri(),
                 len([name for name in self.app.tasks if not name.startswith("celery.")]))

    def install_platform_tweaks(self, worker: Worker) -> None:
        super().install_platform_tweaks(worker)
        # The same SIGTERM handler, minus its plain-text line on stdout: _log_shutdown says it.
        celery_worker.install_worker_term_handler(worker, verbose=False)


class QuietBeat(Beat):
    """``celery beat`` whose start-up summary is one log line instead of a printed banner."""

    def run(self) -> None:  # Celery's prints "celery beat vX is starting." first
        self.init_loader()
        self.set_process_title()
        self.start_scheduler()

    def start_scheduler(self) -> None:
        if not self.quiet:
            log.info("celery beat starting: broker %s, schedule %s, %d entries",
                     self.app.connection().as_uri(), self.schedule,
                     len(self.app.conf.beat_schedule or {}))
        self.quiet = True
        super().start_scheduler()


@worker_shutting_down.connect
def _log_shutdown(sender: str | None = None, sig: str = "", how: str = "", **_: object) -> None:
    log.info("celery worker %s: %s shutdown on %s", sender, how.lower(), sig)


class TollgateCelery(Celery):
    @cached_property
    def Worker(self):  # noqa: N802 - Celery's name
        return self.subclass_with_self(QuietWorker)

    @cached_property
    def Beat(self):  # noqa: N802 - Celery's name
        return self.subclass_with_self(QuietBeat)


app = TollgateCelery("governance")
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

