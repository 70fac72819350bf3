"""Request context (request id, client IP) and the Content-Security-Policy header."""

from __future__ import annotations

import re

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import sync_and_async_middleware

from governance import context

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


def client_ip(request: HttpRequest) -> str | None:
    """REMOTE_ADDR, or the address the trusted proxies saw (TRUSTED_PROXY_COUNT)."""
    proxies = settings.AXES_IPWARE_PROXY_COUNT or 0
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if proxies and forwarded:
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if len(hops) >= proxies:
            return hops[-proxies]
    return request.META.get("REMOTE_ADDR") or None


def _begin(request: HttpRequest):
    incoming = request.headers.get("X-Request-ID", "")
    request_id = incoming if _REQUEST_ID.match(incoming) else context.new_request_id()
    request.request_id = request_id
    return context.activate(
        context.RequestContext(
            request_id=request_id,
            ip=client_ip(request),
            user_agent=request.headers.get("User-Agent", "")[:300],
        )
    )


@sync_and_async_middleware
def RequestContextMiddleware(get_response):  # noqa: N802 - Django middleware naming
    """Give every request an id (echoed as X-Request-ID) that logs and audit events carry."""
    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> HttpResponse:
            token = _begin(request)
            try:
                response = await get_response(request)
            finally:
                context.deactivate(token)
            response["X-Request-ID"] = request.request_id
            return response

        return markcoroutinefunction(middleware)

    def middleware(request: HttpRequest) -> HttpResponse:  # type: ignore[no-redef]
        token = _begin(request)
        try:
            response = get_response(request)
        finally:
            context.deactivate(token)
        response["X-Request-ID"] = request.request_id
        return response

    return middleware


def _origin(url: str) -> str:
    match = re.match(r"^(https?://[^/]+)", url)
    return match.group(1) if match else ""


def content_security_policy() -> str:
    form_action = " ".join(
        ["'self'"] + sorted({_origin(u) for u in settings.CSP_FORM_ACTION_EXTRA if _origin(u)})
    )
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "font-src 'self'",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
            f"form-action {form_action}",
        ]
    )


def _secure_headers(response: HttpResponse) -> HttpResponse:
    response.setdefault("Content-Security-Policy", content_security_policy())
    response.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
    response.setdefault("Cross-Origin-Resource-Policy", "same-origin")
    return response


@sync_and_async_middleware
def ContentSecurityPolicyMiddleware(get_response):  # noqa: N802
    """A strict CSP (no inline script or style) plus a few more security headers."""
    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> HttpResponse:
            return _secure_headers(await get_response(request))

        return markcoroutinefunction(middleware)

    def middleware(request: HttpRequest) -> HttpResponse:  # type: ignore[no-redef]
        return _secure_headers(get_response(request))

    return middleware
