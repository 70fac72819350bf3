"""The fixed cast: tenant A (alice admin, bob approver, audrey auditor, dave developer,
victor viewer) and tenant B (oscar, its admin: the outsider to everything in A)."""

from __future__ import annotations

import os

import pytest
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from governance.tenancy.roles import Role
from tests.factories import MembershipFactory, TenantFactory, UserFactory, make_token
from tests.mcp_support import (  # noqa: F401
    _mutable_server_process,
    everything_js,
    everything_stdio_wrapper,
    mcp_server,
)
from tests.ui_support import base_url, browser, ui, ui_settings  # noqa: F401
from tests.worker_support import blocking_receiver, celery_worker_process  # noqa: F401
from tests.xdist_env import worker_redis_url


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER") and not config.pluginmanager.has_plugin(
            "tests.xdist_env"):
        pytest.exit("pytest -n needs -p tests.xdist_env (each worker its own Redis database); "
                    "make test passes both", returncode=4)


@pytest.fixture(autouse=True)
def _plain_settings(settings):
    # Tests speak plain HTTP to the test server; production defaults stay as they are.
    settings.SECURE_SSL_REDIRECT = False
    settings.AXES_ENABLED = True
    # Real hashing is slow by design; the tests do not measure it.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# The suite's MCP servers, webhook, HEC and syslog receivers listen on loopback, which the
# outbound guard (governance/outbound.py) refuses by default; tests/governance/test_outbound.py
# turns this off.
TEST_OUTBOUND_ALLOWED_NETWORKS = "127.0.0.0/8,::1/128"


@pytest.fixture(autouse=True)
def _loopback_targets_allowed(settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = TEST_OUTBOUND_ALLOWED_NETWORKS


@pytest.fixture(autouse=True)
def _no_token_brute_force_limit(settings):
    """Every test client comes from 127.0.0.1 and the counts outlive a test (Redis): only
    tests/contract/test_security.py, which proves the limit, turns it on."""
    settings.TOKEN_FAILURE_LIMIT_PER_MINUTE = 1_000_000


@pytest.fixture(autouse=True)
def _fresh_hot_store(settings, tmp_path_factory):
    """The gateway hot store and bundle copies outlive a test's transaction: start clean."""
    settings.BUNDLE_LOCAL_DIR = tmp_path_factory.mktemp("bundles")
    if settings.REDIS_URL:
        _clear_hot(settings.REDIS_URL)


def _clear_hot(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter("tollgate:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def redis_url(settings):
    """A reachable Redis for tests whose point is production behaviour (CI always has one)."""
    import redis

    url = settings.REDIS_URL or worker_redis_url("redis://127.0.0.1:6379/5",
                                                 os.environ.get("PYTEST_XDIST_WORKER", "gw0"))
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError:
        pytest.skip(f"needs Redis at {url}: set REDIS_URL=redis://…")
    _clear_hot(url)
    return url


@pytest.fixture
def tenant_a(db):
    return TenantFactory(slug="alpha", name="Alpha Corp")


@pytest.fixture
def tenant_b(db):
    return TenantFactory(slug="bravo", name="Bravo Inc")


def _member(tenant, username, role):
    user = UserFactory(username=username)
    MembershipFactory(tenant=tenant, user=user, role=role)
    return user


@pytest.fixture
def alice(tenant_a):
    return _member(tenant_a, "alice", Role.ADMIN)


@pytest.fixture
def bob(tenant_a):
    return _member(tenant_a, "bob", Role.APPROVER)


@pytest.fixture
def audrey(tenant_a):
    return _member(tenant_a, "audrey", Role.AUDITOR)


@pytest.fixture
def dave(tenant_a):
    return _member(tenant_a, "dave", Role.DEVELOPER)


@pytest.fixture
def victor(tenant_a):
    return _member(tenant_a, "victor", Role.VIEWER)


@pytest.fixture
def oscar(tenant_b):
    return _member(tenant_b, "oscar", Role.ADMIN)


@pytest.fixture
def cast(alice, bob, audrey, dave, victor, oscar):
    return {"alice": alice, "bob": bob, "audrey": audrey, "dave": dave, "victor": victor,
            "oscar": oscar}


@pytest.fixture
def login():
    """``login(user)`` → a Django test client with that user's session."""

    def make(user) -> Client:
        client = Client()
        client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
        return client

    return make


@pytest.fixture
def api():
    """``api(token_plaintext)`` → an API client sending ``Authorization: Bearer``."""

    def make(plaintext: str | None = None) -> APIClient:
        client = APIClient()
        if plaintext:
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
        return client

    return make


@pytest.fixture
def token_for():
    """``token_for(user, tenant, role)`` → plaintext of a fresh personal token."""

    def make(user, tenant, role=None, **kwargs) -> str:
        membership = user.memberships.get(tenant=tenant)
        return make_token(tenant, user=user, role=role or membership.role, **kwargs)[1]

    return make


@pytest.fixture
def as_user(api, token_for, tenant_a):
    """``as_user(user)`` → API client with a personal token of that user in tenant A."""
    return lambda user: api(token_for(user, tenant_a))


@pytest.fixture
def admin(as_user, alice):
    """An API client acting as alice, tenant A's admin."""
    return as_user(alice)


@pytest.fixture
def postgres_only(db):
    """Skip where behaviour can only be proven on PostgreSQL (CI always runs it there)."""
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: set DATABASE_URL=postgres://…")
