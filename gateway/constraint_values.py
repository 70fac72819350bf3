"""The canonicalising constraint keywords: ``within`` (paths) and ``url`` (URLs).

A regular expression on a raw path or URL is not a containment check: ``^/srv/files/public/``
matches ``/srv/files/public/../secret/x``, which the server resolves to ``/srv/files/secret/x``.
These keywords first bring the argument to one canonical form, refuse what has no single
reading, and only then compare. gateway/constraints.py dispatches to them; the rules are in
docs/gateway-contract.md ("Argument constraints").

``within: ["/srv/files/public", …]`` — the argument is a POSIX path that, resolved *lexically*
(``.`` and ``..`` resolved, repeated ``/`` collapsed), is one of the roots or below one of them.
Refused outright: a non-string, the empty string, control characters (NUL included), a
backslash (a separator on Windows servers, so it has no single meaning), a first component
starting with ``~`` (servers such as server-filesystem expand it to a home directory), a
relative path when the roots are absolute (and the reverse), and, with relative roots, a path
whose ``..`` climbs above its start. What this cannot know: symlinks on the server's disk.

``url: {"schemes": [...], "hosts": [...], "ports": [...]}`` — the argument is an absolute URL
with an authority (``scheme://host``) whose scheme is listed, whose host is listed (exactly, or
below a ``*.example.com`` entry) and whose port (explicit, or the scheme's default) is listed.
``schemes`` is required; ``hosts`` and ``ports``, when left out, allow any. Refused outright:
userinfo (anything with ``@`` before the host), backslashes, whitespace, control and
invisible format characters anywhere, ``%`` in the host, a host that is not a valid DNS name in
IDNA 2008 (non-ASCII hosts are compared in their ``xn--`` form), and a numeric host that is not
a canonical dotted-quad IPv4 address (``2130706433`` and ``0x7f.1`` mean 127.0.0.1 to some
clients).

Pure Python (``urllib.parse`` and the ``idna`` package).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from typing import Any
from urllib.parse import urlsplit

import idna


class ConstraintError(ValueError):
    """A constraint document is malformed; ``path`` points at the offending part."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


# --- Paths ------------------------------------------------------------------------------------

MAX_ROOTS = 100


def _path_problem(value: str) -> str | None:
    """Why ``value`` has no single lexical reading as a POSIX path (None: it has one)."""
    if not value:
        return "is empty"
    if any(unicodedata.category(char) == "Cc" for char in value):
        return "contains a control character"
    if "\\" in value:
        return "contains a backslash (refused: a separator on Windows servers)"
    if value.lstrip("/").startswith("~"):
        return "starts with '~' (refused: servers expand it to a home directory)"
    return None


def canonical_path(value: str) -> tuple[bool, list[str] | None]:
    """``(absolute, components)`` of ``value`` with ``.``, ``..`` and repeated ``/`` resolved
    lexically. ``components`` is None when a relative path climbs above its start (``a/../..``);
    ``..`` at the root of an absolute path stays at the root, as POSIX resolves it."""
    absolute = value.startswith("/")
    parts: list[str] = []
    for part in value.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            elif not absolute:
                return absolute, None
            continue
        parts.append(part)
    return absolute, parts


def _path_text(absolute: bool, parts: list[str]) -> str:
    if absolute:
        return "/" + "/".join(parts)
    return "/".join(parts) or "."


def validate_within(at: str, roots: Any) -> None:
    """``roots``: a non-empty list of distinct, normalised paths, all absolute or all relative."""
    if not isinstance(roots, list) or not roots or len(roots) > MAX_ROOTS:
        raise ConstraintError(at, f"must be a non-empty list of at most {MAX_ROOTS} paths")
    kinds = set()
    for index, root in enumerate(roots):
        where = f"{at}[{index}]"
        if not isinstance(root, str):
            raise ConstraintError(where, "must be a path (a string)")
        problem = _path_problem(root)
        if problem:
            raise ConstraintError(where, problem)
        absolute, parts = canonical_path(root)
        if parts is None:
            raise ConstraintError(where, "must not climb with '..'")
        normal = _path_text(absolute, parts)
        if root != normal:
            raise ConstraintError(
                where, f"must be written normalised: {normal!r} (no '.', '..', repeated or "
                       "trailing '/')")
        kinds.add(absolute)
    if len(kinds) > 1:
        raise ConstraintError(at, "roots must be all absolute or all relative")
    if len(set(roots)) != len(roots):
        raise ConstraintError(at, "lists a root twice")


def check_within(roots: list[str], value: Any) -> str | None:
    """None when ``value`` is a path inside one of ``roots`` (a root itself included)."""
    where = f"must be a path within {', '.join(roots)}"
    if not isinstance(value, str):
        return where
    problem = _path_problem(value)
    if problem:
        return f"{where}; it {problem}"
    absolute, parts = canonical_path(value)
    roots_absolute = roots[0].startswith("/")
    if absolute != roots_absolute:
        kind = "relative" if roots_absolute else "absolute"
        return f"{where}; it is {kind}"
    if parts is None:
        return f"{where}; it climbs above its start with '..'"
    for root in roots:
        _, root_parts = canonical_path(root)
        if root_parts is not None and parts[:len(root_parts)] == root_parts:
            return None
    # The resolved path is not echoed: reasons end up in decision logs, arguments do not.
    return f"{where}; it resolves outside every root"


# --- URLs -------------------------------------------------------------------------------------

URL_KEYS = ("schemes", "hosts", "ports")
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21}
MAX_LIST = 100
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*\Z")
_URL_START = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)\Z")
# Characters IDNA's encoders (and WHATWG URL parsers) read as a dot.
_OTHER_DOTS = "\u3002\uff0e\uff61"


class BadHost(ValueError):
    """A host with no single canonical form."""


def _refused_character(value: str) -> str | None:
    for char in value:
        category = unicodedata.category(char)
        if category == "Cc":
            return "a control character"
        if char.isspace() or category.startswith("Z"):
            return "whitespace"
        if category == "Cf":
            return f"an invisible format character (U+{ord(char):04X})"
        if char == "\\":
            return "a backslash"
    return None


def canonical_host(host: str) -> str:
    """The comparable form of a URL's host: a lowercase ASCII DNS name (IDNA 2008 ``xn--``
    labels, one trailing dot dropped), a dotted-quad IPv4 address or ``[ipv6]``."""
    if "%" in host:  # percent-encoding, and IPv6 zone identifiers (fe80::1%25eth0)
        raise BadHost("a '%' (percent-encoded hosts are refused)")
    if host.startswith("["):
        if not host.endswith("]"):
            raise BadHost("an unclosed '[' IPv6 literal")
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            raise BadHost("an invalid IPv6 literal") from None
    name = host[:-1] if host.endswith(".") else host
    if not name:
        raise BadHost("no host")
    name = name.lower()
    if not name.isascii():
        if any(dot in name for dot in _OTHER_DOTS):
            raise BadHost("a character other than '.' that some clients read as a dot")
        try:
            name = idna.encode(name, uts46=False).decode("ascii")
        except UnicodeError:  # idna.IDNAError is one
            raise BadHost("a name that is not valid IDNA 2008") from None
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise BadHost("a name that is not a valid host name")
    for label in labels:
        if label.startswith("xn--"):
            try:
                ok = idna.encode(idna.decode(label), uts46=False).decode("ascii") == label
            except UnicodeError:
                ok = False
            if not ok:
                raise BadHost("an invalid punycode (xn--) label")
    if _NUMERIC_LABEL.match(labels[-1]):
        try:
            address = ipaddress.IPv4Address(name)
        except ValueError:
            raise BadHost("a number that is not a dotted-quad IPv4 address") from None
        if str(address) != name:
            raise BadHost("an IPv4 address not written in canonical form")
    return name


def _host_entry(entry: str) -> tuple[bool, str]:
    """``(subdomains only, canonical host)`` of an allow-list entry."""
    if entry.startswith("*."):
        return True, entry[2:]
    return False, entry


def validate_url_rule(at: str, rule: Any) -> None:
    """``rule``: ``{"schemes": [...], "hosts"?: [...], "ports"?: [...]}``, each written in the
    form the check compares (lowercase scheme, canonical host, port number)."""
    if not isinstance(rule, dict):
        raise ConstraintError(at, "must be an object with schemes and optionally hosts, ports")
    unknown = sorted(set(rule) - set(URL_KEYS))
    if unknown:
        raise ConstraintError(f"{at}.{unknown[0]}",
                              f"unknown key; use {', '.join(URL_KEYS)}")
    if "schemes" not in rule:
        raise ConstraintError(f"{at}.schemes", "is required (e.g. [\"https\"])")
    for key, value in rule.items():
        if not isinstance(value, list) or not value or len(value) > MAX_LIST:
            raise ConstraintError(f"{at}.{key}",
                                  f"must be a non-empty list of at most {MAX_LIST} entries")
        if len({repr(v) for v in value}) != len(value):
            raise ConstraintError(f"{at}.{key}", "lists an entry twice")
    for index, scheme in enumerate(rule["schemes"]):
        if not isinstance(scheme, str) or not _SCHEME.match(scheme):
            raise ConstraintError(f"{at}.schemes[{index}]",
                                  "must be a lowercase URL scheme such as \"https\"")
    for index, entry in enumerate(rule.get("hosts", [])):
        where = f"{at}.hosts[{index}]"
        if not isinstance(entry, str):
            raise ConstraintError(where, "must be a host name (a string)")
        subdomains, host = _host_entry(entry)
        try:
            canonical = canonical_host(host)
        except BadHost as exc:
            raise ConstraintError(where, f"has {exc}") from None
        if subdomains and (canonical.startswith("[") or _NUMERIC_LABEL.match(
                canonical.rsplit(".", 1)[-1])):
            raise ConstraintError(where, "'*.' applies to host names, not addresses")
        if canonical != host:
            written = f"*.{canonical}" if subdomains else canonical
            raise ConstraintError(where, f"must be written canonically: {written!r}")
    for index, port in enumerate(rule.get("ports", [])):
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConstraintError(f"{at}.ports[{index}]", "must be a port number, 1 to 65535")


def parse_url(value: str) -> tuple[str, str, int | None]:
    """``(scheme, canonical host, port or None)`` of an absolute URL, or ValueError saying why
    it is refused."""
    bad = _refused_character(value)
    if bad:
        raise ValueError(f"contains {bad}")
    if not _URL_START.match(value):
        raise ValueError("is not an absolute URL of the form scheme://host")
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise ValueError(f"cannot be parsed ({exc})") from None
    netloc = parts.netloc
    if "@" in netloc:
        raise ValueError("has userinfo (user@ or user:password@ before the host)")
    host, port_text = netloc, ""
    if netloc.startswith("["):
        close = netloc.find("]")
        if close < 0:
            raise ValueError("has an unclosed '[' IPv6 literal")
        host, rest = netloc[:close + 1], netloc[close + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError("has text after the IPv6 literal")
        port_text = rest[1:]
    elif ":" in netloc:
        host, _, port_text = netloc.rpartition(":")
    try:
        canonical = canonical_host(host)
    except BadHost as exc:
        raise ValueError(f"has {exc}") from None
    port = None
    if port_text:
        if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
            raise ValueError("has an invalid port")
        port = int(port_text)
    return parts.scheme.lower(), canonical, port


def host_allowed(entries: list[str], host: str) -> bool:
    for entry in entries:
        subdomains, name = _host_entry(entry)
        if host == name if not subdomains else host.endswith("." + name):
            return True
    return False


def check_url(rule: dict, value: Any) -> str | None:
    """None when ``value`` is a URL allowed by ``rule``, else why not."""
    if not isinstance(value, str):
        return "must be a URL (a string)"
    try:
        scheme, host, port = parse_url(value)
    except ValueError as exc:
        return f"must be a plain absolute URL; it {exc}"
    if scheme not in rule["schemes"]:
        return f"must be a URL with scheme {' or '.join(rule['schemes'])}"
    if "hosts" in rule and not host_allowed(rule["hosts"], host):
        return f"must be a URL on host {', '.join(rule['hosts'])}; its host is not listed"
    if "ports" in rule:
        effective = port if port is not None else DEFAULT_PORTS.get(scheme)
        if effective not in rule["ports"]:
            why = ("it has no port and its scheme no default port" if effective is None
                   else "its port is not listed")
            return f"must be a URL on port {', '.join(str(p) for p in rule['ports'])}; {why}"
    return None
