"""The ``within`` constraint keyword (gateway/constraint_values.py): a path argument must stay
inside one of the grant's roots after lexical resolution of ``.``, ``..`` and repeated ``/``.

Issue 19 §1: ``{"path": {"pattern": "^/srv/files/public/"}}`` let an agent read
``/srv/files/public/../secret/x``. The properties compare the checker with an independent model
built on ``posixpath.normpath`` and ``pathlib.PurePosixPath`` (not the gateway's code), and the
bypass strings of the issue are explicit examples.
"""

from __future__ import annotations

import json
import posixpath
import unicodedata
from datetime import UTC, datetime
from pathlib import PurePosixPath

import pytest
from hypothesis import example, given, note
from hypothesis import strategies as st

from bundles.packaging import bundle_json
from bundles.publish import bundle_publish
from gateway.constraints import (
    ConstraintError,
    check_value,
    matches,
    validate_constraints,
    violations,
)
from gateway.decision import ALLOW, DENY, decide
from registry import services
from registry.compiler import compile_data
from registry.models import Tool
from tests.bundle_support import IDP, SYSTEM, tar_files
from tests.factories import Def, def_sha
from tests.hypothesis_support import PROFILE

PUBLIC = {"within": ["/srv/files/public"]}
BYPASSES = [
    "/srv/files/public/../secret/x",
    "/srv/files/public//../secret/x",
    "/srv/files/public/./../secret/x",
    "/srv/files/public/sub/../../secret/x",
    "/srv/files/public/..",
    "/srv/files/public/../../../etc/passwd",
    "/srv/files/publicity/x",  # a sibling whose name starts with the root's
    "/srv/files/publicity",
    "/srv/files/pub",
    "/srv/files",
    "/",
    "srv/files/public/x",  # relative, with absolute roots
    "./srv/files/public/x",
    "../srv/files/public/x",
    "",
    "/srv/files/public/x\x00.txt",  # NUL
    "/srv/files/public/x\n",
    "/srv/files/public/\x1b[2Jx",
    "/srv/files/public\\..\\secret\\x",  # Windows separators
    "/srv/files/public/..\\secret",
    "~/.ssh/id_rsa",
    "~root/.ssh/id_rsa",
    "/~/x",
]
INSIDE = [
    "/srv/files/public",
    "/srv/files/public/",
    "/srv/files/public/x",
    "/srv/files/public//x",
    "/srv/files/public/./x",
    "/srv/files/public/sub/../x",
    "/srv/files/public/a/b/c.txt",
    "//srv//files//public//x",
    "/../srv/files/public/x",  # POSIX: ".." at the root stays at the root
    "/srv/files/secret/../public/x",
    "/srv/files/public/..x",  # a name beginning with two dots is a name
    "/srv/files/public/x~",
]


@pytest.mark.parametrize("path", BYPASSES)
def test_the_bypass_strings_are_refused(path):
    reason = check_value(PUBLIC, path)
    assert reason is not None and reason.startswith("must be a path within /srv/files/public")
    assert violations({"read_text_file": {"path": PUBLIC}}, "read_text_file", {"path": path})
    assert not matches({"read_text_file": {"path": PUBLIC}}, "read_text_file", {"path": path})


@pytest.mark.parametrize("path", INSIDE)
def test_paths_inside_the_root_pass(path):
    assert check_value(PUBLIC, path) is None


def test_a_regex_prefix_is_not_a_containment_check():
    """Why the keyword exists: the pattern the issue's admin wrote lets every bypass through."""
    regex_only = {"pattern": "^/srv/files/public/"}
    escaped = [p for p in BYPASSES[:6] if check_value(regex_only, p) is None]
    assert escaped == BYPASSES[:6]


@pytest.mark.parametrize(("value", "why"), [
    ("/srv/files/public/../secret/x", "it resolves outside every root"),
    ("srv/files/public/x", "it is relative"),
    ("/srv/files/public/a\x00", "it contains a control character"),
    ("/srv/files/public\\x", "it contains a backslash (refused: a separator on Windows servers)"),
    ("~/x", "it starts with '~' (refused: servers expand it to a home directory)"),
    (7, None),
])
def test_the_reason_says_why_without_echoing_the_argument(value, why):
    reason = check_value(PUBLIC, value)
    expected = "must be a path within /srv/files/public" + (f"; {why}" if why else "")
    assert reason == expected


def test_relative_roots_take_relative_paths_that_do_not_climb():
    rules = {"within": ["docs", "src/app"]}
    assert check_value(rules, "docs/a.md") is None
    assert check_value(rules, "./src/app/x/../y.py") is None
    assert check_value(rules, "src/app") is None
    assert check_value(rules, "src/apple") is not None
    assert check_value(rules, "docs/../../etc/passwd").endswith(
        "it climbs above its start with '..'")
    assert check_value(rules, "docs/../etc/passwd").endswith("it resolves outside every root")
    assert check_value(rules, "../docs/a.md").endswith("it climbs above its start with '..'")
    assert check_value(rules, "/docs/a.md").endswith("it is absolute")
    everything = {"within": ["."]}
    assert check_value(everything, "a/b/../c") is None
    assert check_value(everything, "a/../..") is not None


def test_several_roots_and_the_filesystem_root():
    assert check_value({"within": ["/srv/a", "/tmp/b"]}, "/tmp/b/../b/x") is None
    assert check_value({"within": ["/srv/a", "/tmp/b"]}, "/tmp/c") is not None
    assert check_value({"within": ["/"]}, "/etc/../x") is None
    assert check_value({"within": ["/"]}, "x") is not None


@pytest.mark.parametrize(("roots", "path", "message"), [
    ([], "argument_constraints.read.path.within",
     "must be a non-empty list of at most 100 paths"),
    ("/srv", "argument_constraints.read.path.within",
     "must be a non-empty list of at most 100 paths"),
    ([3], "argument_constraints.read.path.within[0]", "must be a path (a string)"),
    (["/srv/"], "argument_constraints.read.path.within[0]",
     "must be written normalised: '/srv' (no '.', '..', repeated or trailing '/')"),
    (["/srv//files"], "argument_constraints.read.path.within[0]",
     "must be written normalised: '/srv/files' (no '.', '..', repeated or trailing '/')"),
    (["/srv/./files"], "argument_constraints.read.path.within[0]",
     "must be written normalised: '/srv/files' (no '.', '..', repeated or trailing '/')"),
    (["/srv/x/../files"], "argument_constraints.read.path.within[0]",
     "must be written normalised: '/srv/files' (no '.', '..', repeated or trailing '/')"),
    (["./docs"], "argument_constraints.read.path.within[0]",
     "must be written normalised: 'docs' (no '.', '..', repeated or trailing '/')"),
    (["../docs"], "argument_constraints.read.path.within[0]", "must not climb with '..'"),
    ([""], "argument_constraints.read.path.within[0]", "is empty"),
    (["/srv\\files"], "argument_constraints.read.path.within[0]",
     "contains a backslash (refused: a separator on Windows servers)"),
    (["/srv/\tx"], "argument_constraints.read.path.within[0]", "contains a control character"),
    (["~/files"], "argument_constraints.read.path.within[0]",
     "starts with '~' (refused: servers expand it to a home directory)"),
    (["/srv", "docs"], "argument_constraints.read.path.within",
     "roots must be all absolute or all relative"),
    (["/srv", "/srv"], "argument_constraints.read.path.within", "lists a root twice"),
])
def test_bad_roots_are_refused_with_the_path_of_the_error(roots, path, message):
    with pytest.raises(ConstraintError) as caught:
        validate_constraints({"read": {"path": {"within": roots}}}, root="argument_constraints")
    assert (caught.value.path, caught.value.message) == (path, message)


# --- Properties against an independent model ---------------------------------------------------

ABSOLUTE_ROOTS = ["/srv/files/public", "/srv/files", "/srv/files/pub", "/", "/srv/files/public/sub",
                  "/tmp"]
RELATIVE_ROOTS = ["docs", "docs/public", ".", "src"]
COMPONENTS = st.sampled_from(["srv", "files", "public", "publicity", "pub", "secret", "sub", "x",
                              "docs", "src", "tmp", ".", "..", "", "...", "..x", "~", "~root",
                              "a\\..", "é", "\x00", "\t", "\u200b"]) | st.text(max_size=4)


@st.composite
def roots_and_paths(draw):
    absolute = draw(st.booleans())
    pool = ABSOLUTE_ROOTS if absolute else RELATIVE_ROOTS
    roots = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True))
    parts = draw(st.lists(COMPONENTS, max_size=8))
    if draw(st.booleans()):  # start from a root, the way an escape attempt does
        parts = [*draw(st.sampled_from(roots)).strip("/").split("/"), *parts]
    lead = draw(st.sampled_from(["", "/", "//", "///"]))
    return roots, lead + "/".join(parts)


def model_within(roots: list[str], value: object) -> bool:
    """Written from the keyword's definition with the standard library's path code."""
    if not isinstance(value, str) or not value:
        return False
    if any(unicodedata.category(c) == "Cc" for c in value) or "\\" in value:
        return False
    segments = [segment for segment in value.split("/") if segment]
    if segments and segments[0].startswith("~"):  # only a leading ~ is expanded by servers
        return False
    absolute = value.startswith("/")
    if absolute != roots[0].startswith("/"):
        return False
    norm = posixpath.normpath(value)
    if norm.startswith("//"):  # POSIX leaves the meaning of exactly two slashes open
        norm = "/" + norm.lstrip("/")
    if not absolute and (norm == ".." or norm.startswith("../")):
        return False
    path = PurePosixPath(norm)
    return any(path.is_relative_to(PurePosixPath(root)) for root in roots)


def string_inside(roots: list[str], value: str) -> bool:
    """A second, string-level view: the normalised text equals a root or extends it by '/'."""
    norm = "/" + posixpath.normpath(value).lstrip("/") if value.startswith("/") else \
        posixpath.normpath(value)
    return any(root in ("/", ".") or norm == root or norm.startswith(root + "/")
               for root in roots)


@PROFILE
@given(roots_and_paths())
@example((["/srv/files/public"], "/srv/files/public/../secret/x"))
@example((["/srv/files/public"], "/srv/files/public//../secret/x"))
@example((["/srv/files/public"], "/srv/files/public/./../secret/x"))
@example((["/srv/files/public"], "/srv/files/public/sub/../../secret/x"))
@example((["/srv/files/public"], "/srv/files/publicity"))
@example((["/srv/files/public"], "//srv/files/public/x"))
@example((["docs"], "docs/../../x"))
@example((["."], "~/x"))
def test_within_agrees_with_an_independent_canonicaliser(case):
    roots, value = case
    rules = {"within": roots}
    validate_constraints({"t": {"a": rules}})
    reason = check_value(rules, value)
    expected = model_within(roots, value)
    note(f"check_value: {reason!r}; model: {expected}")
    assert (reason is None) == expected
    if reason is None:
        assert string_inside(roots, value)
        assert "\x00" not in value and "\\" not in value


@PROFILE
@given(st.text(max_size=30))
def test_within_never_raises_and_refuses_what_leaves_the_root(value):
    reason = check_value(PUBLIC, value)
    assert reason is None or reason.startswith("must be a path within /srv/files/public")
    if reason is None:
        norm = posixpath.normpath("/" + value.lstrip("/"))
        assert value.startswith("/")
        assert norm == "/srv/files/public" or norm.startswith("/srv/files/public/")
        assert PurePosixPath(norm).is_relative_to("/srv/files/public")


@PROFILE
@given(st.lists(COMPONENTS, min_size=1, max_size=5).map("/".join), st.booleans())
def test_a_root_is_accepted_exactly_when_it_is_written_normalised(text, absolute):
    root = ("/" if absolute else "") + text
    try:
        validate_constraints({"t": {"a": {"within": [root]}}})
        accepted = True
    except ConstraintError:
        accepted = False
    clean = bool(root) and "\\" not in root and not any(
        unicodedata.category(c) == "Cc" for c in root) and not root.lstrip("/").startswith("~")
    normal = posixpath.normpath(root)
    climbs = normal == ".." or normal.startswith("../")
    assert accepted == (clean and normal == root and not climbs and not root.startswith("//"))


# --- Through a compiled bundle and the decision function --------------------------------------

READ_SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}},
               "required": ["path"], "additionalProperties": False}


def test_a_decision_over_a_compiled_bundle_refuses_a_dotdot_escape(tenant_a):
    server = services.server_create(tenant=tenant_a, actor=SYSTEM, name="files",
                                    transport="streamable-http", url="https://f.example/mcp")
    services.server_transition(tenant=tenant_a, actor=SYSTEM, server=server, status="active")
    read = Def("read_text_file", input_schema=READ_SCHEMA)
    services.tools_record_discovery(tenant=tenant_a, actor=SYSTEM, server=server,
                                    definitions=[(read, def_sha(read))])
    tool = Tool.objects.get(server=server)
    services.tool_approve(tenant=tenant_a, actor=SYSTEM, tool=tool)
    scope = services.scope_create(tenant=tenant_a, actor=SYSTEM, name="files:read", tools=[tool])
    bot = services.agent_create(tenant=tenant_a, actor=SYSTEM, name="bot", owner=None)
    services.agent_principal_add(tenant=tenant_a, actor=SYSTEM, agent=bot, issuer=IDP,
                                 subject="bot")
    grant = services.grant_create(
        tenant=tenant_a, actor=SYSTEM, agent=bot, scope=scope,
        argument_constraints={"read_text_file": {"path": {"within": ["/srv/files/public"]}}})
    data = json.loads(bundle_json(compile_data(tenant_a, at=datetime.now(UTC))))
    assert data["grants"][0]["argument_constraints"] == {
        "read_text_file": {"path": {"within": ["/srv/files/public"]}}}
    # within is a version-2 keyword: a gateway that reads only version 1 refuses the bundle
    # rather than skipping the check (tests/test_bundle_verify.py), and the manifest says so.
    assert data["schema_version"] == 2
    bundle = bundle_publish(tenant=tenant_a, trigger="test")
    manifest = json.loads(tar_files(bytes(bundle.blob.content))[".manifest"])
    assert manifest["metadata"]["schema_version"] == 2
    services.grant_revoke(tenant=tenant_a, actor=SYSTEM, grant=grant, reason="done")
    assert compile_data(tenant_a, at=datetime.now(UTC))["schema_version"] == 1

    def call(path: str):
        return decide(data, issuer=IDP, subject="bot", server="files", tool="read_text_file",
                      arguments={"path": path}, at=datetime.now(UTC))

    assert call("/srv/files/public/readme.txt").outcome == ALLOW
    for path in BYPASSES[:4]:
        decision = call(path)
        assert decision.outcome == DENY
        assert decision.reason == (f"grant {grant.pk}: argument path: must be a path within "
                                   "/srv/files/public; it resolves outside every root")


def test_a_keyword_this_gateway_does_not_know_fails_closed():
    """A bundle from a newer control plane may carry a keyword this code lacks: the constraint
    is violated and an approval condition holds, never silently skipped."""
    doc = {"read_text_file": {"path": {"within_real": ["/srv"], "maxLength": 100}}}
    assert violations(doc, "read_text_file", {"path": "/srv/x"}) == [
        "path: could not be checked (this gateway does not implement the check "
        "'within_real')"]
    assert matches(doc, "read_text_file", {"path": "/srv/x"})
