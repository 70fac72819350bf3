"""OpenAPI description of Tollgate's bearer tokens and of its JSON errors (imported by the app
config)."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse
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


class ErrorOut(serializers.Serializer):
    """Every API error (governance.tenancy.api.errors): a stable code and a message."""

    code = serializers.CharField(
        help_text="stable: invalid, parse_error, not_authenticated, authentication_failed, "
        "permission_denied, not_found, method_not_allowed …"
    )
    message = serializers.CharField(help_text="for a person: what was wrong")
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="only for code=invalid: messages per field; a field of an imported or nested "
        "document is named by its path (packages[0].transport.type)",
    )


_ERROR_TEXT = {
    400: "Invalid input (code invalid or parse_error); `errors` names the fields.",
    401: "No, an unknown, a revoked or an expired token, and no session.",
    403: "The caller's role (or, for an agent, ownership) does not allow this.",
    404: "No such tenant for this caller, or no such object in the tenant.",
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
