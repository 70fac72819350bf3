"""``manage.py deploy_config nginx``: deploy/nginx/tollgate.conf rendered with the deployment's
settings, accepted by the real nginx (``nginx -t``), and every option checked."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from tests.nginx_support import check_conf, main_conf


def _render(*args: str) -> str:
    out = io.StringIO()
    call_command("deploy_config", "nginx", *args, stdout=out)
    return out.getvalue()


def _location(conf: str, path: str) -> str:
    """The body of ``location <path> { … }`` (no nested blocks in ours)."""
    match = re.search(r"location " + re.escape(path) + r" \{(.*?)\n    \}", conf, re.S)
    assert match, f"no location {path}"
    return match.group(1)


def _directives(text: str, name: str) -> list[str]:
    return re.findall(rf"^\s*{name} ([^;{{]*);", text, re.M)


@pytest.fixture
def deployment(settings, tmp_path):
    settings.BUNDLE_MAX_WAIT_SECONDS = 120
    settings.STATIC_ROOT = tmp_path / "static"
    settings.BUNDLE_LOCAL_DIR = tmp_path / "bundles"
    settings.BUNDLE_ACCEL_REDIRECT = "/_tg_bundles/"
    settings.ALLOWED_HOSTS = ["tollgate.example.com", ".example.org"]
    return tmp_path


def test_the_timeouts_follow_the_longest_wait_and_timeouts_are_never_retried(deployment):
    conf = _render("--upstream", "127.0.0.1:8001", "--upstream", "127.0.0.1:8002")
    gateway = _location(conf, "/api/v1/gateway/")
    # The application answers a wait=120 poll after 120 s; nginx waits a minute longer.
    assert _directives(gateway, "proxy_read_timeout") == ["180s"]
    assert _directives(gateway, "proxy_pass") == ["http://tollgate_web"]
    # Another upstream only when the connection failed (a dead process), never after a timeout.
    assert _directives(conf, "proxy_next_upstream") == ["error"]
    assert _directives(conf, "server") == ["127.0.0.1:8001 max_fails=1 fail_timeout=5s",
                                           "127.0.0.1:8002 max_fails=1 fail_timeout=5s"]
    assert _directives(conf, "proxy_set_header") == [
        'Connection ""', "Host $http_host", "X-Forwarded-For $proxy_add_x_forwarded_for",
        "X-Forwarded-Proto $scheme"]
    assert _directives(conf, "server_name") == ["tollgate.example.com .example.org"]
    assert _directives(conf, "listen") == ["80"]


def test_under_a_path_prefix_the_long_poll_timeouts_apply_to_the_prefixed_gateway_api(
        deployment, settings):
    """Served under /tg the gateway API is /tg/api/v1/gateway/: an unprefixed location would
    leave held polls on nginx's 60 s default (an HTML 504 for every wait above it)."""
    settings.FORCE_SCRIPT_NAME = "/tg"
    settings.STATIC_URL = "/tg/static/"
    conf = _render("--upstream", "127.0.0.1:8001")
    assert _directives(_location(conf, "/tg/api/v1/gateway/"), "proxy_read_timeout") == ["180s"]
    assert "location /api/v1/gateway/ " not in conf
    assert "location /tg/static/ " in conf


def test_the_offload_location_keeps_the_applications_etag_and_revision(deployment):
    conf = _render()
    accel = _location(conf, "/_tg_bundles/")
    assert re.search(r"^\s*internal;$", accel, re.M)  # unreachable from outside
    assert _directives(accel, "alias") == [f"{deployment.resolve()}/bundles/"]
    assert _directives(accel, "etag") == ["off"]
    assert _directives(accel, "add_header") == [
        "ETag $upstream_http_etag always",
        "X-Bundle-Revision $upstream_http_x_bundle_revision always",
        "X-Request-ID $upstream_http_x_request_id always"]
    static = _location(conf, "/static/")
    assert _directives(static, "alias") == [f"{deployment.resolve()}/static/"]


def test_the_body_limit_is_above_the_applications(deployment, settings):
    settings.DECISION_LOG_MAX_BODY_BYTES = 20 * 1024 * 1024
    [limit] = _directives(_render(), "client_max_body_size")
    assert int(limit) > settings.DECISION_LOG_MAX_BODY_BYTES


def test_without_accel_redirect_the_location_is_there_and_says_how_to_use_it(deployment,
                                                                            settings):
    settings.BUNDLE_ACCEL_REDIRECT = ""
    conf = _render()
    assert "BUNDLE_ACCEL_REDIRECT is not set: set it to\n    # /_bundles/" in conf
    _location(conf, "/_bundles/")


def test_tls(deployment):
    conf = _render("--tls-certificate", "/etc/ssl/tollgate.pem", "--tls-key",
                   "/etc/ssl/private/tollgate.key", "--server-name", "tollgate.example.com")
    assert _directives(conf, "listen") == ["443 ssl", "80"]  # 80: a redirect to https only
    assert _directives(conf, "return") == ["301 https://$host$request_uri"]
    assert _directives(conf, "ssl_certificate") == ["/etc/ssl/tollgate.pem"]
    assert _directives(conf, "ssl_certificate_key") == ["/etc/ssl/private/tollgate.key"]
    assert _directives(conf, "server_name") == ["tollgate.example.com"] * 2


def test_behind_a_tls_balancer_the_application_is_told_https(deployment):
    conf = _render("--behind-tls-balancer")
    assert "X-Forwarded-Proto https" in _directives(conf, "proxy_set_header")
    assert "X-Forwarded-Proto $scheme" not in _directives(conf, "proxy_set_header")


@pytest.mark.parametrize(("args", "message"), [
    (["--upstream", "8001"], "--upstream: '8001' is not host:port"),
    (["--upstream", "127.0.0.1:99999"], "--upstream: '127.0.0.1:99999' is not host:port"),
    (["--upstream", "127.0.0.1:8001; evil"], "--upstream: "),
    (["--listen", "http"], "--listen: 'http' is not a port"),
    (["--server-name", "a;b"], "--server-name: 'a;b' is not a host name"),
    (["--tls-certificate", "/c.pem"], "--tls-certificate and --tls-key: give both"),
    (["--tls-certificate", "/c", "--tls-key", "/k", "--behind-tls-balancer"],
     "--behind-tls-balancer: nginx terminates TLS itself"),
    (["--tls-certificate", "c.pem", "--tls-key", "/k"], "--tls-certificate: 'c.pem' must be an "
                                                        "absolute path"),
])
def test_bad_options_are_refused_naming_the_option(deployment, args, message):
    with pytest.raises(CommandError) as excinfo:
        _render(*args)
    assert str(excinfo.value).startswith(message)


def test_an_allowed_host_nginx_cannot_take_asks_for_server_names(deployment, settings):
    settings.ALLOWED_HOSTS = ["[::1]"]
    with pytest.raises(CommandError, match=r"^ALLOWED_HOSTS: '\[::1\]' cannot be an nginx "
                                           "server name; pass --server-name"):
        _render()
    assert _directives(_render("--server-name", "_"), "server_name") == ["_"]


def test_a_setting_that_would_inject_directives_is_refused(deployment, settings):
    settings.BUNDLE_LOCAL_DIR = Path("/var/lib/tollgate/b; return 200")
    with pytest.raises(CommandError, match="^BUNDLE_LOCAL_DIR: "):
        _render()
    settings.BUNDLE_LOCAL_DIR = Path("/var/lib/tollgate/bundles")
    settings.BUNDLE_ACCEL_REDIRECT = "/x { }/"
    with pytest.raises(CommandError, match="^BUNDLE_ACCEL_REDIRECT: "):
        _render()


def test_the_real_nginx_accepts_it(deployment, tmp_path):
    include = tmp_path / "tollgate.conf"
    include.write_text(_render("--upstream", "127.0.0.1:8001", "--upstream", "[::1]:8002",
                               "--listen", "127.0.0.1:18080"))
    result = check_conf(main_conf(tmp_path / "prefix", include))
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tollgate.example.com")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_the_real_nginx_accepts_it_with_tls(deployment, tmp_path):
    cert, key = _self_signed(tmp_path)
    include = tmp_path / "tollgate.conf"
    include.write_text(_render("--listen", "127.0.0.1:18443", "--tls-certificate", str(cert),
                               "--tls-key", str(key), "--server-name", "tollgate.example.com"))
    result = check_conf(main_conf(tmp_path / "prefix", include))
    assert result.returncode == 0, result.stderr
