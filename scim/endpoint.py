"""The SCIM 2.0 endpoint of each tenant: ``/scim/v2/<tenant>/…`` (RFC 7644).

Thin: authenticate the tenant's SCIM bearer token, then hand the request to scim2-server's
protocol core (routing, validation with scim2-models, PATCH and PUT, filters, paging, the
discovery endpoints, errors in SCIM's error schema) over ``TenantStorage``.

- No, unknown or revoked token → 401 (``WWW-Authenticate: Bearer``); too many unknown
  tokens from one address → 429, as for the admin API. Every endpoint needs the token, the
  ServiceProviderConfig too: the tenant's existence is not told to strangers.
- A valid token of another tenant → 404.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from django.db import IntegrityError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from scim2_models import (
    AuthenticationScheme,
    Bulk,
    ChangePassword,
    Context,
    EnterpriseUser,
    ETag,
    External,
    Filter,
    Group,
    NotFoundException,
    Patch,
    Reference,
    ResourceType,
    ResponseParameters,
    SCIMException,
    ScimPolicy,
    ScimProvider,
    ServiceProviderConfig,
    Sort,
    UnauthorizedException,
    UniquenessException,
    User,
)
from scim2_server.handler import ScimHandler
from scim2_server.requests import ScimRequest
from scim2_server.responses import ScimResponse
from scim2_server.service import ScimService

from governance.tenancy import token_guard
from scim import selectors, services
from scim.storage import TenantStorage


def service_provider_config(max_results: int) -> ServiceProviderConfig:
    """What Tollgate declares (RFC 7643 §5), and so what scim2-tester checks."""
    return ServiceProviderConfig(
        patch=Patch(supported=True),
        bulk=Bulk(supported=False, max_operations=0, max_payload_size=0),
        filter=Filter(supported=True, max_results=max_results),
        change_password=ChangePassword(supported=False),
        sort=Sort(supported=False),
        etag=ETag(supported=False),
        authentication_schemes=[AuthenticationScheme(
            type=AuthenticationScheme.Type.oauthbearertoken, name="SCIM bearer token",
            description="A per-tenant token an admin creates under Identity → SCIM.",
            spec_uri=Reference[External]("https://www.rfc-editor.org/rfc/rfc6750"),
            primary=True,
        )],
    )


# Two departures from RFC 7644 that Microsoft Entra ID makes and scim2-models names as such:
# a "remove" whose value lists the members to remove (path "members"), and a replace through a
# filter that matches no entry yet (emails[type eq "work"].value on a user with no work
# address), which creates it. Anything else stays strict (an unknown attribute is a 400).
IDP_TOLERANCES = ScimPolicy(
    remove_value_as_filter=ScimPolicy.RemoveValue.apply,
    unmatched_path_filter=ScimPolicy.UnmatchedPathFilter.create,
)


class TollgateScimService(ScimService):
    """scim2-server's protocol core, answering a PATCH with the resource (200) rather than 204:
    Okta's SCIM guide asks for the updated resource, and RFC 7644 §3.5.2 allows either."""

    def patch_response(self, base_url: str, resource: Any,
                       response_parameters: ResponseParameters[Any]) -> ScimResponse:
        return self.resource_response(self.publish(base_url, resource),
                                      Context.RESOURCE_PATCH_RESPONSE, response_parameters)


_services: dict[int, tuple[ScimService, dict[str, type]]] = {}


def scim_service() -> tuple[ScimService, dict[str, type]]:
    """The protocol core (built once per process and per SCIM_MAX_RESULTS) and the resource
    models by resource type name."""
    from django.conf import settings

    key = settings.SCIM_MAX_RESULTS
    if key not in _services:
        provider = ScimProvider(
            models=[User, EnterpriseUser, Group],
            resource_types=[ResourceType.from_resource(User[EnterpriseUser]),
                            ResourceType.from_resource(Group)],
            config=service_provider_config(key),
            policy=IDP_TOLERANCES,
        )
        service = TollgateScimService(provider)
        models = {rt.name: provider.model_for(rt) for rt in provider.resource_types}
        _services[key] = (service, models)
    return _services[key]


def _authenticate(request: HttpRequest, tenant_slug: str):
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise UnauthorizedException(detail="Send the tenant's SCIM token as a Bearer token.")
    token = selectors.scim_token_by_plaintext(credential)
    if token is None:
        wait = token_guard.record_failure(request)
        if wait:
            raise _TooMany(wait)
        raise UnauthorizedException(detail="Unknown SCIM token.")
    if not token.is_active:
        raise UnauthorizedException(detail="This SCIM token was revoked.")
    if token.tenant.slug != tenant_slug:
        raise NotFoundException(detail="No such tenant.")
    services.scim_token_seen(token=token)
    return token


class _TooMany(Exception):
    def __init__(self, wait: int) -> None:
        self.wait = wait


def _response(result: ScimResponse) -> HttpResponse:
    body = b"" if result.body is None else json.dumps(result.body).encode()
    response = HttpResponse(body, status=int(result.status))
    for name, value in result.headers.items():
        response[name] = value
    if result.body is None:
        del response["Content-Type"]
    response.setdefault("Cache-Control", "no-store")
    return response


@csrf_exempt
def scim_endpoint(request: HttpRequest, scim_tenant: str, scim_path: str | None = None
                  ) -> HttpResponse:
    service, models = scim_service()
    base_url = request.build_absolute_uri(f"/scim/v2/{scim_tenant}")
    scim_request = ScimRequest(
        method=request.method or "GET", base_url=base_url,
        path=(scim_path or "").removesuffix(".scim"),
        query={key: request.GET[key] for key in request.GET},
        headers=dict(request.headers), body=request.body,
    )
    try:
        token = _authenticate(request, scim_tenant)
        storage = TenantStorage(tenant=token.tenant, actor=services.token_actor(token),
                                models=models)
        try:
            result = ScimHandler(service, storage).handle(scim_request)
        except IntegrityError as exc:
            # Two requests raced for the same userName, externalId or group name.
            raise UniquenessException(detail="A resource with this value already exists.") \
                from exc
    except _TooMany as exc:
        response = HttpResponse(status=HTTPStatus.TOO_MANY_REQUESTS)
        response["Retry-After"] = str(exc.wait)
        return response
    except SCIMException as exc:
        result = service.error_response(exc)
    return _response(result)
