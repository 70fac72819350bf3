"""SCIM fixtures: a SCIM token of tenant A and a client that speaks application/scim+json."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from governance.audit.services import Actor
from scim import services

SCIM_JSON = "application/scim+json"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"


class ScimClient:
    """Django's test client sending a SCIM bearer token and SCIM JSON to /scim/v2/<slug>."""

    def __init__(self, slug: str, token: str | None) -> None:
        self.base = f"/scim/v2/{slug}"
        headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
        self.client = Client(**headers)

    def _call(self, method: str, path: str, body=None, raw: str | None = None, **query):
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        kwargs = {"content_type": SCIM_JSON} if data is not None else {}
        if query:
            kwargs["QUERY_STRING"] = "&".join(f"{k}={v}" for k, v in query.items())
        response = getattr(self.client, method)(self.base + path, data=data, **kwargs)
        response.body = json.loads(response.content) if response.content else None
        return response

    def get(self, path: str, **query):
        return self._call("get", path, **query)

    def post(self, path: str, body=None, raw=None):
        return self._call("post", path, body, raw)

    def put(self, path: str, body=None, raw=None):
        return self._call("put", path, body, raw)

    def patch(self, path: str, body=None, raw=None):
        return self._call("patch", path, body, raw)

    def delete(self, path: str):
        return self._call("delete", path)


@pytest.fixture
def scim_token(tenant_a, alice):
    return services.scim_token_create(tenant=tenant_a, actor=Actor.user(alice), created_by=alice,
                                      name="Okta")


@pytest.fixture
def scim(tenant_a, scim_token):
    return ScimClient(tenant_a.slug, scim_token[1])


@pytest.fixture
def scim_for():
    return ScimClient


def user_body(user_name: str, external_id: str | None = None, **extra) -> dict:
    body = {"schemas": [USER_SCHEMA], "userName": user_name,
            "name": {"givenName": "Barbara", "familyName": "Jensen"},
            "emails": [{"value": user_name, "type": "work", "primary": True}], "active": True}
    if external_id is not None:
        body["externalId"] = external_id
    return body | extra


def group_body(name: str, *member_ids: str) -> dict:
    return {"schemas": [GROUP_SCHEMA], "displayName": name,
            "members": [{"value": m} for m in member_ids]}


def patch_body(*operations: dict) -> dict:
    return {"schemas": [PATCH_SCHEMA], "Operations": list(operations)}
