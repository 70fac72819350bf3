"""ASGI entry point, served by uvicorn.

Two Django handlers share one process, one URLconf and one set of settings: everything goes
through the full middleware stack (sessions, CSRF, auth, CSP, …) except ``/api/v1/gateway/``,
which machines call and which gets ``GATEWAY_MIDDLEWARE``, a short chain of async-native
middleware, so the bundle poll and long polls never hop to a thread (see
``bundles/middleware.py``).

Under a path prefix (``settings.SCRIPT_NAME``, from ``FORCE_SCRIPT_NAME`` or the path of
``TOLLGATE_BASE_URL``) requests outside it are 404 here, before Django.

On SIGTERM held long polls are answered at once so the process stops within seconds
(``governance/draining.py``; the hook is chained in front of uvicorn's on the first call).
"""

from __future__ import annotations

import os
import sys

from django.core.exceptions import ImproperlyConfigured

from governance import draining

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "governance.settings")

GATEWAY_PREFIX = "/api/v1/gateway/"

try:
    import django
    from django.conf import settings
    from django.core.asgi import get_asgi_application
    from django.core.handlers.asgi import ASGIHandler
    from django.core.handlers.exception import convert_exception_to_response
    from django.utils.module_loading import import_string

    django_application = get_asgi_application()
except ImproperlyConfigured as exc:
    # Say which variable is wrong instead of a traceback, and do not start.
    sys.stderr.write(f"Configuration error: {exc}\n")
    raise SystemExit(2) from None


class GatewayASGIHandler(ASGIHandler):
    """Django's ASGI handler with ``settings.GATEWAY_MIDDLEWARE`` instead of ``MIDDLEWARE``."""

    def load_middleware(self, is_async: bool = False) -> None:
        from governance.outage import gateway_exception

        self._view_middleware = []
        self._template_response_middleware = []
        # The database unreachable: 503 + Retry-After (runs on a thread, only after an error).
        self._exception_middleware = [gateway_exception]
        handler = convert_exception_to_response(
            self._get_response_async if is_async else self._get_response)
        for path in reversed(settings.GATEWAY_MIDDLEWARE):
            handler = convert_exception_to_response(import_string(path)(handler))
        self._middleware_chain = handler


gateway_application = GatewayASGIHandler()


_signal_hook = False


async def application(scope, receive, send):
    global _signal_hook
    if not _signal_hook:
        # First call: the server's SIGTERM/SIGINT handlers are in place now (uvicorn installs
        # them before it loads the application); chain the draining one in front of them.
        _signal_hook = True
        draining.install_signal_hook()
    if scope["type"] == "http":
        path = scope.get("path", "")
        prefix = settings.SCRIPT_NAME
        if prefix and not path.startswith(prefix + "/"):
            # Served under a prefix (FORCE_SCRIPT_NAME): nothing outside it; the prefix alone
            # is its home page.
            if path == prefix:
                return await _plain(send, 301, b"", [(b"location", (prefix + "/").encode())])
            return await _plain(send, 404, b"Not found.\n", [])
        # uvicorn puts --root-path in front of the path (an operator whose proxy strips the
        # prefix); Django takes it off again, and so does the routing to the gateway handler.
        below = path.removeprefix(prefix or scope.get("root_path", ""))
        if below.startswith(GATEWAY_PREFIX):
            return await gateway_application(scope, receive, send)
    return await django_application(scope, receive, send)


async def _plain(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


__all__ = ["application", "django", "django_application", "gateway_application"]
