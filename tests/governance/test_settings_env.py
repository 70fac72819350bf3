"""Settings come only from the environment; bad values stop start-up naming the variable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROD_SECRET = "x8#kQ2!vN7@pL4$zR1^wT6&yH3*bM9(cF5)dJ0_gS2+eA8=uK7-iO4~nE1"
CONFIG_PREFIXES = ("DATABASE_URL", "REDIS_URL", "DEBUG", "SECRET_KEY", "OIDC_", "SECURE_",
                   "ALLOWED_HOSTS", "TOLLGATE_", "LOG_LEVEL", "CELERY_", "BUNDLE_", "GATEWAY_",
                   "SECRET_ENCRYPTION_KEYS")
PROD_BUNDLE_KEY = "cHJvZHVjdGlvbi1idW5kbGUta2V5LWZvci10ZXN0cyE="
OTHER_BUNDLE_KEY = "b3RoZXItb3RoZXItb3RoZXItb3RoZXItb3RoZXItMTI="
PROD_BASE_URL = "https://tollgate.example.com"


def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(CONFIG_PREFIXES)}
    clean["TOLLGATE_VAR_DIR"] = str(tmp_path / "var")
    if "SECRET_KEY" in env:  # a production configuration has both secrets and its public URL
        clean["SECRET_ENCRYPTION_KEYS"] = PROD_BUNDLE_KEY
        clean["TOLLGATE_BASE_URL"] = PROD_BASE_URL
    clean.update(env)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=clean, capture_output=True,
                          text=True, timeout=60)


def _settings(tmp_path: Path, **env: str) -> dict:
    code = (
        "import json, django; django.setup(); from django.conf import settings as s; "
        "print(json.dumps({'db': s.DATABASES['default']['ENGINE'], "
        "'cache': s.CACHES['default']['BACKEND'], 'broker': s.CELERY_BROKER_URL, "
        "'debug': s.DEBUG, 'cookie_secure': s.SESSION_COOKIE_SECURE, "
        "'csrf_secure': s.CSRF_COOKIE_SECURE, 'httponly': s.SESSION_COOKIE_HTTPONLY, "
        "'samesite': s.SESSION_COOKIE_SAMESITE, 'backends': s.AUTHENTICATION_BACKENDS}))"
    )
    result = _run(["-c", code], tmp_path, DJANGO_SETTINGS_MODULE="governance.settings", **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_embedded_default_needs_no_server(tmp_path):
    s = _settings(tmp_path, DEBUG="true")
    assert s["db"] == "django.db.backends.sqlite3"
    assert s["cache"] == "django.core.cache.backends.db.DatabaseCache"
    assert s["broker"] == "filesystem://"
    assert s["debug"] is True and s["cookie_secure"] is False
    assert "django.contrib.auth.backends.ModelBackend" in s["backends"]


def test_database_and_redis_urls_switch_to_postgres_and_redis(tmp_path):
    s = _settings(tmp_path, SECRET_KEY=PROD_SECRET,
                  DATABASE_URL="postgres://postgres@127.0.0.1:5432/tollgate",
                  REDIS_URL="redis://127.0.0.1:6379/0")
    assert s["db"] == "django.db.backends.postgresql"
    assert s["cache"] == "django.core.cache.backends.redis.RedisCache"
    assert s["broker"] == "redis://127.0.0.1:6379/0"


def test_production_defaults_are_secure(tmp_path):
    s = _settings(tmp_path, SECRET_KEY=PROD_SECRET)
    assert s["debug"] is False
    assert s["cookie_secure"] is True and s["csrf_secure"] is True
    assert s["httponly"] is True and s["samesite"] == "Lax"


def test_oidc_configured_removes_password_login(tmp_path):
    idp = "https://idp.example"
    s = _settings(tmp_path, SECRET_KEY=PROD_SECRET, OIDC_RP_CLIENT_ID="tollgate",
                  OIDC_RP_CLIENT_SECRET="s", OIDC_OP_ISSUER=idp,
                  OIDC_OP_AUTHORIZATION_ENDPOINT=f"{idp}/auth",
                  OIDC_OP_TOKEN_ENDPOINT=f"{idp}/token", OIDC_OP_USER_ENDPOINT=f"{idp}/me",
                  OIDC_OP_JWKS_ENDPOINT=f"{idp}/jwks")
    assert s["backends"][0] == "governance.tenancy.oidc.TollgateOIDCBackend"
    assert "django.contrib.auth.backends.ModelBackend" not in s["backends"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DATABASE_URL": "mysql://db/x"}, "DATABASE_URL: scheme must be one of"),
        ({"DATABASE_URL": "postgres://host:notaport/db"}, "DATABASE_URL: malformed URL"),
        ({"DATABASE_URL": "postgres://127.0.0.1:5432/"}, "DATABASE_URL: no database name"),
        ({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL: scheme must be one of"),
        ({"DEBUG": "maybe"}, "DEBUG: expected true/false, got 'maybe'"),
        ({"SESSION_HOURS": "eight"}, "SESSION_HOURS: expected an integer"),
        ({"OIDC_RECHECK_SECONDS": "-1"}, "OIDC_RECHECK_SECONDS: must be at least 0, got -1"),
        ({"OIDC_RECHECK_GRACE_SECONDS": "soon"},
         "OIDC_RECHECK_GRACE_SECONDS: expected an integer"),
        ({"OIDC_LOGOUT_TOKEN_MAX_AGE": "5"},
         "OIDC_LOGOUT_TOKEN_MAX_AGE: must be at least 30, got 5"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL: unknown level"),
        ({"OIDC_RP_CLIENT_ID": "x"}, "OIDC_RP_CLIENT_SECRET: required"),
        ({"OIDC_RP_CLIENT_ID": "x", "OIDC_RP_CLIENT_SECRET": "y"}, "OIDC_OP_ISSUER: required"),
        ({"SECRET_ENCRYPTION_KEYS": ""}, "SECRET_ENCRYPTION_KEYS: must be set when DEBUG"),
        ({"SECRET_ENCRYPTION_KEYS": "short"}, "SECRET_ENCRYPTION_KEYS: entry 1 is not"),
        ({"SECRET_ENCRYPTION_KEYS": "", "BUNDLE_KEY_ENCRYPTION_KEYS": "short"},
         "BUNDLE_KEY_ENCRYPTION_KEYS: entry 1 is not"),
        ({"BUNDLE_KEY_ENCRYPTION_KEYS": OTHER_BUNDLE_KEY},
         "SECRET_ENCRYPTION_KEYS and BUNDLE_KEY_ENCRYPTION_KEYS (its old name) are both set and "
         "differ: set only SECRET_ENCRYPTION_KEYS."),
        ({"BUNDLE_TTL_SECONDS": "60"}, "BUNDLE_TTL_SECONDS: must be at least 600"),
        ({"BUNDLE_KEY_PUBLISH_LEAD_SECONDS": "60"},
         "BUNDLE_KEY_PUBLISH_LEAD_SECONDS: must be at least BUNDLE_MAX_WAIT_SECONDS (300), "
         "got 60"),
        ({"BUNDLE_MAX_WAIT_SECONDS": "120", "BUNDLE_KEY_PUBLISH_LEAD_SECONDS": "119"},
         "BUNDLE_KEY_PUBLISH_LEAD_SECONDS: must be at least BUNDLE_MAX_WAIT_SECONDS (120), "
         "got 119"),
    ],
)
def test_a_malformed_value_stops_start_up_naming_the_variable(tmp_path, env, message):
    result = _run(["manage.py", "check"], tmp_path, SECRET_KEY=PROD_SECRET, **env)
    assert result.returncode == 2
    assert result.stderr.startswith("Configuration error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("env", [
    {"SECRET_ENCRYPTION_KEYS": "", "BUNDLE_KEY_ENCRYPTION_KEYS": OTHER_BUNDLE_KEY},
    {"SECRET_ENCRYPTION_KEYS": OTHER_BUNDLE_KEY, "BUNDLE_KEY_ENCRYPTION_KEYS": OTHER_BUNDLE_KEY},
    {"SECRET_ENCRYPTION_KEYS": OTHER_BUNDLE_KEY},
])
def test_the_secret_encryption_keys_old_name_is_still_read(tmp_path, env):
    code = ("import django; django.setup(); from django.conf import settings as s; "
            "print(','.join(s.SECRET_ENCRYPTION_KEYS))")
    result = _run(["-c", code], tmp_path, DJANGO_SETTINGS_MODULE="governance.settings",
                  SECRET_KEY=PROD_SECRET, **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == OTHER_BUNDLE_KEY


def test_production_needs_a_secret_key(tmp_path):
    result = _run(["manage.py", "check"], tmp_path)
    assert result.returncode == 2
    assert "SECRET_KEY: must be set when DEBUG is off" in result.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SECRET_KEY": "s3cr3t!"}, "SECRET_KEY: too short (7 characters; at least 50"),
        ({"SECRET_KEY": "ab" * 40}, "SECRET_KEY: too little entropy (2 distinct characters; "
                                    "at least 5"),
        ({"SECRET_KEY": "django-insecure-" + PROD_SECRET},
         "SECRET_KEY: starts with 'django-insecure-', a development key"),
        ({"ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS: empty; with DEBUG off every request would be "
                                "refused (400)"),
        ({"ALLOWED_HOSTS": " , "}, "ALLOWED_HOSTS: empty"),
        ({"TOLLGATE_BASE_URL": ""}, "TOLLGATE_BASE_URL: unset, so the default "
                                    "'http://127.0.0.1:8000', is a loopback address"),
        ({"TOLLGATE_BASE_URL": "http://127.0.0.1:8000"},
         "TOLLGATE_BASE_URL: 'http://127.0.0.1:8000' is a loopback address"),
        ({"TOLLGATE_BASE_URL": "https://127.8.9.10/"}, "TOLLGATE_BASE_URL: 'https://127.8.9.10/'"),
        ({"TOLLGATE_BASE_URL": "http://localhost:8000"}, "TOLLGATE_BASE_URL: 'http://localhost"),
        ({"TOLLGATE_BASE_URL": "http://[::1]:8000"}, "TOLLGATE_BASE_URL: 'http://[::1]:8000'"),
        ({"TOLLGATE_BASE_URL": "http://[::ffff:127.0.0.1]/"}, "is a loopback address"),
        ({"TOLLGATE_BASE_URL": "http://0.0.0.0:8000"}, "is a loopback address"),
    ],
)
def test_production_refuses_weak_or_local_settings_naming_the_variable(tmp_path, env, message):
    """DEBUG off: what `check --deploy` only warns about, or what silently breaks every request
    or every bundle's `iss`, stops start-up (the web process, a worker, `manage.py`)."""
    result = _run(["manage.py", "check"], tmp_path, **{"SECRET_KEY": PROD_SECRET, **env})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("Configuration error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    if env.get("SECRET_KEY"):
        assert env["SECRET_KEY"] not in result.stderr  # the key itself is never printed


@pytest.mark.parametrize("env", [
    {"DEBUG": "true", "SECRET_KEY": "short", "ALLOWED_HOSTS": "",
     "TOLLGATE_BASE_URL": "http://127.0.0.1:8000"},
    {"TOLLGATE_BASE_URL": "https://tollgate.internal:8443/", "ALLOWED_HOSTS": "tollgate.internal"},
    {"TOLLGATE_BASE_URL": "http://10.0.0.5:8000", "SECRET_KEY": "x" * 45 + "abcde"},
])
def test_development_and_sound_production_settings_start(tmp_path, env):
    result = _run(["manage.py", "check"], tmp_path, **{"SECRET_KEY": PROD_SECRET, **env})
    assert result.returncode == 0, result.stderr


def test_the_asgi_server_refuses_to_start_on_bad_config(tmp_path):
    result = _run(["-c", "import governance.asgi"], tmp_path, SECRET_KEY=PROD_SECRET,
                  REDIS_URL="ftp://nope")
    assert result.returncode == 2
    assert "Configuration error: REDIS_URL" in result.stderr


def test_check_deploy_is_clean_with_production_settings(tmp_path):
    result = _run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], tmp_path,
                  SECRET_KEY=PROD_SECRET, ALLOWED_HOSTS="tollgate.example.com")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_a_key_lead_of_one_maximum_poll_interval_is_enough(tmp_path):
    result = _run(["manage.py", "check"], tmp_path, SECRET_KEY=PROD_SECRET,
                  BUNDLE_MAX_WAIT_SECONDS="120", BUNDLE_KEY_PUBLISH_LEAD_SECONDS="120")
    assert result.returncode == 0, result.stderr
