"""Tenancy REST API: members, invitations, IdP group mappings, API tokens, and who-am-I."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView
from rest_framework import mixins, status
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from governance.tenancy import invitations, selectors, services
from governance.tenancy.access import visible_tokens
from governance.tenancy.api import serializers as s
from governance.tenancy.api.base import TenantViewSet
from governance.tenancy.api.schema import NO_CONTENT, READ, WRITE, error_responses
from governance.tenancy.models import ApiToken, IdpGroupMapping, Invitation, Membership
from governance.tenancy.roles import Cap


class MeView(APIView):
    """Who the caller is, and where."""

    @extend_schema(responses={200: dict})
    def get(self, request: Request) -> Response:
        token = request.auth if isinstance(request.auth, ApiToken) else None
        if token is not None:
            return Response({
                "principal": request.user.get_username(),
                "token": {"name": token.name, "kind": token.kind, "prefix": token.prefix},
                "tenants": [{"slug": token.tenant.slug, "role": token.role}],
            })
        return Response({
            "principal": request.user.get_username(),
            "token": None,
            "tenants": [{"slug": m.tenant.slug, "role": m.role}
                        for m in selectors.user_memberships(request.user)],
        })


class SchemaView(SpectacularAPIView):
    """The OpenAPI document (YAML, or JSON with ?format=json); its errors are JSON like every
    other API error, whatever the client asked for."""

    def handle_exception(self, exc):
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = JSONRenderer.media_type
        return super().handle_exception(exc)


class MembershipViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantViewSet):
    """Members of the tenant."""

    model = Membership
    serializer_class = s.MembershipOut
    capabilities = {"*": Cap.MANAGE_MEMBERS}

    def get_queryset(self):
        return super().get_queryset().select_related("user").order_by("user__username")

    @extend_schema(request=s.MembershipRoleIn, responses={200: s.MembershipOut})
    def partial_update(self, request: Request, tenant_slug: str, pk: str) -> Response:
        membership = self.get_object()
        values = self.parse(s.MembershipRoleIn)
        membership = services.membership_change_role(
            tenant=self.tenancy.tenant, actor=self.tenancy.actor, membership=membership,
            role=values["role"],
        )
        return Response(s.MembershipOut(membership).data)

    @extend_schema(responses=NO_CONTENT)
    def destroy(self, request: Request, tenant_slug: str, pk: str) -> Response:
        services.membership_delete(
            tenant=self.tenancy.tenant, actor=self.tenancy.actor, membership=self.get_object()
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class InvitationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantViewSet):
    """Invitations into the tenant; each takes effect at the invitee's next sign-in."""

    model = Invitation
    serializer_class = s.InvitationOut
    capabilities = {"*": Cap.MANAGE_MEMBERS}

    def get_queryset(self):
        return selectors.invitation_list(self.tenancy.tenant)

    @extend_schema(parameters=[s.InvitationFilter],
                   responses={200: s.InvitationOut(many=True), **READ})
    def list(self, request: Request, tenant_slug: str) -> Response:
        values = self.filters(s.InvitationFilter)
        rows = selectors.invitation_list(self.tenancy.tenant, state=values.get("state", ""))
        return self.page(rows, s.InvitationOut)

    @extend_schema(request=s.InvitationIn, responses={201: s.InvitationOut})
    def create(self, request: Request, tenant_slug: str) -> Response:
        """Invite by e-mail address or by IdP issuer + subject. The answer is the invitation,
        whoever exists elsewhere; a member of this tenant with that address or subject is
        refused on the field."""
        values = self.parse(s.InvitationIn)
        invitation = invitations.invitation_create(
            **self.service_kwargs(), invited_by=self.tenancy.user, **values
        )
        return Response(s.InvitationOut(invitation).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=NO_CONTENT)
    def destroy(self, request: Request, tenant_slug: str, pk: str) -> Response:
        """Revoke (the record stays); an invitation already taken up is a 400."""
        invitations.invitation_revoke(**self.service_kwargs(), invitation=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class GroupMappingViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantViewSet):
    """IdP group → role mappings of the tenant."""

    model = IdpGroupMapping
    serializer_class = s.GroupMappingOut
    capabilities = {"*": Cap.MANAGE_GROUP_MAPPINGS}

    def get_queryset(self):
        return super().get_queryset().order_by("group")

    @extend_schema(request=s.GroupMappingIn, responses={201: s.GroupMappingOut})
    def create(self, request: Request, tenant_slug: str) -> Response:
        values = self.parse(s.GroupMappingIn)
        mapping = services.group_mapping_create(
            tenant=self.tenancy.tenant, actor=self.tenancy.actor, **values
        )
        return Response(s.GroupMappingOut(mapping).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.MembershipRoleIn, responses={200: s.GroupMappingOut})
    def partial_update(self, request: Request, tenant_slug: str, pk: str) -> Response:
        mapping = self.get_object()
        values = self.parse(s.MembershipRoleIn)
        mapping = services.group_mapping_update(
            tenant=self.tenancy.tenant, actor=self.tenancy.actor, mapping=mapping,
            role=values["role"],
        )
        return Response(s.GroupMappingOut(mapping).data)

    @extend_schema(responses=NO_CONTENT)
    def destroy(self, request: Request, tenant_slug: str, pk: str) -> Response:
        services.group_mapping_delete(
            tenant=self.tenancy.tenant, actor=self.tenancy.actor, mapping=self.get_object()
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class ApiTokenViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantViewSet):
    """API tokens: your own, or (with the capability) every token of the tenant."""

    model = ApiToken
    serializer_class = s.ApiTokenOut
    capabilities = {"*": Cap.PERSONAL_TOKENS}

    def get_queryset(self):
        return visible_tokens(self.tenancy)

    # 403: a member without the capability to issue service tokens (and any service token:
    # tokens are identity administration, see roles.IDENTITY_CAPABILITIES).
    @extend_schema(request=s.ApiTokenIn, responses={201: s.ApiTokenCreatedOut, **WRITE})
    def create(self, request: Request, tenant_slug: str) -> Response:
        values = self.parse(s.ApiTokenIn)
        if values["kind"] == ApiToken.Kind.SERVICE:
            self.tenancy.require(Cap.MANAGE_SERVICE_TOKENS)
        creator = self.tenancy.user
        token, plaintext = services.api_token_create(
            tenant=self.tenancy.tenant, actor=self.tenancy.actor, created_by=creator,
            kind=values["kind"], name=values["name"], role=values["role"],
            expires_at=values["expires_at"],
            owner=creator if values["kind"] == ApiToken.Kind.PERSONAL else None,
        )
        body = s.ApiTokenOut(token).data | {"token": plaintext}
        return Response(body, status=status.HTTP_201_CREATED, headers={"Cache-Control": "no-store"})

    @extend_schema(responses={204: NO_CONTENT[204], **error_responses(403)})
    def destroy(self, request: Request, tenant_slug: str, pk: str) -> Response:
        """Revoke (the record stays, with its revocation time)."""
        token = self.get_object()
        own = self.tenancy.user is not None and token.user_id == self.tenancy.user.pk
        if not own:
            self.tenancy.require(Cap.MANAGE_SERVICE_TOKENS)
        services.api_token_revoke(
            tenant=self.tenancy.tenant, actor=self.tenancy.actor, token=token,
            reason="revoked through the API",
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class TenantSettingsViewSet(TenantViewSet):
    """The tenant's settings: how often servers are re-synced, how long decision logs are
    kept, how long a held call waits for a decision. Every change is audited
    (``tenant.settings_changed``) and the escalation timeout reaches gateways in the next
    bundle."""

    capabilities = {"*": Cap.MANAGE_REGISTRY}

    @extend_schema(responses={200: s.TenantSettingsSerializer, **error_responses(403)})
    def show(self, request: Request, tenant_slug: str) -> Response:
        return Response(services.tenant_settings(self.tenancy.tenant))

    @extend_schema(request=s.TenantSettingsSerializer,
                   responses={200: s.TenantSettingsSerializer, **WRITE})
    def change(self, request: Request, tenant_slug: str) -> Response:
        changes = self.parse(s.TenantSettingsSerializer, partial=True)
        tenant = services.tenant_update_settings(**self.service_kwargs(), **changes)
        return Response(services.tenant_settings(tenant))
