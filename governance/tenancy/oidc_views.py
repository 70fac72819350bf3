"""The OIDC callback: a sign-in it refuses is the sign-in page with the error and one log line
saying why, never a 500 with a traceback that any visitor could cause."""

from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from django.core.exceptions import SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView

from governance.tenancy import oidc


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
