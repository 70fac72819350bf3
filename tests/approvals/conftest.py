"""The approvals tests' world: tenant A's payroll registry (``payroll_world``: server payroll,
tool pay approved and refund pending in scope payroll:write, agent bot owned by dave, granted
10 calls a minute), built with the factories once the whole cast is a member. A module whose
tests need other members absent, or more in the registry, extends or replaces it."""

from __future__ import annotations

import pytest

from tests.bundle_support import payroll_world


@pytest.fixture
def world(tenant_a, cast):
    return payroll_world(tenant_a, owner=cast["dave"])
