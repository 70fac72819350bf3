"""The real clock in tests: what a test may and may not assume about it.

No test may depend on the date or on how fast the machine is (docs/development.md, "Tests and
the clock"): dates that reach a service or the database are derived from the real clock, and the
few things that count per UTC minute (gateway rate windows) start their burst well inside one
minute.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


def away_from_a_minute_boundary(margin: float = 30.0) -> None:
    """Rate windows are UTC minutes: start a burst of calls early enough in one (half a minute
    for a handful of calls, however loaded the machine)."""
    now = datetime.now(UTC)
    into = now.second + now.microsecond / 1e6
    if into > 60 - margin:
        time.sleep(60 - into + 0.2)
