"""Request context (request id, client IP) and the Content-Security-Policy header."""

from __future__ import annotations

import ipaddress
import logging
import re
import time

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import sync_and_async_middleware

from governance import context

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
access_log = logging.getLogger("governance.access")
# Gateway bundle and key polls are the fleet's heartbeat (thousands a second): logged at DEBUG,
# so the default INFO access log has one line per human or API action, not per poll.
_HEARTBEAT = re.compile(r"^/api/v1/gateway/(bundles|keys)/")


def client_ip(request: HttpRequest) -> str | None:
    """The client's address, for every use (sign-in lockouts through django-axes'
    AXES_CLIENT_IP_CALLABLE, token brute-force limits, audit IPs, /metrics networks, logs).

    REMOTE_ADDR (the TCP peer: the ASGI server runs with --no-proxy-headers) unless
    TRUSTED_PROXY_COUNT proxies stand in front; then the X-Forwarded-For entry the outermost
    trusted proxy appended (the TRUSTED_PROXY_COUNT-th from the right). Entries to its left are
    whatever the client sent and are never believed; a missing or malformed entry falls back to
    REMOTE_ADDR (the nearest proxy)."""
    proxies = settings.TRUSTED_PROXY_COUNT
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if proxies and forwarded:
        hops = [hop.strip() for hop in forwarded.split(",")]
        if len(hops) >= proxies:
            try:
                return str(ipaddress.ip_address(hops[-proxies]))
            except ValueError:
                pass
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


def _log_access(request: HttpRequest, response: HttpResponse, started: float) -> None:
    """One JSON line per request (inside its context, so it carries the request id)."""
    level = logging.DEBUG if _HEARTBEAT.match(request.path_info) else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    # Only a user the request already loaded (never a session query, nor a sync call in async).
    user = getattr(request, "_cached_user", None)
    access_log.log(level, "%s %s %s", request.method, request.path, response.status_code,
                   extra={"fields": {
                       "method": request.method, "path": request.path,
                       "status": response.status_code,
                       "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                       "user": user.get_username() if user is not None and
                       user.is_authenticated else None}})


@sync_and_async_middleware
def RequestContextMiddleware(get_response):  # noqa: N802 - Django middleware naming
    """Give every request an id (echoed as X-Request-ID) that logs and audit events carry, and
    write the access log line."""
    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> HttpResponse:
            started = time.perf_counter()
            token = _begin(request)
            try:
                response = await get_response(request)
                _log_access(request, response, started)
            finally:
                context.deactivate(token)
            response["X-Request-ID"] = request.request_id
            return response

        return markcoroutinefunction(middleware)

    def middleware(request: HttpRequest) -> HttpResponse:  # type: ignore[no-redef]
        started = time.perf_counter()
        token = _begin(request)
        try:
            response = get_response(request)
            _log_access(request, response, started)
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
