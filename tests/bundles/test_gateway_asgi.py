"""The ASGI application routes /api/v1/gateway/ through its own chain of async-native
middleware (no thread hop per request), everything else through the full stack."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync, iscoroutinefunction
from asgiref.testing import ApplicationCommunicator
from django.conf import settings
from django.utils.deprecation import MiddlewareMixin
from django.utils.module_loading import import_string

from bundles import publish
from governance.asgi import application
from tests.bundle_support import make_gateway, small_registry


def test_the_gateway_chain_is_async_native():
    async def handler(request):  # pragma: no cover - never called
        return None

    for path in settings.GATEWAY_MIDDLEWARE:
        factory = import_string(path)
        assert not (isinstance(factory, type) and issubclass(factory, MiddlewareMixin)), path
        assert iscoroutinefunction(factory(handler)), path


def _call(path: str, headers: list[tuple[bytes, bytes]] = ()) -> tuple[int, dict, bytes]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": [(b"host", b"127.0.0.1"), *headers],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}

    async def run():
        comm = ApplicationCommunicator(application, scope)
        await comm.send_input({"type": "http.request", "body": b"", "more_body": False})
        start = await comm.receive_output(10)
        body = b""
        while True:
            message = await comm.receive_output(10)
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await comm.wait(10)
        return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, body

    return async_to_sync(run)()


@pytest.mark.django_db(transaction=True)
def test_gateway_requests_take_the_short_chain_and_pages_the_full_one(tenant_a):
    small_registry(tenant_a)
    _, token = make_gateway(tenant_a)
    publish.bundle_publish(tenant=tenant_a, trigger="test")
    status, headers, _ = _call("/api/v1/gateway/bundles/alpha")
    assert status == 401
    assert headers["x-content-type-options"] == "nosniff" and "x-request-id" in headers
    assert "content-security-policy" not in headers  # the browser stack's header
    status, headers, body = _call("/api/v1/gateway/bundles/alpha",
                                  [(b"authorization", f"Bearer {token}".encode())])
    assert status == 200 and headers["etag"].strip('"') and body[:2] == b"\x1f\x8b"
    assert "set-cookie" not in headers
    status, headers, _ = _call("/healthz")
    assert status == 200 and "content-security-policy" in headers
