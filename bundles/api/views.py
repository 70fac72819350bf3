"""Gateways, gateway tokens, signing keys and bundles REST API (admins change, members read).

Every handler is thin: the object comes through a bundles.access helper (404 outside
the tenant, 403 without the right to change it), the input through an …In serializer, the
change through one service (which audits it), the answer through an …Out serializer.
"""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from bundles import selectors, services, store
from bundles.access import (
    access_bundle,
    access_gateway,
    access_gateway_token,
    access_signing_key,
    compare_pair,
)
from bundles.api import serializers as s
from bundles.diff import BundleReadError, diff_data
from bundles.keys import KeyUnavailable
from bundles.models import Bundle, Gateway, GatewayToken, SigningKey
from bundles.publish import bundle_publish, bundle_publish_failed
from bundles.selectors import NO_BUNDLE, NoBundleToExport, policy_export
from bundles.views import EXPORT_CAPABILITY
from governance.tenancy.api.base import TenantViewSet
from governance.tenancy.api.schema import READ, WRITE, ErrorOut, error_responses
from governance.tenancy.roles import Cap
from governance.web import attachment

CONFLICT = {409: OpenApiResponse(ErrorOut, description="No usable signing key (code "
                                 "key_unavailable): activate the pending key or rotate.")}


class NoBundleError(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "no_bundle"
    default_detail = NO_BUNDLE


FILE_ACTIONS = ("download", "export_agentgateway", "export_cedar")
NO_BUNDLE_CONFLICT = {409: OpenApiResponse(ErrorOut, description="No bundle to export yet "
                                           "(code no_bundle).")}
EXPORT_READ = {**error_responses(403), **NO_BUNDLE_CONFLICT}


class KeyUnavailableError(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "key_unavailable"
    default_detail = "No usable signing key."


# --- Gateways --------------------------------------------------------------------------------


class GatewayViewSet(TenantViewSet):
    """The gateway fleet: register, describe, disable or enable; with each gateway's last
    contact, running revision, lag and staleness."""

    model = Gateway
    capabilities = {
        "*": Cap.VIEW,
        "create": Cap.MANAGE_GATEWAYS,
        "partial_update": Cap.MANAGE_GATEWAYS,
        "disable": Cap.MANAGE_GATEWAYS,
        "enable": Cap.MANAGE_GATEWAYS,
    }

    def out(self, gateway: Gateway) -> dict:
        return s.GatewayDetailOut(selectors.fleet_row(self.tenancy.tenant, gateway)).data

    @extend_schema(responses={200: s.GatewayOut(many=True), **READ})
    def list(self, request: Request, tenant_slug: str) -> Response:
        return self.page(selectors.fleet(self.tenancy.tenant), s.GatewayOut)

    @extend_schema(responses={200: s.GatewayDetailOut, **READ})
    def retrieve(self, request: Request, tenant_slug: str, pk: str) -> Response:
        return Response(self.out(access_gateway(self.tenancy, pk)))

    @extend_schema(request=s.GatewayIn, description="Register a gateway; then issue it a "
                   "token (gateway-tokens).", responses={201: s.GatewayDetailOut, **WRITE})
    def create(self, request: Request, tenant_slug: str) -> Response:
        gateway = services.gateway_create(**self.service_kwargs(), created_by=self.tenancy.user,
                                          **self.parse(s.GatewayIn))
        return Response(self.out(gateway), status=status.HTTP_201_CREATED)

    @extend_schema(request=s.GatewayIn(partial=True),
                   responses={200: s.GatewayDetailOut, **WRITE})
    def partial_update(self, request: Request, tenant_slug: str, pk: str) -> Response:
        gateway = access_gateway(self.tenancy, pk, write=True)
        gateway = services.gateway_update(**self.service_kwargs(), gateway=gateway,
                                          **self.parse(s.GatewayIn, partial=True))
        return Response(self.out(gateway))

    def _set_status(self, pk: str, value: str) -> Response:
        gateway = access_gateway(self.tenancy, pk, write=True)
        gateway = services.gateway_set_status(**self.service_kwargs(), gateway=gateway,
                                              status=value)
        return Response(self.out(gateway))

    @extend_schema(request=None, description="Refuse every token of the gateway from its next "
                   "request (401); its tokens stay and work again once it is enabled.",
                   responses={200: s.GatewayDetailOut, **WRITE})
    @action(detail=True, methods=["post"])
    def disable(self, request: Request, tenant_slug: str, pk: str) -> Response:
        return self._set_status(pk, Gateway.Status.DISABLED)

    @extend_schema(request=None, description="Accept the gateway's unrevoked tokens again.",
                   responses={200: s.GatewayDetailOut, **WRITE})
    @action(detail=True, methods=["post"])
    def enable(self, request: Request, tenant_slug: str, pk: str) -> Response:
        return self._set_status(pk, Gateway.Status.ACTIVE)


# --- Gateway tokens --------------------------------------------------------------------------


class GatewayTokenViewSet(TenantViewSet):
    """Bearer tokens of gateways (256 random bits, stored as SHA-256): the plaintext is in the
    creating answer only."""

    model = GatewayToken
    capabilities = {"*": Cap.VIEW, "create": Cap.MANAGE_GATEWAYS,
                    "revoke": Cap.MANAGE_GATEWAYS}

    def rows(self):
        return GatewayToken.objects.for_tenant(self.tenancy.tenant).select_related(
            "gateway", "created_by").order_by("-created_at", "-pk")

    @extend_schema(parameters=[s.GatewayTokenFilter],
                   responses={200: s.GatewayTokenOut(many=True), **READ})
    def list(self, request: Request, tenant_slug: str) -> Response:
        values = self.filters(s.GatewayTokenFilter)
        rows = self.rows()
        if "gateway" in values:
            rows = rows.filter(gateway_id=values["gateway"])
        if "state" in values:
            rows = rows.filter(revoked_at__isnull=values["state"] == "active")
        return self.page(rows, s.GatewayTokenOut)

    @extend_schema(responses={200: s.GatewayTokenOut, **READ})
    def retrieve(self, request: Request, tenant_slug: str, pk: str) -> Response:
        token = access_gateway_token(self.tenancy, pk)
        return Response(s.GatewayTokenOut(self.rows().get(pk=token.pk)).data)

    @extend_schema(
        request=s.GatewayTokenIn,
        description="Issue a token for a gateway. `token` is the plaintext: store it now, it "
        "is never shown again.",
        responses={201: s.GatewayTokenIssuedOut, **WRITE},
    )
    def create(self, request: Request, tenant_slug: str) -> Response:
        values = self.parse(s.GatewayTokenIn)
        gateway = Gateway.objects.for_tenant(self.tenancy.tenant).filter(
            pk=values["gateway"]).first()
        if gateway is None:
            raise ValidationError(
                {"gateway": [f"No gateway with id {values['gateway']} in this tenant."]})
        token, plaintext = services.gateway_token_issue(
            **self.service_kwargs(), gateway=gateway, name=values["name"],
            created_by=self.tenancy.user,
        )
        body = s.GatewayTokenOut(self.rows().get(pk=token.pk)).data | {"token": plaintext}
        response = Response(body, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"
        return response

    @extend_schema(request=None, description="Revoke at once: the gateway gets 401 from its "
                   "next request. Revoking twice changes nothing.",
                   responses={200: s.GatewayTokenOut, **WRITE})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, tenant_slug: str, pk: str) -> Response:
        token = access_gateway_token(self.tenancy, pk, write=True)
        token = services.gateway_token_revoke(**self.service_kwargs(), token=token)
        return Response(s.GatewayTokenOut(self.rows().get(pk=token.pk)).data)


# --- Signing keys ----------------------------------------------------------------------------


class SigningKeyViewSet(TenantViewSet):
    """The ES256 keys that sign the tenant's bundles: rotate (scheduled or immediate), activate
    a pending key early, revoke a retired or pending one."""

    model = SigningKey
    capabilities = {"*": Cap.VIEW, "rotate": Cap.MANAGE_GATEWAYS,
                    "activate": Cap.MANAGE_GATEWAYS, "revoke": Cap.MANAGE_GATEWAYS}

    @extend_schema(responses={200: s.SigningKeyOut(many=True), **READ})
    def list(self, request: Request, tenant_slug: str) -> Response:
        return self.page(selectors.signing_keys(self.tenancy.tenant), s.SigningKeyOut)

    @extend_schema(responses={200: s.SigningKeyOut, **READ})
    def retrieve(self, request: Request, tenant_slug: str, pk: str) -> Response:
        return Response(s.SigningKeyOut(access_signing_key(self.tenancy, pk)).data)

    @extend_schema(
        request=s.SigningKeyRotateIn,
        description="Create the next key. Scheduled (the default) is refused while a rotation "
        "is under way.",
        responses={201: s.SigningKeyOut, **WRITE},
    )
    @action(detail=False, methods=["post"])
    def rotate(self, request: Request, tenant_slug: str) -> Response:
        values = self.parse(s.SigningKeyRotateIn)
        key = services.signing_key_rotate(**self.service_kwargs(), created_by=self.tenancy.user,
                                          **values)
        return Response(s.SigningKeyOut(key).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, description="A pending key signs from now on; the active one "
                   "is retired.", responses={200: s.SigningKeyOut, **WRITE})
    @action(detail=True, methods=["post"])
    def activate(self, request: Request, tenant_slug: str, pk: str) -> Response:
        key = access_signing_key(self.tenancy, pk, write=True)
        key = services.signing_key_activate(**self.service_kwargs(), key=key)
        return Response(s.SigningKeyOut(key).data)

    @extend_schema(request=None, description="Withdraw a retired key (gateways reject what it "
                   "signed) or cancel a pending one. The active key cannot be revoked.",
                   responses={200: s.SigningKeyOut, **WRITE})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, tenant_slug: str, pk: str) -> Response:
        key = access_signing_key(self.tenancy, pk, write=True)
        key = services.signing_key_revoke(**self.service_kwargs(), key=key)
        return Response(s.SigningKeyOut(key).data)


# --- Bundles ---------------------------------------------------------------------------------


class BundleViewSet(TenantViewSet):
    """Published revisions, newest first: download one, compare two, or publish now."""

    model = Bundle
    capabilities = {"*": Cap.VIEW, "publish": Cap.MANAGE_GATEWAYS,
                    "export_agentgateway": EXPORT_CAPABILITY, "export_cedar": EXPORT_CAPABILITY}

    def perform_content_negotiation(self, request: Request, force: bool = False):
        # A tarball (or an export) goes out whatever the Accept header asks for
        # (application/gzip, say); errors are JSON.
        return super().perform_content_negotiation(
            request, force=force or getattr(self, "action", None) in FILE_ACTIONS)

    def context(self) -> dict:
        state = selectors.publish_state(self.tenancy.tenant)
        return {"current_id": state.current_id if state else None}

    @extend_schema(responses={200: s.BundleOut(many=True), **READ})
    def list(self, request: Request, tenant_slug: str) -> Response:
        return self.page(selectors.bundles(self.tenancy.tenant), s.BundleOut, **self.context())

    @extend_schema(responses={200: s.BundleOut, **READ})
    def retrieve(self, request: Request, tenant_slug: str, pk: str) -> Response:
        bundle = access_bundle(self.tenancy, pk)
        return Response(s.BundleOut(bundle, context=self.context()).data)

    @extend_schema(
        description="The signed tarball as gateways receive it (OPA bundle layout).",
        responses={(200, "application/gzip"): OpenApiResponse(OpenApiTypes.BINARY,
                                                              description="the bundle"),
                   **READ},
    )
    @action(detail=True, methods=["get"])
    def download(self, request: Request, tenant_slug: str, pk: str) -> HttpResponse:
        bundle = access_bundle(self.tenancy, pk)
        content = store.load(bundle.blob_id) or b""
        response = HttpResponse(content, content_type="application/gzip")
        response["Content-Disposition"] = (
            f'attachment; filename="{tenant_slug}-r{bundle.revision_number}.tar.gz"')
        response["ETag"] = bundle.etag
        return response

    @extend_schema(
        parameters=[s.BundleDiffQuery],
        description="What changed in mcp/data.json between two revisions (by revision number), "
        "entry by entry: added, removed, and changed with each field before and after.",
        responses={200: s.BundleDiffOut, **error_responses(400)},
    )
    @action(detail=False, methods=["get"])
    def diff(self, request: Request, tenant_slug: str) -> Response:
        values = self.filters(s.BundleDiffQuery)
        from_bundle, to_bundle = compare_pair(self.tenancy, values.get("from"), values.get("to"))
        try:
            old = selectors.bundle_data(from_bundle) if from_bundle else {}
            changes = diff_data(old, selectors.bundle_data(to_bundle))
        except BundleReadError as exc:  # pragma: no cover - our own tarballs
            raise ValidationError({"to": [str(exc)]}) from None
        return Response({
            "from_revision": from_bundle.revision_number if from_bundle else None,
            "to_revision": to_bundle.revision_number,
            **changes.as_dict(),
        })

    @extend_schema(
        request=None,
        description="Build now. 201 with the new revision; 200 (published false) when nothing "
        "changed since the current one.",
        responses={201: s.BundlePublishOut, 200: s.BundlePublishOut, **WRITE, **CONFLICT},
    )
    @action(detail=False, methods=["post"])
    def publish(self, request: Request, tenant_slug: str) -> Response:
        tenant = self.tenancy.tenant
        try:
            bundle = bundle_publish(tenant=tenant, trigger="manual",
                                            actor=self.tenancy.actor)
        except KeyUnavailable as exc:
            bundle_publish_failed(tenant=tenant, error=str(exc))
            raise KeyUnavailableError(str(exc)) from None
        context = self.context()
        if bundle is None:
            current = selectors.publish_state(tenant).current
            return Response({
                "published": False, "bundle": s.BundleOut(current, context=context).data,
                "message": f"Nothing changed since r{current.revision_number}.",
            })
        return Response({
            "published": True, "bundle": s.BundleOut(bundle, context=context).data,
            "message": f"Published r{bundle.revision_number}.",
        }, status=status.HTTP_201_CREATED)

    def _export(self, kind: str, **options: str) -> HttpResponse:
        try:
            content, content_type, filename = policy_export(self.tenancy.tenant, kind,
                                                            **options)
        except NoBundleToExport as exc:
            raise NoBundleError(str(exc)) from None
        return attachment(content, content_type, filename)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "approvals", str, enum=["deny", "allow"], default="deny",
                description="Grants that require approval: deny (no rule: agentgateway cannot "
                "hold a call for a human) or allow (exported as plain allows, and said so)."),
            OpenApiParameter(
                "unpinned", str, enum=["deny", "allow"], default="deny",
                description="Pinned tool definitions, which agentgateway cannot check: deny (no "
                "tool gets a rule) or allow (rules without the check, and said so)."),
        ],
        description="The current bundle's policy as an agentgateway configuration (YAML): one "
        "route per active MCP server with mcpAuthorization CEL rules on jwt.iss, jwt.sub, "
        "mcp.tool.target, mcp.tool.name and, for time windows and grant expiry, "
        "request.startTime. It never allows more than Tollgate: what its CEL cannot check "
        "(argument constraints, rate limits and quotas, approvals, pinned definitions) gives no "
        "rule, and is listed in the file's header. Admins and auditors.",
        responses={(200, "application/yaml"): OpenApiResponse(OpenApiTypes.STR,
                                                               description="the configuration"),
                   **EXPORT_READ, **error_responses(400, 403)},
    )
    @action(detail=False, methods=["get"], url_path="export/agentgateway")
    def export_agentgateway(self, request: Request, tenant_slug: str) -> HttpResponse:
        options = {name: request.query_params.get(name, "deny")
                   for name in ("approvals", "unpinned")}
        bad = {name: ["Must be deny or allow."] for name, value in options.items()
               if value not in ("deny", "allow")}
        if bad:
            raise ValidationError(bad)
        return self._export("agentgateway", **options)

    @extend_schema(
        description="The current bundle's Cedar policy set and schema (mcp/policy.cedar and "
        "mcp/schema.cedarschema, byte for byte as in the bundle) in a zip. Admins and auditors.",
        responses={(200, "application/zip"): OpenApiResponse(OpenApiTypes.BINARY,
                                                              description="the zip"),
                   **EXPORT_READ},
    )
    @action(detail=False, methods=["get"], url_path="export/cedar")
    def export_cedar(self, request: Request, tenant_slug: str) -> HttpResponse:
        return self._export("cedar")
