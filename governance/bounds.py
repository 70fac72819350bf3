"""Integer inputs, always bounded: a number out of range is a message on its field (the form
again, or a 400), never a database overflow or an ``OverflowError`` (a 500).

Every integer a form or an API serializer takes is one of these two fields; without explicit
bounds they take the range of an ``integer`` column, which is what most of them are stored in.
``tests/contract/test_bounds.py`` checks that no form or serializer declares a plain integer
field and that every integer of the admin API's document has a minimum and a maximum.
"""

from __future__ import annotations

from django import forms
from rest_framework import serializers

INT_MIN = -(2**31)  # an integer column (IntegerField, PositiveIntegerField) on PostgreSQL
INT_MAX = 2**31 - 1
BIGINT_MAX = 2**63 - 1  # a bigint column: ids, revision numbers, sequence numbers


class IntegerField(forms.IntegerField):
    """A form's integer; ``min_value``/``max_value`` default to an integer column's range."""

    def __init__(self, *, min_value: int = INT_MIN, max_value: int = INT_MAX, **kwargs) -> None:
        super().__init__(min_value=min_value, max_value=max_value, **kwargs)


class IntegerInput(serializers.IntegerField):
    """An API integer; ``min_value``/``max_value`` default to an integer column's range (and
    are documented as the schema's ``minimum``/``maximum``)."""

    def __init__(self, *, min_value: int = INT_MIN, max_value: int = INT_MAX, **kwargs) -> None:
        super().__init__(min_value=min_value, max_value=max_value, **kwargs)
