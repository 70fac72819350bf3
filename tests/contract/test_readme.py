"""The README and docs/ stay true where it can be checked mechanically."""

from __future__ import annotations

import re
from pathlib import Path

from governance.tenancy.roles import permission_matrix_markdown

REPO = next(p for p in Path(__file__).resolve().parents if (p / "manage.py").is_file())
README = (REPO / "README.md").read_text()
DOCS = sorted((REPO / "docs").glob("*.md"))
# Checked like docs/ (paths, links), but not linked from the README (docs/operations.md does).
DEPLOY_DOCS = sorted((REPO / "deploy").glob("*.md"))

# Backticked things that start like a repository path but name something else: an MCP method,
# files that exist only at run time, or inside a bundle or an evidence pack.
NOT_REPOSITORY_PATHS = {
    "notifications/tools/list_changed",  # an MCP notification, not the notifications app
    "notifications/initialized",  # likewise
}
# A path with one of these is a pattern or an example (`…/{id}/`, `<state-dir>/…`), not a file.
PLACEHOLDER = re.compile(r"[<>{}…*$?=\s]")
BACKTICKED = re.compile(r"`([^`\n]+)`")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _top_level_dirs() -> set[str]:
    return {p.name for p in REPO.iterdir()
            if p.is_dir() and p.name not in {".git", ".venv", "var", "node_modules"}}


def _tests_named(name: str) -> list[Path]:
    return list((REPO / "tests").rglob(name))


def _named_paths(text: str) -> list[str]:
    """Every backticked repository path in a markdown text: `dir/…` under a top-level directory
    of this repository, or a bare test module (`test_x.py`, `test_x.py::test_y`)."""
    tops = _top_level_dirs()
    named = []
    for token in BACKTICKED.findall(text):
        token = token.strip()
        if token in NOT_REPOSITORY_PATHS or PLACEHOLDER.search(token.split("::")[0]):
            continue
        first = token.split("/")[0]
        if "/" in token and first in tops:
            named.append(token)
        elif re.fullmatch(r"(test_\w+|\w+_support)\.py(::\w+)?", token):
            named.append(token)
    return named


def _missing(token: str) -> str | None:
    path, _, function = token.partition("::")
    if "/" in path:
        candidates = [REPO / path]
    else:
        candidates = _tests_named(path) or [REPO / path]
    found = [c for c in candidates if c.exists()]
    if not found:
        return f"{token}: no such file or directory"
    if function and not any(re.search(rf"^\s*(async )?def {function}\(", c.read_text(), re.M)
                            for c in found if c.is_file()):
        return f"{token}: no test {function} in {path}"
    return None


def _anchors(doc: Path) -> set[str]:
    """The anchors GitHub gives a markdown file's headings (lower case, punctuation dropped,
    spaces as hyphens)."""
    anchors, fenced = set(), False
    for line in doc.read_text().splitlines():
        fenced ^= line.startswith("```")
        if not fenced and (heading := re.match(r"#{1,6} (.+)", line)):
            anchors.add(re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-"))
    return anchors


def _layout_row_problems(text: str) -> list[str]:
    """A table row that starts with a directory (`registry/`) names files in it by their bare
    names (`services.py`): each must exist somewhere under that directory."""
    problems = []
    for line in text.splitlines():
        tokens = BACKTICKED.findall(line)
        if not line.startswith("| `") or not tokens or not tokens[0].endswith("/"):
            continue
        folder = REPO / tokens[0]
        if not folder.is_dir():
            continue  # a URL or a path checked (and reported) as a path
        for name in tokens[1:]:
            if re.fullmatch(r"\w+\.(py|yaml|sh|md|toml)", name) and not list(folder.rglob(name)):
                problems.append(f"{tokens[0]}{name}: no such file under {tokens[0]}")
    return problems


def test_readme_permission_matrix_matches_the_code():
    start = README.index("<!-- permission-matrix:start -->") + len(
        "<!-- permission-matrix:start -->")
    end = README.index("<!-- permission-matrix:end -->")
    assert README[start:end].strip() == permission_matrix_markdown()


def test_readme_gives_the_two_commands():
    assert "make run" in README and "make test" in README


def test_every_path_the_readme_and_the_docs_name_exists():
    problems = []
    for doc in [REPO / "README.md", *DOCS, *DEPLOY_DOCS]:
        text = doc.read_text()
        for token in _named_paths(text):
            if problem := _missing(token):
                problems.append(f"{doc.relative_to(REPO)}: {problem}")
        problems += [f"{doc.relative_to(REPO)}: {p}" for p in _layout_row_problems(text)]
        for link in MARKDOWN_LINK.findall(text):
            if re.match(r"[a-z]+:", link):
                continue  # a URL
            target, _, anchor = link.partition("#")
            target = (doc.parent / target).resolve() if target else doc
            if not target.exists():
                problems.append(f"{doc.relative_to(REPO)}: link {link}: no such file")
            elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
                problems.append(f"{doc.relative_to(REPO)}: link {link}: no such heading")
    assert problems == []


def test_the_path_check_sees_a_path_that_does_not_exist():
    text = ("`governance/tenancy/roles.py` `governance/no_such_module.py` `test_readme.py` "
            "`test_readme.py::test_readme_gives_the_two_commands` `test_readme.py::test_gone` "
            "`/opt/mcp/bin/acme-hr-server` `var/bundles` `…/{id}/` `mcp/data.json`")
    problems = [p for t in _named_paths(text) if (p := _missing(t))]
    assert problems == ["governance/no_such_module.py: no such file or directory",
                        "test_readme.py::test_gone: no test test_gone in test_readme.py"]


def test_the_layout_check_sees_a_file_that_is_not_in_its_folder():
    # The old README's Layout named registry/constraints.py; the constraints live in the gateway.
    text = ("| `registry/` | `sync.py`, `constraints.py` |\n"
            "| `gateway/` | `constraints.py` |\n| `/t/<tenant>/` | `views.py` |")
    assert _layout_row_problems(text) == [
        "registry/constraints.py: no such file under registry/"]


def test_readme_is_a_front_door():
    assert len(README.splitlines()) <= 300
    for doc in DOCS:
        assert f"docs/{doc.name}" in README, f"the README does not link docs/{doc.name}"


def test_every_setting_read_from_the_environment_is_in_the_configuration_table():
    settings_py = (REPO / "governance" / "settings.py").read_text()
    read = set(re.findall(r'\benv\w*\(\s*"([A-Z][A-Z0-9_]*)"', settings_py))
    table = (REPO / "docs" / "operations.md").read_text()
    documented = {name for row in table.splitlines() if row.startswith("| `")
                  for name in BACKTICKED.findall(row.split(" | ")[0])}
    assert read, "no env reader found in governance/settings.py"
    assert sorted(read - documented) == []


def test_every_url_the_docs_name_exists():
    """`/t/<tenant>/…`, `/api/v1/…` and `GET /api/v1/gateway/…` in the docs resolve (ids as a
    number or a UUID); partial paths (`…/download/`) and examples outside Tollgate are left out."""
    from django.urls import Resolver404, resolve

    unresolved = []
    for doc in [REPO / "README.md", *DOCS]:
        for token in BACKTICKED.findall(doc.read_text()):
            path = token.removeprefix("GET ").removeprefix("POST ").split("?")[0]
            if not re.match(r"/(t|api|login|logout|metrics|healthz|readyz)\b", path) or "…" in path:
                continue
            if path == "/api/v1/gateway/":
                continue  # the gateway API's prefix, named as such
            path = re.sub(r"<(tenant|slug)>", "acme", path)
            for number in ("1", "0b6f0a2e-3c1d-4d6e-9f7a-1b2c3d4e5f60"):
                try:
                    resolve(re.sub(r"<id>|\{id\}", number, path))
                    break
                except Resolver404:
                    continue
            else:
                unresolved.append(f"{doc.relative_to(REPO)}: {token}")
    assert unresolved == []
