"""The project's URLs plus two bare async views answering 304 with no work at all.

``/api/v1/gateway/bench-bare-304`` lies under the gateway prefix, so governance.asgi sends it
through the same handler and middleware chain as the bundle poll: the comparison the bench's
app/bare ratio is about. ``/bench/bare-304`` takes the web UI's full middleware stack: a
reference for what that stack costs.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path

from governance.urls import handler404, handler500
from governance.urls import urlpatterns as project_urlpatterns

# The ETag the bench's Lua script sends to these views (any constant will do).
BARE_ETAG = '"' + "0" * 64 + '"'
BARE_GATEWAY_PATH = "/api/v1/gateway/bench-bare-304"
BARE_WEB_PATH = "/bench/bare-304"


async def bare_304(request: HttpRequest) -> HttpResponse:
    """The floor for the gateway poll: an async view that compares If-None-Match and answers."""
    if request.headers.get("If-None-Match", "") == BARE_ETAG:
        response = HttpResponse(status=304, headers={"ETag": BARE_ETAG,
                                                     "Cache-Control": "no-cache"})
        response["Content-Type"] = "application/gzip"
        return response
    return HttpResponse(b"", content_type="application/gzip", headers={"ETag": BARE_ETAG})


urlpatterns = [
    path(BARE_GATEWAY_PATH.lstrip("/"), bare_304, name="bench-bare-304-gateway"),
    path(BARE_WEB_PATH.lstrip("/"), bare_304, name="bench-bare-304-web"),
    *project_urlpatterns,
]

__all__ = ["urlpatterns", "handler404", "handler500"]
