"""Small helpers every server-rendered list page shares: pagination and htmx caching."""

from __future__ import annotations

import json
from typing import Any

from django.core.paginator import Page, Paginator
from django.http import HttpRequest, HttpResponse
from django.utils.cache import patch_vary_headers

PAGE_SIZE = 25


def page_of(request: HttpRequest, queryset, per_page: int = PAGE_SIZE) -> Page:
    """The page ``?page=`` asks for (the last one when it is too high, the first when bad)."""
    return Paginator(queryset, per_page).get_page(request.GET.get("page"))


def query_without_page(request: HttpRequest) -> str:
    """The current filters as a query string, for the pagination links to append to."""
    query = request.GET.copy()
    query.pop("page", None)
    return query.urlencode()


def vary_on_htmx(response: HttpResponse) -> HttpResponse:
    """Pages that answer htmx with a fragment: caches must keep the two apart."""
    patch_vary_headers(response, ["HX-Request"])
    return response


def error_text(exc) -> str:
    """A service's ValidationError as one line for a flash message."""
    return " ".join(exc.messages)


def attachment(content: bytes, content_type: str, filename: str) -> HttpResponse:
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "no-store"
    return response


def pretty_json(value: Any) -> str:
    """JSON for people to read (the ``pretty_json`` template filter): indented, keys sorted,
    non-ASCII kept. Plain text: the template escapes it. A value JSON cannot hold (it came from
    a JSONField, so this is rare) is shown through ``str`` rather than failing the page."""
    try:
        return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def pluralized(count: int, noun: str, plural: str | None = None) -> str:
    """``"1 tool"``, ``"2 tools"``: a count with its noun, for messages built in Python (templates
    use Django's ``pluralize``)."""
    return f"{count} {noun if count == 1 else (plural or noun + 's')}"
