"""Tollgate served under a path prefix (``/tg``) by a real uvicorn: the prefix comes from the
path of TOLLGATE_BASE_URL (or FORCE_SCRIPT_NAME), the proxy in front keeps it in the URL it
passes on; pages, links, static files, the sign-in redirects, cookies and the gateway API all
live under it, and nothing is served outside it. An operator whose proxy strips the prefix
instead starts uvicorn with ``--root-path /tg`` as well."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
import requests
from django.contrib.auth.hashers import make_password

from bundles import publish
from tests.bundle_support import make_gateway, small_registry
from tests.factories import UserFactory
from tests.web_process_support import WebProcess

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery staple"
URL_ATTRIBUTE = re.compile(r'\b(?:href|src|action|hx-get|hx-post)="([^"]*)"')


@pytest.fixture
def world(postgres_only, transactional_db, tenant_a, settings, redis_url):
    # The web process checks the password with its own hashers, not the suite's.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    user = UserFactory(username="victor")
    user.password = make_password(PASSWORD)
    user.save(update_fields=["password"])
    small_registry(tenant_a)
    bundle = publish.bundle_publish(tenant=tenant_a, trigger="test")
    _, token = make_gateway(tenant_a)
    return {"token": token, "etag": f'"{bundle.blob_id}"', "redis": redis_url}


@pytest.fixture
def prefixed(world, tmp_path):
    """A web process whose public URL is http://127.0.0.1:<port>/tg."""
    web = WebProcess(tmp_path, health="/tg/healthz", REDIS_URL=world["redis"])
    web.env["TOLLGATE_BASE_URL"] = f"{web.base}/tg"
    web.start()
    yield web
    web.stop()


def _local_urls(html: str) -> list[str]:
    return [url for url in URL_ATTRIBUTE.findall(html) if url.startswith("/")]


def _sign_in(session: requests.Session, base: str) -> requests.Response:
    page = session.get(f"{base}/tg/login/", timeout=60)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    return session.post(f"{base}/tg/login/?next=/tg/", timeout=120, allow_redirects=False,
                        data={"username": "victor", "password": PASSWORD,
                              "csrfmiddlewaretoken": token},
                        headers={"Referer": f"{base}/tg/login/"})


def test_everything_lives_under_the_prefix(world, prefixed):
    base = prefixed.base
    session = requests.Session()

    # The sign-in page, its links and its static files, all under /tg/.
    page = session.get(f"{base}/tg/login/", timeout=60)
    assert page.status_code == 200, prefixed.output()
    urls = _local_urls(page.text)
    assert urls and all(url.startswith("/tg/") for url in urls), urls
    statics = [url for url in urls if url.startswith("/tg/static/")]
    assert statics, urls
    for url in statics:
        assert session.get(base + url, timeout=60).status_code == 200, url
    # Its cookies are scoped to the prefix.
    assert {cookie.path for cookie in session.cookies} == {"/tg"}

    # A page that needs a signed-in user sends to the sign-in page under the prefix …
    response = session.get(f"{base}/tg/", timeout=60, allow_redirects=False)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/tg/login/")
    # … and signing in comes back under it, to a page whose links stay there.
    response = _sign_in(session, base)
    assert response.status_code == 302, response.text
    assert urlsplit(response.headers["Location"]).path == "/tg/"
    home = session.get(base + response.headers["Location"], timeout=60)
    assert home.status_code == 200
    urls = _local_urls(home.text)
    assert urls and all(url.startswith("/tg/") for url in urls), urls

    # The gateway API answers under the prefix.
    auth = {"Authorization": f"Bearer {world['token']}"}
    bundle = requests.get(f"{base}/tg/api/v1/gateway/bundles/alpha", headers=auth, timeout=60)
    assert bundle.status_code == 200, prefixed.output()[-4000:]
    assert bundle.headers["ETag"] == world["etag"]
    keys = requests.get(f"{base}/tg/api/v1/gateway/keys/alpha", headers=auth, timeout=60)
    assert keys.status_code == 200 and keys.json()["keys"]

    # Nothing outside it; the prefix alone leads to the home page.
    for path in ("/", "/login/", "/healthz", "/static/css/tollgate.css",
                 "/api/v1/gateway/bundles/alpha", "/tgx/login/"):
        assert requests.get(base + path, headers=auth, timeout=60,
                            allow_redirects=False).status_code == 404, path
    response = requests.get(f"{base}/tg", timeout=60, allow_redirects=False)
    assert response.status_code == 301 and response.headers["Location"] == "/tg/"


def test_a_proxy_that_strips_the_prefix_pairs_with_root_path(world, tmp_path):
    web = WebProcess(tmp_path, flags=("--root-path", "/tg"), health="/healthz",
                     FORCE_SCRIPT_NAME="/tg", REDIS_URL=world["redis"])
    base = web.start()  # the proxy took /tg off: requests arrive without it
    try:
        page = requests.get(f"{base}/login/", timeout=60)
        assert page.status_code == 200, web.output()
        urls = _local_urls(page.text)
        assert urls and all(url.startswith("/tg/") for url in urls), urls
        bundle = requests.get(f"{base}/api/v1/gateway/bundles/alpha", timeout=60,
                              headers={"Authorization": f"Bearer {world['token']}"})
        assert bundle.status_code == 200, web.output()[-4000:]
        assert bundle.headers["ETag"] == world["etag"]
    finally:
        web.stop()
