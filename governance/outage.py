"""The database is down (PostgreSQL restarting, failing over, unreachable): answer 503 with
``Retry-After``, not a 500 with a logged traceback, and recover on the next request (Django opens
a connection per request, with health checks; nothing needs restarting).

Three places catch it: ``DatabaseUnavailableMiddleware.process_exception`` (views of the web UI
and the admin API), ``gateway_exception`` (the gateway API's handler, see ``governance.asgi``)
and ``handler500`` (a middleware that touched the database itself, e.g. saving a session).
"""

from __future__ import annotations

import logging

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template import loader
from django.utils.deprecation import MiddlewareMixin

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
MESSAGE = "The database is unavailable; retry shortly."


def is_outage(exc: BaseException | None) -> bool:
    """The database unreachable or failing transiently (connection refused or lost, server
    shutting down, serialization failure, timeout), as opposed to a query error such as an
    integrity error (a bug, still a 500)."""
    return isinstance(exc, OperationalError | InterfaceError)


def unavailable(request: HttpRequest) -> HttpResponse:
    """503 + Retry-After: JSON ``{"code", "message"}`` under /api/, a plain page elsewhere
    (rendered without context processors: they would query the database again)."""
    log.warning("database unavailable: %s %s answered 503", request.method, request.path)
    if request.path_info.startswith("/api/"):
        response: HttpResponse = JsonResponse({"code": "unavailable", "message": MESSAGE},
                                              status=503)
    else:
        response = HttpResponse(loader.render_to_string("503.html"), status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    response["Cache-Control"] = "no-store"
    return response


class DatabaseUnavailableMiddleware(MiddlewareMixin):
    """A view that failed because the database is unreachable answers 503."""

    def process_exception(self, request: HttpRequest, exception: Exception):
        return unavailable(request) if is_outage(exception) else None


def gateway_exception(request: HttpRequest, exception: Exception) -> HttpResponse | None:
    """The gateway handler's exception hook (same contract as ``process_exception``)."""
    return unavailable(request) if is_outage(exception) else None
