"""Sign-in and sign-out: OIDC when configured, otherwise (the demo) local passwords."""

from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from django.contrib import auth
from django.contrib.auth.forms import AuthenticationForm
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST
from mozilla_django_oidc.views import (
    OIDCAuthenticationRequestView,
)

from governance.tenancy import invitations, services


def _safe_next(request: HttpRequest) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return settings.LOGIN_REDIRECT_URL


@sensitive_post_parameters("password")
@csrf_protect
@never_cache
def login_view(request: HttpRequest) -> HttpResponse:
    """SSO button when OIDC is configured (no password form at all), else the password form."""
    next_url = _safe_next(request)
    if request.user.is_authenticated and request.method == "GET":
        return redirect(next_url)
    if settings.OIDC_ENABLED:
        if request.method != "GET":
            return HttpResponseNotAllowed(["GET"])
        sso_url = reverse("oidc_authentication_init") + "?" + urlencode({"next": next_url})
        return render(request, "registration/login.html", {
            "sso_url": sso_url, "sso_failed": request.GET.get("error") == "sso",
        })
    form = AuthenticationForm(request, data=request.POST or None)
    if request.method == "POST":
        if form.is_valid():
            user = form.get_user()
            auth.login(request, user)
            with transaction.atomic():
                # Invitations to the account's address (set by the operator) take effect now.
                invitations.invitations_accept(
                    user=user, email=user.email,
                    identities=list(user.external_identities.values_list("issuer", "subject")),
                )
                services.auth_record_login(user=user, method="password")
            return redirect(next_url)
        username = request.POST.get("username", "")
        if username:
            services.auth_record_login_failed(username=username, reason="bad credentials")
    return render(request, "registration/login.html", {"form": form, "next": next_url},
                  status=400 if form.errors else 200)


@require_POST
@csrf_protect
def logout_view(request: HttpRequest) -> HttpResponse:
    """Sign out of Tollgate, and of the IdP when it offers RP-initiated logout."""
    target = settings.LOGOUT_REDIRECT_URL
    if request.user.is_authenticated:
        id_token = request.session.get("oidc_id_token")
        services.auth_record_logout(user=request.user)
        auth.logout(request)
        end_session = getattr(settings, "OIDC_OP_LOGOUT_ENDPOINT", "")
        if settings.OIDC_ENABLED and end_session and id_token:
            target = end_session + "?" + urlencode({
                "id_token_hint": id_token,
                "post_logout_redirect_uri": request.build_absolute_uri(
                    settings.LOGOUT_REDIRECT_URL),
            })
    return redirect(target)


def oidc_authenticate(request: HttpRequest) -> HttpResponse:
    if not settings.OIDC_ENABLED:
        raise Http404("Single sign-on is not configured")
    return OIDCAuthenticationRequestView.as_view()(request)


# The callback is governance.tenancy.oidc_views.oidc_callback.
