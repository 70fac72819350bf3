"""Hypothesis profiles for the property tests (tests/contract/test_properties.py).

``tollgate`` (the default, what ``make test`` runs): a bounded number of examples per property.
``fuzz`` (``HYPOTHESIS_PROFILE=fuzz``, what ``make fuzz`` runs): many more examples.
Neither has a per-example deadline: tests never judge wall-clock time. ``PROFILE`` is applied
to each property as a decorator rather than loaded globally, so other Hypothesis users in the
same run (tests/contract/test_api_fuzz.py) keep their own settings.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# The bundle fixtures are function-scoped pytest fixtures that hand out immutable bytes built
# once per module, so sharing them between examples is safe.
_SHARED = {"deadline": None, "print_blob": True,
           "suppress_health_check": [HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow, HealthCheck.data_too_large]}

settings.register_profile("tollgate", max_examples=50, **_SHARED)
settings.register_profile("fuzz", max_examples=2000, **_SHARED)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "tollgate"))
