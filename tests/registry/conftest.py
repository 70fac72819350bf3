"""The registry tests' world: tenant A's decision registry (``decision_world``: server payroll
with read and pay approved, export quarantined by drift, wipe blocked and draft pending, all in
scope payroll; agent bot owned by dave and agent old, suspended, with a grant), built with the
factories. A module that needs another registry replaces it."""

from __future__ import annotations

import pytest

from tests.bundle_support import decision_world


@pytest.fixture
def world(tenant_a, dave):
    return decision_world(tenant_a, owner=dave)
