"""The gateway API's own, short middleware chain (see ``governance.asgi``).

Machines calling ``/api/v1/gateway/`` need none of the browser machinery — sessions, CSRF,
messages, the user, login throttling, CSP — and Django's ``MiddlewareMixin`` classes run their
hooks through a thread in async mode, one thread for the whole process. So the gateway API gets
a chain of async-native middleware only: the request id (``RequestContextMiddleware``) and the
transport security below. A test keeps it that way.
"""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponsePermanentRedirect


def GatewayTransportSecurityMiddleware(get_response):  # noqa: N802 - Django middleware naming
    """HTTPS redirect and HSTS as ``SecurityMiddleware`` does them, plus nosniff and no framing.
    Async only: it is used by the gateway handler, which runs async."""
    if not iscoroutinefunction(get_response):  # pragma: no cover - the handler is always async
        raise TypeError("GatewayTransportSecurityMiddleware needs an async handler")

    async def middleware(request: HttpRequest) -> HttpResponse:
        if settings.SECURE_SSL_REDIRECT and not request.is_secure():
            host = settings.SECURE_SSL_HOST or request.get_host()
            return HttpResponsePermanentRedirect(f"https://{host}{request.get_full_path()}")
        response = await get_response(request)
        if settings.SECURE_HSTS_SECONDS and request.is_secure():
            value = f"max-age={settings.SECURE_HSTS_SECONDS}"
            if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
                value += "; includeSubDomains"
            if settings.SECURE_HSTS_PRELOAD:
                value += "; preload"
            response.setdefault("Strict-Transport-Security", value)
        response.setdefault("X-Content-Type-Options", "nosniff")
        response.setdefault("X-Frame-Options", "DENY")
        response.setdefault("Referrer-Policy", "no-referrer")
        return response

    return markcoroutinefunction(middleware)
