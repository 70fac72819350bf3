from __future__ import annotations

from rest_framework.pagination import PageNumberPagination

from governance.bounds import BIGINT_MAX


def bounded_parameters(parameters: list[dict], max_page_size: int) -> list[dict]:
    """The documented bounds of ``page`` and ``page_size`` (DRF already keeps to them: a page
    past the end is a 404, a larger page size is cut to the maximum)."""
    for parameter in parameters:
        if parameter["name"] == "page":
            parameter["schema"].update(minimum=1, maximum=BIGINT_MAX)
        elif parameter["name"] == "page_size":
            parameter["schema"].update(minimum=1, maximum=max_page_size)
    return parameters


class Pagination(PageNumberPagination):
    """``?page=N&page_size=M`` (at most 200 rows a page)."""

    page_size_query_param = "page_size"
    max_page_size = 200

    def get_schema_operation_parameters(self, view):
        return bounded_parameters(super().get_schema_operation_parameters(view),
                                  self.max_page_size)
