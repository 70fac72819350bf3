"""The README stays true where it can be checked mechanically."""

from __future__ import annotations

from pathlib import Path

from governance.tenancy.roles import permission_matrix_markdown

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_permission_matrix_matches_the_code():
    start = README.index("<!-- permission-matrix:start -->") + len(
        "<!-- permission-matrix:start -->")
    end = README.index("<!-- permission-matrix:end -->")
    assert README[start:end].strip() == permission_matrix_markdown()


def test_readme_gives_the_two_commands():
    assert "make run" in README and "make test" in README
