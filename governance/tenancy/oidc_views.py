"""The OIDC callback: a sign-in it refuses is the sign-in page with the error and one log line
saying why, never a 500 with a traceback that any visitor could cause."""

from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from django.core.exceptions import SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView

from governance.tenancy import backchannel, oidc


class CallbackView(OIDCAuthenticationCallbackView):
    """mozilla-django-oidc's callback, with refusals answered by the sign-in page: 400 (502
    when the IdP could not answer), and no redirect, so the answer says it failed."""

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
        sso_url = reverse("oidc_authentication_init") + "?" + urlencode(
            {"next": settings.LOGIN_REDIRECT_URL})
        response = render(self.request, "registration/login.html",
                          {"sso_url": sso_url, "sso_failed": True},
                          status=502 if refusal.unavailable else 400)
        response._has_been_logged = True  # the line above says why; not Django's "Bad Request"
        return response


def oidc_callback(request: HttpRequest) -> HttpResponse:
    if not settings.OIDC_ENABLED:
        raise Http404("Single sign-on is not configured")
    return CallbackView.as_view()(request)


def _logout_answer(status: int, error: str = "", description: str = "") -> JsonResponse:
    body = {"error": error, "error_description": description} if error else {}
    response = JsonResponse(body, status=status)
    response["Cache-Control"] = "no-store"  # Back-Channel Logout 1.0, section 2.8
    return response


@csrf_exempt  # the IdP posts server to server: no browser, no session, no CSRF token
@require_POST
def backchannel_logout(request: HttpRequest) -> HttpResponse:
    """OpenID Connect Back-Channel Logout: 200 once the named sessions have ended; 400 with
    ``invalid_request`` for a token that is refused; 503 when the IdP's keys cannot be
    fetched (the IdP may retry)."""
    if not settings.OIDC_ENABLED:
        raise Http404("Single sign-on is not configured")
    token = request.POST.get("logout_token", "")
    try:
        claims = backchannel.logout_token_verify(token)
    except backchannel.LogoutTokenInvalid as exc:
        backchannel.log.warning("OIDC back-channel logout refused: %s", exc)
        return _logout_answer(400, "invalid_request", str(exc))
    except backchannel.IdpKeysUnavailable as exc:
        backchannel.log.error("OIDC back-channel logout not verified: %s", exc)
        response = _logout_answer(503, "temporarily_unavailable", str(exc))
        response["Retry-After"] = "30"
        return response
    ended = backchannel.backchannel_logout(claims=claims)
    backchannel.log.info("OIDC back-channel logout: %d session(s) ended", ended)
    return _logout_answer(200)
