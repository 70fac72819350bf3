"""The API schema says what an immediate rotation does: the old key is revoked (withdrawn from
the JWKS), not retired (still published), which is what the service does."""

from __future__ import annotations

import json

from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer

from bundles.models import SigningKey
from bundles.publish import bundle_publish
from tests.bundle_support import payroll_world

API = "/api/v1/t/alpha"


def test_the_schema_says_an_immediate_rotation_revokes_the_old_key(admin, tenant_a, dave):
    generated = SchemaGenerator().get_schema(request=None, public=True)
    document = json.loads(OpenApiJsonRenderer().render(generated, renderer_context={}))
    text = document["components"]["schemas"]["SigningKeyRotateIn"]["properties"]["immediate"][
        "description"]
    assert "current key is revoked" in text and "retired" not in text

    payroll_world(tenant_a, owner=dave)
    bundle_publish(tenant=tenant_a, trigger="test")
    old = SigningKey.objects.for_tenant(tenant_a).get(state=SigningKey.State.ACTIVE)
    assert admin.post(f"{API}/signing-keys/rotate/", {"immediate": True},
                      format="json").status_code == 201
    old.refresh_from_db()
    assert old.state == SigningKey.State.REVOKED
