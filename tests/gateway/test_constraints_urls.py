"""The ``url`` constraint keyword (gateway/constraint_values.py): scheme, host and port
allow-lists over a URL parsed once, with every form that parsers read differently refused.

Tricks as explicit examples (userinfo, backslash, look-alike suffixes, IDNA and punycode,
uppercase, trailing dots, default ports, numeric hosts); properties compare the checker with a
model built from the URL's generated parts, and with urllib3's parser (what ``requests``, and so
many Python MCP servers, use to fetch).
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import example, given, note
from hypothesis import strategies as st
from urllib3.util import parse_url

from gateway.constraints import ConstraintError, check_value, validate_constraints
from tests.hypothesis_support import PROFILE

RULE = {"url": {"schemes": ["https"],
                "hosts": ["good.example", "*.corp.example", "xn--bcher-kva.example"]}}


@pytest.mark.parametrize("url", [
    "https://good.example@evil.example/",
    "https://good.example:443@evil.example/",
    "https://user:pw@good.example/",
    "https://user@good.example/",
    "https://@good.example/",
    "https://evil.example\\@good.example",
    "https://good.example\\@evil.example/",
    "https://evil.example\\.good.example/",
    "https:\\\\good.example/",
    "https://good.example.evil.example/",
    "https://evilgood.example/",
    "https://good.example.evil.example./",
    "https://corp.example/",  # *.corp.example means below it, not itself
    "https://xcorp.example/",
    "https://a.corp.example.evil.example/",
    "https://good%2eexample/",
    "https://%67ood.example/",
    "https://good．example/",  # a fullwidth full stop, which WHATWG parsers read as "."
    "https://good。example/",
    "https://goo\u200bd.example/",  # zero-width space
    "https://good.example\u202e/",  # right-to-left override
    "https://ｇｏｏｄ.example/",  # fullwidth letters (UTS 46 would map them)
    "https://xn--bcher-xxx.example/",  # invalid punycode
    "https://good.example /",
    " https://good.example/",
    "https://good.example/\n",
    "https://good.example\t/",
    "https://good.example\x00/",
    "http://good.example/",
    "ftp://good.example/",
    "javascript://good.example/%0aalert(1)",
    "//good.example/",
    "https:good.example",
    "https:/good.example",
    "https:///good.example",
    "good.example",
    "https://good.example:99999/",
    "https://good.example:-1/",
    "https://good.example:1e3/",
    "https://good.example:80:443/",
    "https://[::1/",
    "https://2130706433/",
    "https://0x7f.0.0.1/",
    "https://127.1/",
    "https://good.example..",
    "https://.good.example/",
    "https://-good.example/",
    "https://good_example/x y",
    "https://good.example#\\@evil.example",
    "",
    None,
    42,
])
def test_url_tricks_are_refused(url):
    reason = check_value(RULE, url)

    assert reason is not None


@pytest.mark.parametrize("url", [
    "https://good.example",
    "https://good.example/",
    "HTTPS://GOOD.EXAMPLE/Path?q=1#frag",
    "https://Good.Example./x",  # one trailing dot: the same DNS name
    "https://good.example:443/",
    "https://good.example:/",
    "https://a.corp.example/",
    "https://a.b.corp.example/x",
    "https://bücher.example/",
    "https://BÜCHER.example/",
    "https://xn--bcher-kva.example/",
    "https://XN--BCHER-KVA.example/",
    "https://good.example/ü?q=ü",  # non-ASCII outside the host is the server's business
    "https://good.example#@evil.example",  # the fragment, not the authority
    "https://good.example?@evil.example",
    "https://good.example/@evil.example",
])
def test_urls_on_the_list_pass(url):
    assert check_value(RULE, url) is None


def test_reasons_say_which_part_failed_without_echoing_the_host():
    assert check_value(RULE, "http://good.example/") == "must be a URL with scheme https"
    assert check_value(RULE, "https://evil.example/") == (
        "must be a URL on host good.example, *.corp.example, xn--bcher-kva.example; its host "
        "is not listed")
    assert check_value(RULE, "https://u@good.example/") == (
        "must be a plain absolute URL; it has userinfo (user@ or user:password@ before the "
        "host)")
    assert check_value(RULE, 3) == "must be a URL (a string)"


@pytest.mark.parametrize(("url", "allowed"), [
    ("https://good.example/", True),  # 443, https's default
    ("https://good.example:443/", True),
    ("https://good.example:0443/", True),
    ("https://good.example:8443/", True),
    ("https://good.example:80/", False),
    ("http://good.example/", False),  # 80, http's default
    ("http://good.example:8443/", True),
    ("wss://good.example/", True),
    ("ws://good.example/", False),
    ("gopher://good.example/", False),  # no known default port
    ("gopher://good.example:443/", True),
])
def test_ports_compare_the_explicit_or_the_default_port(url, allowed):
    rule = {"url": {"schemes": ["https", "http", "wss", "ws", "gopher"],
                    "ports": [443, 8443]}}
    assert (check_value(rule, url) is None) == allowed


def test_addresses_are_compared_in_canonical_form():
    rule = {"url": {"schemes": ["http"], "hosts": ["127.0.0.1", "[::1]"]}}
    assert check_value(rule, "http://127.0.0.1:8080/") is None
    assert check_value(rule, "http://[::1]/") is None
    assert check_value(rule, "http://[0:0::1]/") is None
    assert check_value(rule, "http://[::2]/") is not None
    assert check_value(rule, "http://127.0.0.01/") is not None
    assert check_value(rule, "http://[::1]x/") is not None


def test_without_hosts_any_valid_host_passes_but_tricks_still_fail():
    rule = {"url": {"schemes": ["https"]}}
    assert check_value(rule, "https://anything.example/") is None
    assert check_value(rule, "https://a@anything.example/") is not None
    assert check_value(rule, "https://0x7f.1/") is not None


@pytest.mark.parametrize(("rule", "path", "message"), [
    ([], "argument_constraints.fetch.url.url",
     "must be an object with schemes and optionally hosts, ports"),
    ({"hosts": ["good.example"]}, "argument_constraints.fetch.url.url.schemes",
     'is required (e.g. ["https"])'),
    ({"schemes": []}, "argument_constraints.fetch.url.url.schemes",
     "must be a non-empty list of at most 100 entries"),
    ({"schemes": ["https", "https"]}, "argument_constraints.fetch.url.url.schemes",
     "lists an entry twice"),
    ({"schemes": ["HTTPS"]}, "argument_constraints.fetch.url.url.schemes[0]",
     'must be a lowercase URL scheme such as "https"'),
    ({"schemes": ["https:"]}, "argument_constraints.fetch.url.url.schemes[0]",
     'must be a lowercase URL scheme such as "https"'),
    ({"schemes": ["https"], "host": ["a.example"]}, "argument_constraints.fetch.url.url.host",
     "unknown key; use schemes, hosts, ports"),
    ({"schemes": ["https"], "hosts": ["Good.Example"]},
     "argument_constraints.fetch.url.url.hosts[0]", "must be written canonically: 'good.example'"),
    ({"schemes": ["https"], "hosts": ["good.example."]},
     "argument_constraints.fetch.url.url.hosts[0]", "must be written canonically: 'good.example'"),
    ({"schemes": ["https"], "hosts": ["bücher.example"]},
     "argument_constraints.fetch.url.url.hosts[0]",
     "must be written canonically: 'xn--bcher-kva.example'"),
    ({"schemes": ["https"], "hosts": ["*.Corp.example"]},
     "argument_constraints.fetch.url.url.hosts[0]",
     "must be written canonically: '*.corp.example'"),
    ({"schemes": ["https"], "hosts": ["*.127.0.0.1"]},
     "argument_constraints.fetch.url.url.hosts[0]",
     "'*.' applies to host names, not addresses"),
    ({"schemes": ["https"], "hosts": ["*"]}, "argument_constraints.fetch.url.url.hosts[0]",
     "has a name that is not a valid host name"),
    ({"schemes": ["https"], "hosts": ["https://good.example"]},
     "argument_constraints.fetch.url.url.hosts[0]", "has a name that is not a valid host name"),
    ({"schemes": ["https"], "hosts": ["2130706433"]},
     "argument_constraints.fetch.url.url.hosts[0]",
     "has a number that is not a dotted-quad IPv4 address"),
    ({"schemes": ["https"], "hosts": [7]}, "argument_constraints.fetch.url.url.hosts[0]",
     "must be a host name (a string)"),
    ({"schemes": ["https"], "ports": [0]}, "argument_constraints.fetch.url.url.ports[0]",
     "must be a port number, 1 to 65535"),
    ({"schemes": ["https"], "ports": [True]}, "argument_constraints.fetch.url.url.ports[0]",
     "must be a port number, 1 to 65535"),
    ({"schemes": ["https"], "ports": ["443"]}, "argument_constraints.fetch.url.url.ports[0]",
     "must be a port number, 1 to 65535"),
])
def test_bad_url_rules_are_refused_with_the_path_of_the_error(rule, path, message):
    with pytest.raises(ConstraintError) as caught:
        validate_constraints({"fetch": {"url": {"url": rule}}}, root="argument_constraints")
    assert (caught.value.path, caught.value.message) == (path, message)


# --- Properties -------------------------------------------------------------------------------

# Written forms of hosts, and the one name each stands for (by hand, not by the gateway's code).
HOSTS = {
    "good.example": "good.example", "GOOD.example": "good.example",
    "good.example.": "good.example", "Good.Example.": "good.example",
    "a.corp.example": "a.corp.example", "B.A.Corp.Example": "b.a.corp.example",
    "corp.example": "corp.example", "evil.example": "evil.example",
    "good.example.evil.example": "good.example.evil.example",
    "evilgood.example": "evilgood.example",
    "bücher.example": "xn--bcher-kva.example", "BÜCHER.example": "xn--bcher-kva.example",
    "xn--bcher-kva.example": "xn--bcher-kva.example",
    "127.0.0.1": "127.0.0.1", "[::1]": "[::1]", "[0:0:0:0:0:0:0:1]": "[::1]",
    "10.0.0.1": "10.0.0.1",
}
ENTRIES = ["good.example", "*.corp.example", "xn--bcher-kva.example", "127.0.0.1", "[::1]",
           "evil.example"]
DEFAULT = {"http": 80, "https": 443, "ftp": 21}


@st.composite
def rules_and_urls(draw):
    rule = {"schemes": draw(st.lists(st.sampled_from(["http", "https", "ftp"]), min_size=1,
                                     max_size=3, unique=True))}
    if draw(st.booleans()):
        rule["hosts"] = draw(st.lists(st.sampled_from(ENTRIES), min_size=1, max_size=3,
                                      unique=True))
    if draw(st.booleans()):
        rule["ports"] = draw(st.lists(st.sampled_from([21, 80, 443, 8443]), min_size=1,
                                      max_size=3, unique=True))
    scheme = draw(st.sampled_from(["http", "https", "ftp", "HTTPS", "Http"]))
    userinfo = draw(st.sampled_from(["", "", "", "user@", "user:pw@", "good.example@", "@"]))
    host = draw(st.sampled_from(sorted(HOSTS)))
    port = draw(st.sampled_from([None, None, 21, 80, 443, 8443]))
    rest = draw(st.sampled_from(["", "/", "/a/b", "/?q=1", "/#f", "/@evil.example",
                                 "?x=@evil.example", "#@evil.example"]))
    url = f"{scheme}://{userinfo}{host}{'' if port is None else f':{port}'}{rest}"
    parts = {"scheme": scheme.lower(), "userinfo": bool(userinfo), "host": HOSTS[host],
             "port": port}
    return {"url": rule}, url, parts


def model_allows(rule: dict, parts: dict) -> bool:
    if parts["userinfo"] or parts["scheme"] not in rule["schemes"]:
        return False
    if "hosts" in rule:
        host = parts["host"]
        if not any(host == entry or (entry.startswith("*.") and host.endswith(entry[1:]))
                   for entry in rule["hosts"]):
            return False
    if "ports" in rule:
        port = parts["port"] if parts["port"] is not None else DEFAULT[parts["scheme"]]
        if port not in rule["ports"]:
            return False
    return True


@PROFILE
@given(rules_and_urls())
@example(({"url": {"schemes": ["https"], "hosts": ["good.example"]}},
          "https://good.example@evil.example/",
          {"scheme": "https", "userinfo": True, "host": "evil.example", "port": None}))
@example(({"url": {"schemes": ["https"], "hosts": ["*.corp.example"]}},
          "https://corp.example/",
          {"scheme": "https", "userinfo": False, "host": "corp.example", "port": None}))
def test_url_agrees_with_a_model_of_its_parts(case):
    rule, url, parts = case
    validate_constraints({"fetch": {"url": rule}})
    reason = check_value(rule, url)
    note(f"check_value: {reason!r}")
    assert (reason is None) == model_allows(rule["url"], parts)


def _urllib3_view(url: str) -> tuple[str, str, int | None]:
    parsed = parse_url(url)
    assert parsed.auth is None  # what we accept has no userinfo for urllib3 either
    host = parsed.host or ""
    if host.startswith("["):  # urllib3 keeps the address as written
        host = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
    return parsed.scheme, host.removesuffix("."), parsed.port


@PROFILE
@given(st.one_of(
    rules_and_urls().map(lambda case: case[1]),
    st.text(max_size=40).map(lambda tail: "https://" + tail),
    st.builds(lambda a, b: f"https://{a}{b}", st.sampled_from(sorted(HOSTS)),
              st.text(alphabet="@\\:/.#?%[]x ", max_size=8)),
))
@example("https://evil.example\\@good.example")
@example("https://good.example:443@evil.example")
def test_what_is_accepted_means_the_same_to_urllib3(url):
    """A URL the checker accepts names, for urllib3's RFC 3986 parser, the same scheme, host
    and port, and no userinfo."""
    rule = {"url": {"schemes": ["https", "http"], "hosts": [*sorted(set(HOSTS.values()))],
                    "ports": [80, 443, 8443, 21]}}
    if check_value(rule, url) is not None:
        return
    from gateway.constraint_values import parse_url as gateway_parse

    scheme, host, port = gateway_parse(url)
    their_scheme, their_host, their_port = _urllib3_view(url)
    assert (their_scheme, their_port) == (scheme, port)
    assert their_host == host


@PROFILE
@given(st.text(st.characters(exclude_categories=()), max_size=30),
       st.sampled_from(["", "https://", "https://good.example", "https://[", "http://a.b:"]))
@example("\ud800.example/", "https://")
@example("xn--ab\ud800", "https://")
def test_the_url_check_never_raises(tail, head):
    rule = {"url": {"schemes": ["https", "http"], "hosts": ["good.example"], "ports": [443]}}
    reason = check_value(rule, head + tail)
    assert reason is None or isinstance(reason, str)
