"""Base class of every tenant-scoped web page (``/t/<tenant_slug>/…``).

Anonymous → login page; not a member of the tenant → 404; member without the capability → 403.
The checks run before method dispatch, so even a wrong method never reveals a tenant.
"""

from __future__ import annotations

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.views import View

from governance.tenancy.access import TenantContext, resolve_for_user
from governance.tenancy.roles import Cap


class TenantPageView(View):
    """A page of one tenant; ``capability`` guards GET, ``post_capability`` guards POST."""

    capability: Cap = Cap.VIEW
    post_capability: Cap | None = None
    tenancy: TenantContext

    def dispatch(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        self.tenancy = resolve_for_user(request.user, kwargs["tenant_slug"])
        request.tenancy = self.tenancy
        needed = self.capability
        if request.method not in ("GET", "HEAD", "OPTIONS") and self.post_capability is not None:
            needed = self.post_capability
        self.tenancy.require(needed)
        return super().dispatch(request, *args, **kwargs)

    @property
    def tenant(self):
        return self.tenancy.tenant

    @property
    def actor(self):
        return self.tenancy.actor
