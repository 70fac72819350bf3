"""SCIM tokens REST API (admins: MANAGE_MEMBERS; never a service token).

Thin: the object comes through scim.access (404 outside the tenant, 403 without the
capability), the change through one service (which audits it).
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from governance.tenancy.api.base import TenantViewSet
from governance.tenancy.api.schema import NO_CONTENT, READ, WRITE
from governance.tenancy.roles import Cap
from scim import selectors, services
from scim.access import access_scim_token
from scim.api import serializers as s
from scim.models import ScimToken


class ScimTokenViewSet(TenantViewSet):
    """The bearer tokens the tenant's IdP provisions users and groups with on
    ``/scim/v2/<tenant>/`` (hashed at rest; the plaintext is shown once)."""

    model = ScimToken
    capabilities = {"*": Cap.MANAGE_MEMBERS}

    @extend_schema(responses={200: s.ScimTokenOut(many=True), **READ})
    def list(self, request: Request, tenant_slug: str) -> Response:
        return self.page(selectors.scim_tokens(self.tenancy.tenant), s.ScimTokenOut)

    @extend_schema(responses={200: s.ScimTokenOut, **READ})
    def retrieve(self, request: Request, tenant_slug: str, pk: str) -> Response:
        return Response(s.ScimTokenOut(access_scim_token(self.tenancy, pk)).data)

    @extend_schema(request=s.ScimTokenIn, responses={201: s.ScimTokenCreatedOut, **WRITE})
    def create(self, request: Request, tenant_slug: str) -> Response:
        token, plaintext = services.scim_token_create(
            **self.service_kwargs(), created_by=self.tenancy.user, **self.parse(s.ScimTokenIn))
        body = s.ScimTokenOut(token).data | {
            "token": plaintext,
            "endpoint": request.build_absolute_uri(f"/scim/v2/{self.tenancy.tenant.slug}")}
        return Response(body, status=status.HTTP_201_CREATED,
                        headers={"Cache-Control": "no-store"})

    @extend_schema(description="Revoke (the record stays, with its revocation time); the IdP "
                   "gets 401 from its next call.", responses=NO_CONTENT)
    def destroy(self, request: Request, tenant_slug: str, pk: str) -> Response:
        services.scim_token_revoke(**self.service_kwargs(),
                                   token=access_scim_token(self.tenancy, pk))
        return Response(status=status.HTTP_204_NO_CONTENT)
