"""OpenAPI description of Tollgate's bearer tokens and of its JSON errors (imported by the app
config)."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse, extend_schema_field
from rest_framework import serializers


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "governance.tenancy.authentication.BearerTokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "Personal (tgp_…) or service (tgs_…) API token of one tenant.",
        }


@extend_schema_field({
    "oneOf": [{"type": "array", "items": {"type": "string"}},
              {"type": "object", "additionalProperties": {}}],
})
class FieldErrors(serializers.JSONField):
    """A field's messages, or (a list or object field) its items' or keys' messages."""


class ErrorOut(serializers.Serializer):
    """Every API error (governance.tenancy.api.errors): a stable code and a message."""

    code = serializers.CharField(
        help_text="stable: invalid, parse_error, not_authenticated, authentication_failed, "
        "permission_denied, not_found, method_not_allowed …"
    )
    message = serializers.CharField(help_text="for a person: what was wrong")
    errors = serializers.DictField(
        child=FieldErrors(),
        required=False,
        help_text="only for code=invalid: messages per field; a field of an imported or nested "
        "document is named by its path (packages[0].transport.type); a list or object field "
        "of a body has its messages per item or key ({\"data_classes\": {\"0\": [\"…\"]}})",
    )


_ERROR_TEXT = {
    400: "Invalid input (code invalid or parse_error); `errors` names the fields.",
    401: "No, an unknown, a revoked or an expired token, and no session.",
    403: "The caller's role (or, for an agent, ownership) does not allow this; a service "
         "token never administers members, invitations, group mappings or tokens.",
    404: "No such tenant for this caller, or no such object in the tenant.",
    413: "The body is over DATA_UPLOAD_MAX_MEMORY_SIZE (code too_large); nothing is stored.",
    415: "The body is of a media type this endpoint does not take.",
}


def error_responses(*codes: int) -> dict[int, OpenApiResponse]:
    """``responses={200: X, **error_responses(400, 403)}``; 401 and 404 are always added."""
    return {
        code: OpenApiResponse(ErrorOut, description=_ERROR_TEXT[code])
        for code in sorted({401, 404, *codes})
    }


# The error responses most endpoints document: reads (401, 404) and writes (also 400, 403).
READ = error_responses()
WRITE = error_responses(400, 403)
NO_CONTENT = {204: OpenApiResponse(description="Done.")} | WRITE


class TenantAutoSchema(AutoSchema):
    """Every tenant-scoped operation documents the errors its base class can always answer
    (governance/tenancy/api/base.py), on top of what the view declares:

    401 and 404 (the caller and the tenant are resolved first); 403 when the action's
    capability is not held by every role; 400 when it takes a body or query parameters
    (an invalid filter, page or field); 413 when it takes a body (over the upload limit)."""

    def get_operation(self, path, path_regex, path_prefix, method, registry):
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        from governance.tenancy.api.base import TenantAPIMixin

        if operation is None or not isinstance(self.view, TenantAPIMixin):
            return operation
        codes = {401, 404}
        if self._capability_is_restricted():
            codes.add(403)
        if "requestBody" in operation or any(
                parameter.get("in") == "query" for parameter in operation.get("parameters", [])):
            codes.add(400)
        if "requestBody" in operation:
            codes.add(413)
        responses = operation.setdefault("responses", {})
        for code in sorted(codes):
            if str(code) not in responses:
                responses[str(code)] = self._get_response_for_code(
                    OpenApiResponse(ErrorOut, description=_ERROR_TEXT[code]), str(code))
        return operation

    def _capability_is_restricted(self) -> bool:
        from governance.tenancy.roles import IDENTITY_CAPABILITIES, ROLE_CAPABILITIES

        view = self.view
        key = getattr(view, "action", None) or self.method.lower()
        capability = view.capabilities.get(key, view.capabilities["*"])
        # A service token never holds an identity capability, whatever its role: 403 for it.
        return capability in IDENTITY_CAPABILITIES or not all(
            capability in caps for caps in ROLE_CAPABILITIES.values())
