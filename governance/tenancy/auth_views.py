"""Sign-in and sign-out: OIDC when configured, otherwise (the demo) local passwords."""

from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from django.contrib import auth
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST
from mozilla_django_oidc.views import (
    OIDCAuthenticationCallbackView,
    OIDCAuthenticationRequestView,
)

from governance.tenancy import oidc, services


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
        return _sso_page(request, next_url, failed=request.GET.get("error") == "sso")
    form = AuthenticationForm(request, data=request.POST or None)
    if request.method == "POST":
        if form.is_valid():
            user = form.get_user()
            auth.login(request, user)
            services.auth_record_login(user=user, method="password")
            return redirect(next_url)
        username = request.POST.get("username", "")
        if username:
            services.auth_record_login_failed(username=username, reason="bad credentials")
    return render(request, "registration/login.html", {"form": form, "next": next_url},
                  status=400 if form.errors else 200)


def _sso_page(request: HttpRequest, next_url: str, *, failed: bool,
              status: int = 200) -> HttpResponse:
    sso_url = reverse("oidc_authentication_init") + "?" + urlencode({"next": next_url})
    return render(request, "registration/login.html", {"sso_url": sso_url, "sso_failed": failed},
                  status=status)


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


class _CallbackView(OIDCAuthenticationCallbackView):
    """The library's callback; a sign-in it refuses is the sign-in page with the error (400), and
    one log line saying why, instead of a 500 and a traceback any visitor could cause."""

    refusal: oidc.Refused | None = None

    def get(self, request):
        try:
            return super().get(request)
        except SuspiciousOperation as exc:  # a state this session never issued, or used already
            self.refusal = oidc.Refused(str(exc))
        except oidc.Refused as exc:
            self.refusal = exc
        return self.login_failure()

    def login_failure(self):
        refusal = self.refusal
        if refusal is None:
            error = self.request.GET.get("error")
            refusal = oidc.Refused(
                f"the identity provider answered {error[:100]!r}" if error
                else "no sign-in was started in this session"
                if "oidc_states" not in self.request.session
                else "the callback carried no code, or the account is inactive")
        oidc.log_refusal(str(refusal), unavailable=refusal.unavailable)
        response = _sso_page(self.request, settings.LOGIN_REDIRECT_URL, failed=True,
                             status=502 if refusal.unavailable else 400)
        response._has_been_logged = True  # the line above says why; not Django's "Bad Request"
        return response


def oidc_callback(request: HttpRequest) -> HttpResponse:
    if not settings.OIDC_ENABLED:
        raise Http404("Single sign-on is not configured")
    return _CallbackView.as_view()(request)
