"""The outbound-connection guard (SSRF): where Tollgate may connect to on a tenant's behalf.

Tenant admins type URLs and hosts that the control plane later connects to from inside its own
network: MCP server URLs (tool sync), webhook and Slack channel URLs (notifications), Splunk HEC
URLs and syslog receivers (SIEM exports). Without a check, any of them can point at the machine
itself or at the cloud's metadata service and make Tollgate an SSRF proxy.

What is refused
---------------
A host is refused when **any** address it resolves to (every ``getaddrinfo`` answer, IPv4 and
IPv6) is in one of these classes:

- ``metadata``: cloud instance-metadata endpoints (169.254.169.254, 169.254.170.2, fd00:ec2::254,
  100.100.100.200, 168.63.129.16) and the names ``metadata.google.internal`` & co., which are
  refused by name whatever they resolve to;
- ``loopback``: 127.0.0.0/8, ::1;
- ``link-local``: 169.254.0.0/16, fe80::/10;
- ``unspecified``: 0.0.0.0/8, :: (Linux connects 0.0.0.0 to the machine itself);
- ``multicast``: 224.0.0.0/4, ff00::/8; ``broadcast``: 255.255.255.255.

An IPv6 address that embeds an IPv4 one (IPv4-mapped ``::ffff:127.0.0.1``, IPv4-compatible,
NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) is judged by the IPv4 address too. Numeric host forms
(``2130706433``, ``0x7f.1``, ``0177.0.0.1``) are read the way the C resolver reads them, and a
URL's host is taken with the same parser the HTTP client uses (``good@127.0.0.1`` is 127.0.0.1).

Private networks (10/8, 172.16/12, 192.168/16, fc00::/7, 100.64/10) are **allowed** by default:
internal MCP servers, webhook receivers and SIEM collectors usually live there, and refusing them
would break the common deployment. Operators who want those refused put Tollgate behind an
egress firewall; this guard is about the addresses that are never a legitimate tenant target.

``OUTBOUND_ALLOWED_NETWORKS`` (comma-separated CIDRs, default empty) lets an operator allow
addresses in a blocked class, e.g. ``127.0.0.0/8`` for a sidecar on the same host. Metadata host
names stay refused whatever it says.

Where it runs
-------------
1. When a URL or host is saved (the services): :func:`validate_url` / :func:`validate_host` raise
   a Django ``ValidationError`` on the field. A name that does not resolve *now* is accepted (it
   cannot point anywhere yet; the connection-time check covers it later).
2. Right before every connection (:func:`check_url` / :func:`safe_addresses`), because DNS can
   change after validation (rebinding). The caller turns :class:`OutboundBlocked` into its own
   visible failure (a failed sync run, a failed delivery attempt, an exporter error).

Every connection goes to an address that was checked, with no second lookup in between:

- syslog senders connect to the entries :func:`safe_addresses` returned;
- HTTP senders (webhooks, Slack, Splunk HEC) and the MCP tool sync use :func:`pinned_transport`
  / :func:`pinned_async_transport`: the HTTP client's network backend resolves the name once,
  checks every answer and connects to those answers. The request keeps the URL's host (``Host``
  header, TLS SNI and certificate check), so a DNS server that answers differently between the
  check and the connection (rebinding) gains nothing. Redirects are not followed by the senders;
  the MCP SDK follows them only within the origin, and every hop goes through the same backend.
- These clients connect directly: ``HTTP(S)_PROXY`` from the environment is not used (a proxy
  would do its own lookup, after the check).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

import anyio
import httpcore2
import httpx2
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SETTING = "OUTBOUND_ALLOWED_NETWORKS"

METADATA_NAMES = frozenset({
    "metadata", "metadata.google.internal", "metadata.goog", "instance-data",
    "instance-data.ec2.internal", "metadata.azure.internal", "metadata.tencentyun.com",
})

_n = ipaddress.ip_network
# Checked in this order: the first matching class names the refusal.
BLOCKED_CLASSES: tuple[tuple[str, tuple[IPNetwork, ...]], ...] = (
    ("metadata", (_n("169.254.169.254/32"), _n("169.254.170.2/32"), _n("fd00:ec2::254/128"),
                  _n("100.100.100.200/32"), _n("168.63.129.16/32"))),
    ("unspecified", (_n("0.0.0.0/8"), _n("::/128"))),
    ("loopback", (_n("127.0.0.0/8"), _n("::1/128"))),
    ("link-local", (_n("169.254.0.0/16"), _n("fe80::/10"))),
    ("multicast", (_n("224.0.0.0/4"), _n("ff00::/8"))),
    ("broadcast", (_n("255.255.255.255/32"),)),
)
_NAT64 = _n("64:ff9b::/96")
_LEGACY_IPV4 = re.compile(r"[0-9a-fA-FxX.]+")


@dataclass(frozen=True)
class Blocked:
    """Why one host is refused."""

    host: str
    address: str
    kind: str
    by_name: bool = False


class OutboundBlocked(Exception):
    """A connection target is refused; the message names the address class (never the URL)."""

    def __init__(self, blocked: Blocked, purpose: str = "") -> None:
        self.blocked = blocked
        self.purpose = purpose
        host, address, kind = blocked.host, blocked.address, blocked.kind
        article = "an" if kind[0] in "aeiou" else "a"
        if blocked.by_name:
            where = f"{host} is a cloud metadata host name"
        elif address == host:
            where = f"{host} is {article} {kind} address"
        else:
            where = f"{host} resolves to {address}, {article} {kind} address"
        super().__init__(
            f"{where}; outbound connections to loopback, link-local, metadata, unspecified and "
            f"multicast addresses are blocked (an operator can allow a network with {SETTING}).")


# --- Configuration -----------------------------------------------------------------------------


def parse_networks(value: str | Iterable[str], name: str = SETTING) -> tuple[IPNetwork, ...]:
    """CIDRs (a comma-separated string or a list) → networks; ImproperlyConfigured naming
    ``name`` for a malformed entry."""
    items = value.split(",") if isinstance(value, str) else list(value)
    networks = []
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ImproperlyConfigured(
                f"{name}: {item!r} is not a network (use CIDRs such as 127.0.0.0/8)") from None
    return tuple(networks)


@lru_cache(maxsize=8)
def _cached_networks(value: str | tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return parse_networks(value)


def allowed_networks() -> tuple[IPNetwork, ...]:
    """The networks ``OUTBOUND_ALLOWED_NETWORKS`` allows (read on every call: tests change it)."""
    value = getattr(settings, SETTING, "") or ""
    return _cached_networks(value if isinstance(value, str) else tuple(value))


# --- Addresses ---------------------------------------------------------------------------------


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if address.version != 6:
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    packed = int(address)
    if packed >> 32 == 0 and packed > 1:  # IPv4-compatible ::a.b.c.d (deprecated)
        return ipaddress.IPv4Address(packed)
    return None


def classify(address: IPAddress) -> tuple[str, IPAddress] | None:
    """(class, the address that matched) when ``address`` is in a blocked class, else None."""
    candidates = [address]
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        candidates.append(embedded)
    for kind, networks in BLOCKED_CLASSES:
        for candidate in candidates:
            if any(candidate in net for net in networks if net.version == candidate.version):
                return kind, candidate
    return None


def _allowed(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    candidates = [address]
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        candidates.append(embedded)
    return any(c in net for c in candidates for net in networks if net.version == c.version)


def literal_address(host: str) -> IPAddress | None:
    """``host`` as an IP address if it is one, in any form the C resolver accepts
    (``[::1]``, ``fe80::1%eth0``, ``2130706433``, ``0x7f.1``, ``0177.0.0.1``)."""
    text = host.strip().strip("[]")
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(text) and any(c.isdigit() for c in text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def normalise_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _check_addresses(host: str, addresses: Iterable[IPAddress]) -> None:
    networks = allowed_networks()
    for address in addresses:
        found = classify(address)
        if found is not None and not _allowed(address, networks):
            kind, matched = found
            raise OutboundBlocked(Blocked(host=host, address=str(matched), kind=kind))


def _name_check(host: str) -> None:
    name = normalise_host(host)
    if name in METADATA_NAMES:
        raise OutboundBlocked(Blocked(host=name, address=name, kind="metadata", by_name=True))


def safe_addresses(host: str, port: int | None, *, socktype: int = socket.SOCK_STREAM,
                   purpose: str = "") -> list[tuple]:
    """Resolve ``host`` once and return the ``getaddrinfo`` entries to connect to, after checking
    every one; OutboundBlocked if any is refused, ``socket.gaierror`` if it does not resolve.

    Connecting to exactly these entries (rather than the name) leaves no room for rebinding."""
    try:
        _name_check(host)
        literal = literal_address(host)
        if literal is not None:
            _check_addresses(normalise_host(host), [literal])
            host = str(literal)
        infos = socket.getaddrinfo(host, port, type=socktype)
        _check_addresses(normalise_host(host),
                         [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos])
    except OutboundBlocked as exc:
        exc.purpose = purpose
        raise
    return infos


def _pinned_infos(host: str, port: int, purpose: str) -> list[tuple]:
    """safe_addresses for the HTTP backends: a name that does not resolve is httpcore's
    ConnectError (what the client reports for an unknown host); OutboundBlocked propagates."""
    try:
        return safe_addresses(host, port, purpose=purpose)
    except (socket.gaierror, UnicodeError) as exc:
        raise httpcore2.ConnectError(f"{host} does not resolve ({exc})") from None


class _PinnedBackend(httpcore2.NetworkBackend):
    """httpcore's network backend, connecting only to the addresses it has just checked."""

    def __init__(self, purpose: str) -> None:
        self.purpose = purpose
        self._inner = httpcore2.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        error: Exception | None = None
        for *_, sockaddr in _pinned_infos(host, port, self.purpose):
            try:
                return self._inner.connect_tcp(sockaddr[0], port, timeout, local_address,
                                               socket_options)
            except httpcore2.ConnectError as exc:  # like create_connection: try the next one
                error = exc
        raise error or httpcore2.ConnectError(f"{host} has no address")

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise httpcore2.ConnectError("outbound connections are TCP only")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _PinnedAsyncBackend(httpcore2.AsyncNetworkBackend):
    """The same for async clients (the MCP SDK's), on anyio."""

    def __init__(self, purpose: str) -> None:
        self.purpose = purpose
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(self, host, port, timeout=None, local_address=None,
                          socket_options=None):
        infos = await anyio.to_thread.run_sync(_pinned_infos, host, port, self.purpose)
        error: Exception | None = None
        for *_, sockaddr in infos:
            try:
                return await self._inner.connect_tcp(sockaddr[0], port, timeout, local_address,
                                                     socket_options)
            except httpcore2.ConnectError as exc:
                error = exc
        raise error or httpcore2.ConnectError(f"{host} has no address")

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise httpcore2.ConnectError("outbound connections are TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# What httpx's own pool would have had (its DEFAULT_LIMITS, not exported).
_POOL_LIMITS = {"max_connections": 100, "max_keepalive_connections": 20, "keepalive_expiry": 5.0}


def pinned_transport(purpose: str = "") -> httpx2.HTTPTransport:
    """An httpx transport whose connections go only to checked addresses (OutboundBlocked from
    the request otherwise). Pass it as ``httpx2.Client(transport=…)``."""
    transport = httpx2.HTTPTransport(trust_env=False)
    # httpx has no argument for the network backend; its pool is rebuilt with one (the same
    # TLS context). tests/governance/test_outbound.py proves the pinning through a real request.
    transport._pool = httpcore2.ConnectionPool(
        ssl_context=httpx2.create_ssl_context(trust_env=False),
        network_backend=_PinnedBackend(purpose), **_POOL_LIMITS)
    return transport


def pinned_async_transport(purpose: str = "") -> httpx2.AsyncHTTPTransport:
    """The async form of :func:`pinned_transport` (``httpx2.AsyncClient(transport=…)``)."""
    transport = httpx2.AsyncHTTPTransport(trust_env=False)
    transport._pool = httpcore2.AsyncConnectionPool(
        ssl_context=httpx2.create_ssl_context(trust_env=False),
        network_backend=_PinnedAsyncBackend(purpose), **_POOL_LIMITS)
    return transport


def check_host(host: str, port: int | None = None, *, purpose: str = "",
               socktype: int = socket.SOCK_STREAM, unresolvable_ok: bool = True) -> None:
    """OutboundBlocked when ``host`` is (or resolves to) a refused address. A name that does not
    resolve passes when ``unresolvable_ok`` (the connection will fail on its own), else the
    ``socket.gaierror`` propagates."""
    try:
        safe_addresses(host, port, socktype=socktype, purpose=purpose)
    except socket.gaierror:
        if not unresolvable_ok:
            raise
    except UnicodeError:  # an IDNA name the resolver cannot encode: it cannot connect either
        if not unresolvable_ok:
            raise


def url_hosts(url: str) -> list[tuple[str, int | None]]:
    """The (host, port) pairs a URL may connect to: the HTTP client's reading of it, and the
    standard library's when it differs (a crafted URL must not pass by parser disagreement)."""
    pairs: list[tuple[str, int | None]] = []
    try:
        parsed = httpx2.URL(url)
        if parsed.host:
            pairs.append((parsed.host, parsed.port))
    except (httpx2.InvalidURL, TypeError, ValueError):
        pass
    try:
        parts = urlsplit(url)
        if parts.hostname:
            try:
                port = parts.port
            except ValueError:
                port = None
            pair = (parts.hostname, port)
            if normalise_host(pair[0]) not in {normalise_host(h) for h, _ in pairs}:
                pairs.append(pair)
    except ValueError:
        pass
    return pairs


def check_url(url: str, *, purpose: str = "", unresolvable_ok: bool = True) -> None:
    """OutboundBlocked when the URL's host is (or resolves to) a refused address."""
    for host, port in url_hosts(url):
        check_host(host, port, purpose=purpose, unresolvable_ok=unresolvable_ok)


# --- Save-time validation ----------------------------------------------------------------------


def validate_url(url: str, *, field: str, purpose: str = "") -> None:
    """ValidationError on ``field`` when the URL's host is refused (for the services)."""
    try:
        check_url(url, purpose=purpose)
    except OutboundBlocked as exc:
        raise ValidationError({field: str(exc)}) from None


def validate_host(host: str, port: int | None = None, *, field: str, purpose: str = "",
                  socktype: int = socket.SOCK_STREAM) -> None:
    """ValidationError on ``field`` when ``host`` is refused (for the services)."""
    try:
        check_host(host, port, purpose=purpose, socktype=socktype)
    except OutboundBlocked as exc:
        raise ValidationError({field: str(exc)}) from None
