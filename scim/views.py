"""SCIM provisioning pages under /t/<tenant_slug>/identity/scim/ (admins: MANAGE_MEMBERS)."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from governance.tenancy.forms import add_service_errors
from governance.tenancy.mixins import TenantPageView
from governance.tenancy.roles import Cap
from governance.web import page_of
from scim import selectors, services
from scim.access import access_scim_token
from scim.forms import ScimTokenCreateForm


class ScimPage(TenantPageView):
    capability = Cap.MANAGE_MEMBERS


class ScimTokenListView(ScimPage):
    """The tenant's SCIM endpoint, its tokens (the plaintext shown once) and what is
    provisioned."""

    # As for API tokens: the plaintext waits in the session for exactly one GET (post/redirect/
    # get, so a reload cannot create a second token).
    SESSION_KEY = "tollgate_new_scim_token"

    def render_page(self, request: HttpRequest, form, *, status: int = 200) -> HttpResponse:
        revealed = request.session.pop(self.SESSION_KEY, None)
        plaintext = None
        if revealed and revealed.get("tenant") == self.tenant.pk:
            token = selectors.scim_tokens(self.tenant).filter(pk=revealed["id"]).first()
            plaintext = (token, revealed["plaintext"]) if token else None
        response = render(request, "scim/tokens.html", {
            "page": page_of(request, selectors.scim_tokens(self.tenant)),
            "form": form,
            "plaintext": plaintext,
            "endpoint": request.build_absolute_uri(f"/scim/v2/{self.tenant.slug}"),
            "users": selectors.scim_users(self.tenant).count(),
            "active_users": selectors.scim_users(self.tenant).filter(active=True).count(),
            "groups": selectors.scim_groups(self.tenant).count(),
        }, status=status)
        response["Cache-Control"] = "no-store"
        return response

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        return self.render_page(request, ScimTokenCreateForm())

    def post(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = ScimTokenCreateForm(request.POST)
        if form.is_valid():
            try:
                token, plaintext = services.scim_token_create(
                    tenant=self.tenant, actor=self.actor, created_by=request.user,
                    name=form.cleaned_data["name"])
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                request.session[self.SESSION_KEY] = {
                    "tenant": self.tenant.pk, "id": token.pk, "plaintext": plaintext}
                response = HttpResponse(status=303)
                response["Location"] = reverse("scim:tokens", args=[tenant_slug])
                return response
        return self.render_page(request, form, status=400)


class ScimTokenRevokeView(ScimPage):
    """Confirm, then revoke a SCIM token."""

    def get(self, request: HttpRequest, tenant_slug: str, scim_token_id: int) -> HttpResponse:
        token = access_scim_token(self.tenancy, scim_token_id)
        return render(request, "confirm.html", {
            "title": f"Revoke SCIM token {token.name!r} ({token.prefix}…)?",
            "body": "The IdP gets 401 from its next provisioning call: users and groups stop "
                    "being pushed until it has a new token. This cannot be undone.",
            "action": "Revoke token",
            "cancel_url": reverse("scim:tokens", args=[tenant_slug]),
        })

    def post(self, request: HttpRequest, tenant_slug: str, scim_token_id: int) -> HttpResponse:
        token = access_scim_token(self.tenancy, scim_token_id)
        services.scim_token_revoke(tenant=self.tenant, actor=self.actor, token=token)
        messages.success(request, f"Revoked {token.name!r}.")
        return redirect("scim:tokens", tenant_slug=tenant_slug)
