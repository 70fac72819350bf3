"""What the audit trail records of an object: one declaration on the model, one way to render it.

A model lists the keys of its snapshot in ``audit_fields``; ``audit_snapshot()`` (from
``AuditSnapshotModel``, which every tenant-scoped model has) reads them and renders each value
with the rules below, so every service records the same object the same way::

    class Exporter(TenantScopedModel):
        audit_fields = ("name", "kind", AuditField("token", "token_encrypted", render=presence))

    audit_record(..., before=exporter.audit_snapshot(), after=...)

Rendering (``render``): ``None``, booleans, numbers and strings as they are; choices (enums) as
their value; a related object by name (a user by ``get_username()``, anything else by ``str()``,
as ``object_repr`` names objects); JSON lists and dicts element by element; datetimes, dates,
times, decimals and UUIDs exactly as ``DjangoJSONEncoder`` writes them — the encoder
``audit_record`` stores ``before``/``after`` with, so a snapshot is stored unchanged. The signing
keys' and the approval items' snapshots have always recorded their datetime at full precision
instead; they declare ``render=isoformat`` (one form for all would change what the trail records).

Secrets never enter a snapshot: a field holding one (an ``*_encrypted`` value, a token hash, key
material) may only be declared with ``render=presence``, which records "set" or "" — a model
that declares one otherwise fails at import.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import ImproperlyConfigured
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

# Fields whose value is a secret (or hashes/derives one): recorded only as present or not.
SECRET_MARKERS = ("_encrypted", "token_hash", "private_key", "password", "secret")

_ENCODER = DjangoJSONEncoder()


def presence(value: Any) -> str:
    """A secret as the trail records it: "set" when there is one, else ""."""
    return "set" if value else ""


def isoformat(value: datetime | None) -> str | None:
    """A datetime at full precision with its offset (``2026-01-02T03:04:05.123456+00:00``),
    for the snapshots that have always recorded it so (keys, approval deadlines)."""
    return value.isoformat() if value is not None else None


@dataclass(frozen=True)
class AuditField:
    """One key of a snapshot that is not simply the attribute of that name rendered by type:
    ``source`` names the attribute to read, ``render`` replaces the type rules for it."""

    key: str
    source: str = ""
    render: Callable[[Any], Any] | None = None

    @property
    def attribute(self) -> str:
        return self.source or self.key


def render(value: Any) -> Any:
    """A value as plain JSON types, by the rules in the module docstring."""
    if isinstance(value, enum.Enum):  # choices are str/int subclasses: record the plain value
        return render(value.value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, AbstractBaseUser):
        return value.get_username()
    if isinstance(value, models.Model):
        return str(value)
    if isinstance(value, dict):
        return {k: render(v) for k, v in value.items()}  # keys as to_json writes them
    if isinstance(value, list | tuple):
        return [render(v) for v in value]
    return _ENCODER.default(value)  # datetime, date, time, Decimal, UUID; TypeError otherwise


def _is_secret(name: str) -> bool:
    return any(marker in name for marker in SECRET_MARKERS)


def _compile(model: str, declared: Iterable[str | AuditField]) -> tuple[AuditField, ...]:
    fields = tuple(f if isinstance(f, AuditField) else AuditField(f) for f in declared)
    for field in fields:
        if field.render is not presence and (_is_secret(field.attribute)
                                             or _is_secret(field.key)):
            raise ImproperlyConfigured(
                f"{model}.audit_fields: {field.attribute!r} holds a secret; declare it as "
                f"AuditField({field.key!r}, {field.attribute!r}, render=presence).")
    keys = [f.key for f in fields]
    if len(set(keys)) != len(keys):
        raise ImproperlyConfigured(f"{model}.audit_fields names a key twice: {keys}")
    return fields


class AuditSnapshotModel(models.Model):
    """Abstract base: ``audit_snapshot()`` of the keys the model declares in ``audit_fields``
    (strings, or ``AuditField`` where the key, the attribute or the rendering differ)."""

    audit_fields: ClassVar[tuple[str | AuditField, ...]] = ()
    _audit_fields: ClassVar[tuple[AuditField, ...]] = ()

    class Meta:
        abstract = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._audit_fields = _compile(cls.__qualname__, cls.audit_fields)

    def audit_snapshot(self, keys: Iterable[str] | None = None) -> dict[str, Any]:
        """The object as the audit trail records it: every key of ``audit_fields`` in order, or
        only ``keys`` (in their order; each must be declared)."""
        fields = {f.key: f for f in self._audit_fields}
        if keys is None:
            chosen = list(fields.values())
        else:
            keys = list(keys)
            unknown = [k for k in keys if k not in fields]
            if unknown:
                raise KeyError(f"{type(self).__name__}.audit_fields has no {', '.join(unknown)}")
            chosen = [fields[k] for k in keys]
        snapshot = {}
        for field in chosen:
            value = getattr(self, field.attribute)
            snapshot[field.key] = field.render(value) if field.render else render(value)
        return snapshot
