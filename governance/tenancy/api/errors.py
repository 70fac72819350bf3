"""API errors are JSON with a stable ``code`` and a human ``message``."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import exceptions, parsers
from rest_framework.serializers import as_serializer_error
from rest_framework.views import exception_handler as drf_exception_handler


def exception_handler(exc, context):
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(detail=as_serializer_error(exc))
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        errors = response.data
        if isinstance(errors, list):
            errors = {"non_field_errors": errors}
        response.data = {"code": "invalid", "message": _first_message(errors), "errors": errors}
    elif isinstance(exc, exceptions.APIException):
        detail = response.data.get("detail", "") if isinstance(response.data, dict) else ""
        code = getattr(getattr(exc, "detail", None), "code", None) or exc.default_code
        response.data = {"code": str(code), "message": str(detail)}
    else:  # Http404 / PermissionDenied converted by DRF
        detail = response.data.get("detail", "") if isinstance(response.data, dict) else ""
        code = {404: "not_found", 403: "permission_denied"}.get(response.status_code, "error")
        response.data = {"code": code, "message": str(detail)}
    return response


def _first_message(errors) -> str:
    """The first message, also when it sits in a list item or nested object (``{"0": [...]}``)."""
    while isinstance(errors, dict | list) and errors:
        errors = next(iter(errors.values())) if isinstance(errors, dict) else errors[0]
    return str(errors) if not isinstance(errors, dict | list) else ""


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, with a body nested deeper than Python's parser can go ("[[[[…") a
    parse_error (400) instead of an uncaught RecursionError (500)."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise exceptions.ParseError("JSON parse error - nested too deeply.") from exc
