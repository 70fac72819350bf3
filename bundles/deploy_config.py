"""The nginx configuration of a deployment (deploy/nginx/tollgate.conf), rendered with this
deployment's settings: the long-poll timeouts follow BUNDLE_MAX_WAIT_SECONDS, the internal
location BUNDLE_ACCEL_REDIRECT and BUNDLE_LOCAL_DIR, the static files STATIC_ROOT, the body limit
the gateway API's largest accepted body. ``manage.py deploy_config nginx`` prints it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.template import Context, Engine

TEMPLATE_DIR = Path(settings.BASE_DIR) / "deploy" / "nginx"
TEMPLATE_NAME = "tollgate.conf"
DEFAULT_UPSTREAMS = ("127.0.0.1:8001", "127.0.0.1:8002")
DEFAULT_ACCEL_LOCATION = "/_bundles/"
# nginx waits this much longer than the longest hold, so the application always answers first.
GATEWAY_TIMEOUT_MARGIN = 60
# Above the application's own limit, so a body just over it gets the application's JSON 413.
BODY_LIMIT_MARGIN = 64 * 1024

_HOST_PORT = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})$")
_UNIX = re.compile(r"^unix:/[^\s;{}'\"]+$")
_LISTEN = re.compile(r"^(?:(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):)?(\d{1,5})$")
_SERVER_NAME = re.compile(r"^(?:_|\*?\.?[A-Za-z0-9.-]+\*?)$")
_LOCATION = re.compile(r"^/[A-Za-z0-9_./-]*/$")
_SAFE_PATH = re.compile(r"^/[^\s;{}'\"$#]*$")


class ConfigError(ValueError):
    """An option that cannot go into the configuration (the message names it)."""


@dataclass
class NginxOptions:
    upstreams: list[str] = field(default_factory=lambda: list(DEFAULT_UPSTREAMS))
    listens: list[str] = field(default_factory=lambda: ["80"])
    server_names: list[str] = field(default_factory=list)
    tls_certificate: str = ""
    tls_key: str = ""
    # A balancer before nginx terminates TLS: the application is told https whatever nginx saw.
    behind_tls_balancer: bool = False
    argv: str = ""


def _port_ok(port: str) -> bool:
    return 0 < int(port) < 65536


def _check_upstream(value: str) -> str:
    match = _HOST_PORT.match(value)
    if (match and _port_ok(match.group(1))) or _UNIX.match(value):
        return value
    raise ConfigError(f"--upstream: {value!r} is not host:port (e.g. 127.0.0.1:8001) or "
                      "unix:/path")


def _check_listen(value: str) -> str:
    match = _LISTEN.match(value)
    if not match or not _port_ok(match.group(1)):
        raise ConfigError(f"--listen: {value!r} is not a port or address:port (e.g. 443 or "
                          "203.0.113.7:443)")
    return value


def _check_path(option: str, value: str) -> str:
    if not _SAFE_PATH.match(value):
        raise ConfigError(f"{option}: {value!r} must be an absolute path without spaces, "
                          "quotes, ';', '{', '}', '$' or '#'")
    return value.rstrip("/") or "/"


def default_server_names() -> list[str]:
    """ALLOWED_HOSTS as nginx server names (``*`` → the catch-all ``_``)."""
    names = [("_" if host == "*" else host) for host in settings.ALLOWED_HOSTS]
    return names or ["_"]


def nginx_context(options: NginxOptions) -> dict:
    """What the template needs, every value checked (nothing a setting holds can inject
    directives)."""
    if not options.upstreams:
        raise ConfigError("--upstream: name at least one web process")
    names = options.server_names or default_server_names()
    for name in names:
        if not _SERVER_NAME.match(name):
            if options.server_names:
                raise ConfigError(f"--server-name: {name!r} is not a host name")
            raise ConfigError(f"ALLOWED_HOSTS: {name!r} cannot be an nginx server name; pass "
                              "--server-name for each name nginx should answer")
    if bool(options.tls_certificate) != bool(options.tls_key):
        raise ConfigError("--tls-certificate and --tls-key: give both or neither")
    tls = bool(options.tls_certificate)
    if tls and options.behind_tls_balancer:
        raise ConfigError("--behind-tls-balancer: nginx terminates TLS itself here "
                          "(--tls-certificate); use one or the other")
    listens = [_check_listen(v) + (" ssl" if tls else "") for v in options.listens]
    accel = settings.BUNDLE_ACCEL_REDIRECT or DEFAULT_ACCEL_LOCATION
    accel = accel if accel.endswith("/") else accel + "/"
    if not _LOCATION.match(accel):
        raise ConfigError(f"BUNDLE_ACCEL_REDIRECT: {accel!r} is not a location such as "
                          f"{DEFAULT_ACCEL_LOCATION}")
    static_url = settings.STATIC_URL if settings.STATIC_URL.startswith("/") else (
        "/" + settings.STATIC_URL)
    body_limit = max(settings.DECISION_LOG_MAX_BODY_BYTES, settings.GATEWAY_MAX_BODY_BYTES)
    max_wait = settings.BUNDLE_MAX_WAIT_SECONDS
    return {
        "argv": options.argv,
        "upstreams": [_check_upstream(v) for v in options.upstreams],
        "listens": listens,
        "server_name": " ".join(names),
        "tls_certificate": _check_path("--tls-certificate", options.tls_certificate)
        if tls else "",
        "tls_key": _check_path("--tls-key", options.tls_key) if tls else "",
        "max_wait": max_wait,
        "gateway_margin": GATEWAY_TIMEOUT_MARGIN,
        "gateway_read_timeout": max_wait + GATEWAY_TIMEOUT_MARGIN,
        # Under a path prefix (FORCE_SCRIPT_NAME, or the path of TOLLGATE_BASE_URL) nginx passes
        # the path on unchanged and the application routes under it.
        "gateway_location": f"{settings.FORCE_SCRIPT_NAME or ''}/api/v1/gateway/",
        "client_max_body_size": body_limit + BODY_LIMIT_MARGIN,
        "static_url": static_url if static_url.endswith("/") else static_url + "/",
        "static_root": _check_path("STATIC_ROOT", str(Path(settings.STATIC_ROOT).resolve())),
        "bundle_dir": _check_path("BUNDLE_LOCAL_DIR",
                                  str(Path(settings.BUNDLE_LOCAL_DIR).resolve())),
        "accel_location": accel,
        "accel_enabled": bool(settings.BUNDLE_ACCEL_REDIRECT),
        "tls_balancer": options.behind_tls_balancer,
    }


def render_nginx(options: NginxOptions) -> str:
    engine = Engine(dirs=[str(TEMPLATE_DIR)], autoescape=False,
                    libraries={}, builtins=["django.template.defaultfilters"])
    template = engine.get_template(TEMPLATE_NAME)
    return template.render(Context(nginx_context(options)))
