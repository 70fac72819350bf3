"""No test may depend on the date: a guard against fixed dates creeping back into the suite.

A fixed date that reaches a service, the database or anything that reads the real clock is a
time bomb: the suite goes red on the day it passes (the Cedar differential did, on 2026-12-07,
with "Choose an expiry in the future"). Such dates are derived from the real clock instead
(``timezone.now()`` rounded, ``tests.decision_support.HOUR``). A fixed date remains only where a
pure function takes the time as an argument; the files that do so are listed below, with what
takes it. A fixed date anywhere else fails this test: derive it from the real clock, or, if it
only feeds such a function, add the file here and say which. To check a file for real, run it
with the clock years ahead (docs/development.md, "Tests and the clock": `faketime`).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXED_DATE = re.compile(r"\b(?:datetime|date)\(\s*(?:19|20)\d\d\b|[\"'](?:19|20)\d\d-\d\d-\d\d")
FROZEN_CLOCK = re.compile(r"freezegun|freeze_time|time_machine|libfaketime")
# Files whose fixed dates only feed functions that take the time as an argument.
PURE = {
    "tests/bundles/test_bundle_verify.py":
        "verify_bundle(now=…) on bundles built in memory (the CLI tests build theirs from the real "
        "clock)",
    "tests/registry/test_bundle_data.py":
        "compile_data(at=…) and decide(at=…); nothing stored carries a fixed date",
    "tests/bundles/test_cedar_differential.py":
        "decide(at=…) and Cedar on generated documents (the registry test follows the real clock)",
    "tests/contract/test_properties.py": "decide(at=…) on generated documents",
    "tests/bundles/test_policy_export.py": "translate(at=…, expires_at=…) on compiled data",
    "tests/bundles/test_policy_export_cel.py":
        "translate(at=…) and the CEL rules evaluated at a given request.startTime, on documents "
        "built in memory",
    "tests/gateway/test_gateway_proxy.py": "the rate counters' reserve/usage(at)",
    "tests/gateway/test_gateway_delegation.py":
        "decide(at=…) and decide_feature(at=…) on documents built in memory (the escalation "
        "stub's expiry follows the real clock)",
    "tests/bundles/test_policy_export_delegation.py": "translate(at=…) on compiled data",
    "tests/governance/test_audit_snapshot.py":
        "audit_snapshot() and the renderers on unsaved model instances (what it stores follows "
        "the real clock)",
}
# A line naming an MCP protocol version ("2025-06-18") holds no date the code compares.
NOT_A_DATE = re.compile(r"protocol_?[vV]ersion")


def _sources() -> list[Path]:
    files = [*(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]
    return sorted(p for p in files if "node_modules" not in p.parts)


def _fixed_dates(path: Path) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if FIXED_DATE.search(line) and not NOT_A_DATE.search(line)]


def test_fixed_dates_only_feed_functions_that_take_the_time():
    this = Path(__file__).resolve()
    found = [hit for path in _sources() if path != this
             and str(path.relative_to(ROOT)) not in PURE for hit in _fixed_dates(path)]
    assert found == [], "a fixed date outside the pure-function tests:\n" + "\n".join(found)


def test_no_test_freezes_the_clock():
    """A frozen clock hides what the real one does to stored dates: derive them instead."""
    this = Path(__file__).resolve()
    found = [str(path.relative_to(ROOT)) for path in _sources()
             if path != this and FROZEN_CLOCK.search(path.read_text(encoding="utf-8"))]
    assert found == []


def test_the_listed_files_exist():
    assert [name for name in PURE if not (ROOT / name).is_file()] == []


def test_the_guard_sees_a_fixed_date(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('at = datetime(2026, 11, 25, tzinfo=UTC)\nday = "2027-01-01"\n'
                      'version = {"protocolVersion": "2025-06-18"}\nok = HOUR\n')
    hits = [FIXED_DATE.search(line) is not None and NOT_A_DATE.search(line) is None
            for line in sample.read_text().splitlines()]
    assert hits == [True, True, False, False]
