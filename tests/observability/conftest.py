"""The observability tests' world: tenant A seeded for every dashboard panel and metric family
(``seeded_world``: the decision registry, two bundle revisions, a gateway per freshness state,
access requests, escalations and decisions), built with the factories and the services once the
whole cast is a member."""

from __future__ import annotations

import pytest

from tests.observability_support import seeded_world


@pytest.fixture
def world(tenant_a, cast):
    return seeded_world(tenant_a, owner=cast["dave"], requester=cast["alice"])
