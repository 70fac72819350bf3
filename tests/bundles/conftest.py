"""The bundle tests' world: tenant A's small registry (``small_registry``: server payroll with
tools read and pay approved in scope payroll:all, agent bot owned by dave with principal
https://idp.example / bot and a grant), built with the factories. A module that needs another
registry replaces it."""

from __future__ import annotations

import pytest

from tests.bundle_support import small_registry


@pytest.fixture
def world(tenant_a, dave):
    return small_registry(tenant_a, owner=dave)
