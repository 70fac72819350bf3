"""URL map: web UI under /t/<tenant>/, admin API under /api/v1/t/<tenant>/, gateway API under
/api/v1/gateway/."""

from __future__ import annotations

import sys

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from django.views import defaults
from drf_spectacular.views import SpectacularSwaggerSplitView

from governance import outage, readiness
from governance.tenancy import auth_views, oidc_views, views
from governance.tenancy.api.views import MeView, SchemaView


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Touches nothing else (no database, no Redis)."""
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness for a load balancer (governance/readiness.py): 200 when the database is
    reachable and migrated, Redis (or the embedded broker and cache) answers and the bundle store
    is writable; 503 naming the failed checks otherwise."""
    ready, results = readiness.readiness()
    response = JsonResponse({"status": "ready" if ready else "not_ready", "checks": results},
                            status=200 if ready else 503)
    response["Cache-Control"] = "no-store"
    return response


def _api_error(request: HttpRequest, status: int, code: str, message: str):
    return JsonResponse({"code": code, "message": message}, status=status)


def handler400(request: HttpRequest, exception=None):
    """A body over DATA_UPLOAD_MAX_MEMORY_SIZE (or too many fields) fails before any view: on
    the APIs it is the JSON error shape too (413 for the size), not the HTML page."""
    if request.path_info.startswith("/api/"):
        if isinstance(exception, RequestDataTooBig):
            return _api_error(request, 413, "too_large", "The body is over "
                              f"{settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.")
        return _api_error(request, 400, "bad_request", "The request could not be read.")
    return defaults.bad_request(request, exception)


def handler404(request: HttpRequest, exception=None):
    if request.path_info.startswith("/api/"):
        return _api_error(request, 404, "not_found", "Not found.")
    return defaults.page_not_found(request, exception)


def handler500(request: HttpRequest):
    if outage.is_outage(sys.exc_info()[1]):  # a middleware lost the database: 503, not 500
        return outage.unavailable(request)
    if request.path_info.startswith("/api/"):
        return _api_error(request, 500, "server_error",
                          "Internal error; it has been logged with this request's id.")
    return defaults.server_error(request)


tenant_api = [
    path("", include("governance.tenancy.api.urls")),
    path("", include("governance.audit.api.urls")),
    path("", include("registry.api.urls")),
    path("", include("bundles.api.urls")),
    path("", include("approvals.api.urls")),
    path("", include("notifications.api.urls")),
    path("", include("decision_logs.api.urls")),
    path("", include("exports.api.urls")),
    path("", include("scim.api.urls")),
    path("", include("alerts.api.urls")),
    path("", include("evidence.api.urls")),
    path("", include("observability.api.urls")),
]

tenant_web = [
    path("", include("governance.tenancy.urls")),
    path("", include("governance.audit.urls")),
    path("", include("registry.urls")),
    path("", include("bundles.urls")),
    path("", include("notifications.urls")),
    path("", include("approvals.urls")),
    path("", include("decision_logs.urls")),
    path("", include("exports.urls")),
    path("", include("scim.urls")),
    path("", include("alerts.urls")),
    path("", include("evidence.urls")),
    path("", include("observability.urls")),
]

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    # Prometheus scrape endpoint: METRICS_TOKEN or METRICS_ALLOWED_NETWORKS (no session).
    path("", include("observability.metrics_urls")),
    path("login/", auth_views.login_view, name="login"),
    path("logout/", auth_views.logout_view, name="logout"),
    path("oidc/authenticate/", auth_views.oidc_authenticate, name="oidc_authentication_init"),
    path("oidc/callback/", oidc_views.oidc_callback, name="oidc_authentication_callback"),
    path("oidc/backchannel-logout/", oidc_views.backchannel_logout,
         name="oidc_backchannel_logout"),
    path("t/<slug:tenant_slug>/", include(tenant_web)),
    path("api/v1/me/", MeView.as_view(), name="api-me"),
    path("api/v1/schema/", SchemaView.as_view(), name="api-schema"),
    path("api/schema/", SchemaView.as_view(), name="schema"),
    # Swagger UI for signed-in people; the split view serves its init script as a file of its
    # own (?script), because the CSP allows no inline script.
    path("api/docs/",
         login_required(SpectacularSwaggerSplitView.as_view(url_name="schema")),
         name="api-docs"),
    path("api/v1/t/<slug:tenant_slug>/", include(tenant_api)),
    path("api/v1/gateway/", include("governance.gateway_urls")),
    # SCIM 2.0 per tenant (RFC 7644), authenticated by the tenant's SCIM tokens (scim/).
    path("", include("scim.endpoint_urls")),
]
