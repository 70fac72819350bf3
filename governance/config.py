"""Strict readers for settings that come from environment variables.

Every reader raises ImproperlyConfigured with a message that names the variable, so a typo in a
deployment stops start-up with a clear line instead of running with a silently wrong value.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    return None if value is None else value.strip()


def env_str(name: str, default: str = "") -> str:
    value = _raw(name)
    return default if value is None or value == "" else value


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}: expected true/false, got {value!r}")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    value = _raw(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}: expected an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}: must be at least {minimum}, got {number}")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    value = _raw(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def env_url(name: str, *, schemes: tuple[str, ...], default: str = "") -> str:
    """A URL whose scheme must be one of ``schemes`` and which must name a host."""
    value = _raw(name)
    if value is None or value == "":
        return default
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}: malformed URL ({exc})") from None
    if parts.scheme not in schemes:
        allowed = ", ".join(f"{s}://" for s in schemes)
        raise ImproperlyConfigured(f"{name}: scheme must be one of {allowed}; got {value!r}")
    if not parts.hostname and parts.scheme not in ("sqlite",):
        raise ImproperlyConfigured(f"{name}: URL has no host: {value!r}")
    return value


_SECRET_KEY_ADVICE = ("50+ random characters, e.g. python -c 'import secrets; "  # noqa: S105
                      "print(secrets.token_urlsafe(64))'")


def env_secret_key(name: str, *, debug: bool, demo_key: str) -> str:
    """Django's SECRET_KEY: with DEBUG off it must be set and pass what `check --deploy`
    (security.W009) only warns about — at least 50 characters, at least 5 distinct ones, not
    ``django-insecure-…``; with DEBUG on an unset key is ``demo_key``. The key itself never
    appears in a message."""
    from django.core.checks.security.base import (
        SECRET_KEY_INSECURE_PREFIX,
        SECRET_KEY_MIN_LENGTH,
        SECRET_KEY_MIN_UNIQUE_CHARACTERS,
    )

    value = env_str(name)
    if debug:
        return value or demo_key
    if not value:
        raise ImproperlyConfigured(f"{name}: must be set when DEBUG is off ({_SECRET_KEY_ADVICE}).")
    if len(value) < SECRET_KEY_MIN_LENGTH:
        raise ImproperlyConfigured(
            f"{name}: too short ({len(value)} characters; at least {SECRET_KEY_MIN_LENGTH} when "
            f"DEBUG is off): use {_SECRET_KEY_ADVICE}.")
    if len(set(value)) < SECRET_KEY_MIN_UNIQUE_CHARACTERS:
        raise ImproperlyConfigured(
            f"{name}: too little entropy ({len(set(value))} distinct characters; at least "
            f"{SECRET_KEY_MIN_UNIQUE_CHARACTERS} when DEBUG is off): use {_SECRET_KEY_ADVICE}.")
    if value.startswith(SECRET_KEY_INSECURE_PREFIX):
        raise ImproperlyConfigured(
            f"{name}: starts with {SECRET_KEY_INSECURE_PREFIX!r}, a development key, not for "
            f"DEBUG off: use {_SECRET_KEY_ADVICE}.")
    return value


def env_allowed_hosts(name: str, default: list[str], *, debug: bool) -> list[str]:
    """ALLOWED_HOSTS: with DEBUG off an empty list (every request answered 400) stops start-up."""
    hosts = env_list(name, default)
    if not hosts and not debug:
        raise ImproperlyConfigured(
            f"{name}: empty; with DEBUG off every request would be refused (400). List the host "
            "names this control plane is reached by, comma-separated (e.g. tollgate.example.com).")
    return hosts


def is_loopback_host(host: str) -> bool:
    """``localhost`` (and ``*.localhost``), 127.0.0.0/8, ::1 (also IPv4-mapped), or the
    unspecified address: nothing another machine can reach."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    address = mapped or address
    return address.is_loopback or address.is_unspecified


def env_public_url(name: str, *, default: str, debug: bool) -> str:
    """The control plane's public URL (as ``env_url``, http/https): with DEBUG off it may not
    name a loopback host, since it is the ``iss`` of every signed bundle and receipt and the
    base of every link in notifications."""
    value = env_url(name, schemes=("http", "https"), default=default)
    host = urlsplit(value).hostname or ""
    if not debug and is_loopback_host(host):
        shown = repr(value) if _raw(name) else f"unset, so the default {value!r},"
        raise ImproperlyConfigured(
            f"{name}: {shown} is a loopback address; with DEBUG off set it to the URL people "
            "and gateways reach this control plane at (e.g. https://tollgate.example.com): it "
            "is the iss of every signed bundle and the base of every link in notifications.")
    return value


_PATH_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")


def env_script_name(name: str, *, base_url: str, base_name: str) -> str:
    """The path prefix Tollgate is served under (``/tg``, or ``""`` at the root): ``name`` when
    set, else the path of ``base_url`` (the public URL, variable ``base_name``). Plain path
    segments only; when both are set they must agree, since links, cookies and the gateways'
    URLs all derive from them."""
    base_path = urlsplit(base_url).path.rstrip("/")
    value = _raw(name)
    if value is None or value == "":
        value, source = base_path, base_name
    else:
        source = name
    value = value.rstrip("/")
    if not value:
        return ""
    segments = value.split("/")
    if segments[0] != "" or not all(_PATH_SEGMENT.fullmatch(s) and s not in (".", "..")
                                    for s in segments[1:]):
        raise ImproperlyConfigured(
            f"{source}: the path prefix must look like /tollgate (letters, digits, '.', '_', "
            f"'~', '-' between slashes), got {value!r}.")
    if base_path and base_path != value:
        raise ImproperlyConfigured(
            f"{name}: {value!r} differs from the path of {base_name} ({base_path!r}); they "
            f"must name the same prefix (or leave {name} unset).")
    return value


def env_required_url(name: str, *, schemes: tuple[str, ...], required_by: str) -> str:
    """A URL (as ``env_url``) that must be set, because ``required_by`` is."""
    value = env_url(name, schemes=schemes)
    if not value:
        raise ImproperlyConfigured(f"{name}: required when {required_by} is set")
    return value


def env_networks(name: str, default: list[str], *, problem: str) -> list[str]:
    """A comma-separated list of CIDRs, each checked (``problem`` ends the error message)."""
    items = env_list(name, default)
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ImproperlyConfigured(f"{name}: {item!r} {problem}") from None
    return items


def env_absolute_paths(name: str) -> list[str]:
    """An operator's allow-list of programs: absolute paths only, never a name looked up in
    PATH."""
    paths = env_list(name, [])
    for path in paths:
        if not Path(path).is_absolute():
            raise ImproperlyConfigured(
                f"{name}: {path!r} is not an absolute path; list the exact "
                "program (e.g. /usr/local/bin/my-mcp-server), never a name looked up in PATH."
            )
    return paths


# Demo only (DEBUG=true, what `make run` sets): a fixed key, so restarts can still sign.
DEMO_FERNET_KEY = "ZGVtby1vbmx5LXRvbGxnYXRlLWJ1bmRsZS1rZXlzLTA="


def env_fernet_keys(name: str, old_name: str, *, debug: bool) -> list[str]:
    """Fernet keys, comma-separated, from ``name`` or its old name ``old_name`` (both set to
    different values is an error); required unless ``debug`` (then a fixed demo key)."""
    keys = {n: env_list(n, []) for n in (name, old_name)}
    if all(keys.values()) and keys[name] != keys[old_name]:
        raise ImproperlyConfigured(
            f"{name} and {old_name} (its old name) are both set and "
            f"differ: set only {name}.")
    source = next((n for n in (name, old_name) if keys[n]), name)
    values = keys[source]
    if not values:
        if not debug:
            raise ImproperlyConfigured(
                f"{name}: must be set when DEBUG is off (generate one with "
                "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key()"
                ".decode())')."
            )
        values = [DEMO_FERNET_KEY]
    from cryptography.fernet import Fernet

    for index, key in enumerate(values):
        try:
            Fernet(key)
        except ValueError:
            raise ImproperlyConfigured(
                f"{source}: entry {index + 1} is not a Fernet key (32 url-safe "
                "base64-encoded bytes)."
            ) from None
    return values


def database_config(name: str, default_sqlite_path: str) -> dict:
    """DATABASE_URL → Django DATABASES entry; SQLite file when unset."""
    url = env_url(name, schemes=("postgres", "postgresql", "pgsql", "sqlite"))
    if not url:
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": default_sqlite_path,
            # Web, worker and beat share one file: wait for the lock and take it up front so a
            # write never fails half-way with "database is locked".
            "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
        }
    try:
        config = environ.Env.db_url_config(url)
    except Exception as exc:  # django-environ raises several types for bad URLs
        raise ImproperlyConfigured(f"{name}: cannot parse ({exc})") from None
    if config["ENGINE"] == "django.db.backends.postgresql":
        if not config.get("NAME"):
            raise ImproperlyConfigured(f"{name}: no database name in {url!r}")
        config.setdefault("CONN_MAX_AGE", 0)
        config["CONN_HEALTH_CHECKS"] = True
    return config


UVICORN_FLAGS_FILE = Path(__file__).resolve().parent.parent / "scripts" / "uvicorn-flags"


def uvicorn_flags() -> list[str]:
    """The flags every Tollgate web process runs uvicorn with (``scripts/uvicorn-flags``, which
    scripts/run reads too): the bench and the tests that start a web process use these."""
    return [word for line in UVICORN_FLAGS_FILE.read_text().splitlines()
            if not line.lstrip().startswith("#") for word in shlex.split(line)]
