"""The path prefix (FORCE_SCRIPT_NAME, or the path of TOLLGATE_BASE_URL): how it is read and
checked, what the settings derive from it, and the ASGI application's routing under it.
tests/e2e/test_path_prefix.py serves pages and the gateway API under it with a real uvicorn."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.core.exceptions import ImproperlyConfigured
from django.urls import set_script_prefix

from governance.asgi import application
from governance.config import env_script_name
from notifications.services import _absolute
from tests.governance.test_settings_env import PROD_SECRET, _run

BASE = "https://tollgate.example.com"


@pytest.mark.parametrize(("forced", "base", "expected"), [
    (None, BASE, ""),
    (None, f"{BASE}/", ""),
    (None, f"{BASE}/tg", "/tg"),
    (None, f"{BASE}/ops/tollgate/", "/ops/tollgate"),
    ("/tg", BASE, "/tg"),
    ("/tg/", f"{BASE}/tg", "/tg"),
    ("/", BASE, ""),
])
def test_the_prefix_comes_from_force_script_name_or_the_base_url(monkeypatch, forced, base,
                                                                 expected):
    if forced is None:
        monkeypatch.delenv("FORCE_SCRIPT_NAME", raising=False)
    else:
        monkeypatch.setenv("FORCE_SCRIPT_NAME", forced)
    assert env_script_name("FORCE_SCRIPT_NAME", base_url=base,
                           base_name="TOLLGATE_BASE_URL") == expected


@pytest.mark.parametrize(("forced", "base", "message"), [
    ("tg", BASE, "FORCE_SCRIPT_NAME: the path prefix must look like /tollgate"),
    ("/tg/../admin", BASE, "FORCE_SCRIPT_NAME: the path prefix must look like /tollgate"),
    ("/t g", BASE, "FORCE_SCRIPT_NAME: the path prefix must look like /tollgate"),
    ("//tg", BASE, "FORCE_SCRIPT_NAME: the path prefix must look like /tollgate"),
    (None, f"{BASE}/a%20b", "TOLLGATE_BASE_URL: the path prefix must look like /tollgate"),
    ("/tg", f"{BASE}/other", "FORCE_SCRIPT_NAME: '/tg' differs from the path of "
                             "TOLLGATE_BASE_URL ('/other')"),
])
def test_a_bad_prefix_stops_start_up_naming_the_variable(monkeypatch, forced, base, message):
    if forced is None:
        monkeypatch.delenv("FORCE_SCRIPT_NAME", raising=False)
    else:
        monkeypatch.setenv("FORCE_SCRIPT_NAME", forced)
    with pytest.raises(ImproperlyConfigured, match="^" + message.replace("(", r"\(")
                       .replace(")", r"\)").replace(".", r"\.")):
        env_script_name("FORCE_SCRIPT_NAME", base_url=base, base_name="TOLLGATE_BASE_URL")


def test_the_settings_derive_every_url_and_cookie_from_the_prefix(tmp_path):
    code = ("import json, django; django.setup(); from django.conf import settings as s; "
            "from django.urls import reverse; print(json.dumps({k: getattr(s, k) for k in ("
            "'SCRIPT_NAME', 'FORCE_SCRIPT_NAME', 'STATIC_URL', 'LOGIN_URL', "
            "'LOGIN_REDIRECT_URL', 'LOGOUT_REDIRECT_URL', 'LOGIN_REDIRECT_URL_FAILURE', "
            "'SESSION_COOKIE_PATH', 'CSRF_COOKIE_PATH', 'SESSION_COOKIE_NAME', "
            "'CSRF_COOKIE_NAME', 'SECURE_REDIRECT_EXEMPT')} | {'home': reverse('home'), "
            "'callback': reverse('oidc_authentication_callback')}))")
    result = _run(["-c", code], tmp_path, DJANGO_SETTINGS_MODULE="governance.settings",
                  SECRET_KEY=PROD_SECRET, TOLLGATE_BASE_URL=f"{BASE}/tg",
                  OIDC_RP_CLIENT_ID="tollgate", OIDC_RP_CLIENT_SECRET="s3cret",
                  OIDC_OP_ISSUER="https://idp.example",
                  OIDC_OP_AUTHORIZATION_ENDPOINT="https://idp.example/auth",
                  OIDC_OP_TOKEN_ENDPOINT="https://idp.example/token",
                  OIDC_OP_USER_ENDPOINT="https://idp.example/me",
                  OIDC_OP_JWKS_ENDPOINT="https://idp.example/jwks")
    assert result.returncode == 0, result.stderr
    s = json.loads(result.stdout)
    assert s["SCRIPT_NAME"] == s["FORCE_SCRIPT_NAME"] == "/tg"
    assert s["STATIC_URL"] == "/tg/static/"
    assert (s["LOGIN_URL"], s["LOGIN_REDIRECT_URL"], s["LOGOUT_REDIRECT_URL"]) == (
        "/tg/login/", "/tg/", "/tg/login/")
    assert s["LOGIN_REDIRECT_URL_FAILURE"] == "/tg/login/?error=sso"
    # The OIDC callback to register with the IdP is under the prefix too.
    assert (s["home"], s["callback"]) == ("/tg/", "/tg/oidc/callback/")
    # __Host- cookies must have Path=/: under a prefix they are __Secure- (still Secure).
    assert s["SESSION_COOKIE_PATH"] == s["CSRF_COOKIE_PATH"] == "/tg"
    assert (s["SESSION_COOKIE_NAME"], s["CSRF_COOKIE_NAME"]) == (
        "__Secure-tollgate_session", "__Secure-tollgate_csrf")
    assert "^tg/healthz$" in s["SECURE_REDIRECT_EXEMPT"]


def test_check_deploy_is_clean_under_a_prefix(tmp_path):
    result = _run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], tmp_path,
                  SECRET_KEY=PROD_SECRET, ALLOWED_HOSTS="tollgate.example.com",
                  TOLLGATE_BASE_URL=f"{BASE}/tg")
    assert result.returncode == 0, result.stdout + result.stderr


def _call(path: str, root_path: str = "") -> tuple[int, dict]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": root_path, "headers": [(b"host", b"127.0.0.1")],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}

    async def run():
        comm = ApplicationCommunicator(application, scope)
        await comm.send_input({"type": "http.request", "body": b"", "more_body": False})
        start = await comm.receive_output(10)
        while (await comm.receive_output(10)).get("more_body"):
            pass
        await comm.wait(10)
        return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}

    return async_to_sync(run)()


@pytest.fixture
def under_tg(settings):
    settings.SCRIPT_NAME = settings.FORCE_SCRIPT_NAME = "/tg"
    yield
    set_script_prefix("/")


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/", "/healthz", "/login/", "/api/v1/gateway/bundles/alpha",
                                  "/tgx/healthz", "/static/css/tollgate.css"])
def test_nothing_is_served_outside_the_prefix(under_tg, path):
    assert _call(path)[0] == 404


@pytest.mark.django_db
def test_the_prefix_alone_leads_home_and_pages_answer_under_it(under_tg):
    status, headers = _call("/tg")
    assert status == 301 and headers["location"] == "/tg/"
    status, headers = _call("/tg/healthz")
    assert status == 200 and "content-security-policy" in headers  # the full stack
    status, headers = _call("/tg/login/")
    assert status == 200


@pytest.mark.django_db
@pytest.mark.parametrize("root_path", ["", "/tg"])
def test_the_gateway_api_under_the_prefix_takes_its_short_chain(under_tg, root_path):
    # Without a token: 401 from the gateway handler (no CSP: not the browser stack), whether
    # the proxy kept the prefix or stripped it and uvicorn's --root-path put it back.
    status, headers = _call("/tg/api/v1/gateway/bundles/alpha", root_path=root_path)
    assert status == 401
    assert "content-security-policy" not in headers and headers["x-content-type-options"]


def test_notification_links_keep_a_single_prefix(settings):
    settings.TOLLGATE_BASE_URL = f"{BASE}/tg"
    assert _absolute("/tg/t/alpha/approvals/") == f"{BASE}/tg/t/alpha/approvals/"
    settings.TOLLGATE_BASE_URL = BASE
    assert _absolute("/t/alpha/approvals/") == f"{BASE}/t/alpha/approvals/"
    assert _absolute("https://elsewhere.example/x") == "https://elsewhere.example/x"
