"""Database-level tenant integrity: a row may only point at rows of its own tenant.

``EnforceSameTenant`` is a migration operation. On PostgreSQL it adds a composite foreign key
``(tenant_id, <fk>) → target(tenant_id, id)`` (with the UNIQUE it needs on the target); on
SQLite, which cannot add constraints to existing tables, it installs equivalent triggers. Either
way a cross-tenant reference fails in the database even if application code forgets to check.

SQLite caveat: when Django rebuilds a table (many AddField/AlterField operations do on SQLite),
triggers that *mention* that table make the rename fail, and triggers *on* it are dropped with
it. A migration that rebuilds a table therefore wraps the rebuild in ``SuspendSameTenant`` (for
triggers that reference it) and re-installs its own with ``EnforceSameTenant(…,
sqlite_only=True)``. Both are no-ops on PostgreSQL, whose constraints survive ALTER TABLE.
"""

from __future__ import annotations

from django.db import migrations


class EnforceSameTenant(migrations.operations.base.Operation):
    """``model.field`` must reference a ``target`` row with the same ``tenant_id``."""

    reduces_to_sql = True
    reversible = True

    def __init__(self, model: str, field: str, target: str, *, sqlite_only: bool = False) -> None:
        self.model = model
        self.field = field
        self.target = target
        self.sqlite_only = sqlite_only

    def deconstruct(self):
        kwargs = {"sqlite_only": True} if self.sqlite_only else {}
        return self.__class__.__name__, [self.model, self.field, self.target], kwargs

    def state_forwards(self, app_label, state) -> None:
        pass  # database-only

    def describe(self) -> str:
        return f"Enforce same tenant for {self.model}.{self.field} → {self.target}"

    def _tables(self, app_label, state):
        # ``model`` and ``target`` may name another app's model as "app_label.model".
        source_app, _, source_model = self.model.rpartition(".")
        source = state.apps.get_model(source_app or app_label, source_model)
        target_app, _, target_model = self.target.rpartition(".")
        target = state.apps.get_model(target_app or app_label, target_model)
        column = source._meta.get_field(self.field).column
        return source._meta.db_table, column, target._meta.db_table

    def _names(self, table: str, column: str, target: str) -> tuple[str, str]:
        return f"{target}_tenant_id_uniq", f"{table}_{column}_same_tenant"

    def database_forwards(self, app_label, schema_editor, from_state, to_state) -> None:
        table, column, target = self._tables(app_label, to_state)
        unique, name = self._names(table, column, target)
        vendor = schema_editor.connection.vendor
        if self.sqlite_only and vendor != "sqlite":
            return
        # Identifiers below come from model metadata, never from input (hence the S608 noqa).
        if vendor == "postgresql":
            schema_editor.execute(
                f'DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = '  # noqa: S608
                f"'{unique}') THEN ALTER TABLE \"{target}\" ADD CONSTRAINT \"{unique}\" "
                f'UNIQUE ("tenant_id", "id"); END IF; END $$;'
            )
            schema_editor.execute(
                f'ALTER TABLE "{table}" ADD CONSTRAINT "{name}" FOREIGN KEY '
                f'("tenant_id", "{column}") REFERENCES "{target}" ("tenant_id", "id") '
                "DEFERRABLE INITIALLY DEFERRED"
            )
        elif vendor == "sqlite":
            for event in ("INSERT", "UPDATE"):
                schema_editor.execute(
                    f'CREATE TRIGGER "{name}_{event.lower()}" BEFORE {event} ON "{table}" '  # noqa: S608
                    f'FOR EACH ROW WHEN NEW."{column}" IS NOT NULL AND '
                    f'(SELECT "tenant_id" FROM "{target}" WHERE "id" = NEW."{column}") '
                    f'IS NOT NEW."tenant_id" BEGIN SELECT RAISE(ABORT, '
                    f"'{name}: references a row of another tenant'); END"
                )
        else:  # pragma: no cover - only PostgreSQL and SQLite are supported
            raise NotImplementedError(vendor)

    def database_backwards(self, app_label, schema_editor, from_state, to_state) -> None:
        table, column, target = self._tables(app_label, from_state)
        unique, name = self._names(table, column, target)
        if self.sqlite_only and schema_editor.connection.vendor != "sqlite":
            return
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(f'ALTER TABLE "{table}" DROP CONSTRAINT IF EXISTS "{name}"')
        else:
            for event in ("insert", "update"):
                schema_editor.execute(f'DROP TRIGGER IF EXISTS "{name}_{event}"')


class SuspendSameTenant(EnforceSameTenant):
    """SQLite only: drop the triggers of an ``EnforceSameTenant`` while a table is rebuilt."""

    def __init__(self, model: str, field: str, target: str) -> None:
        super().__init__(model, field, target, sqlite_only=True)

    def deconstruct(self):
        return self.__class__.__name__, [self.model, self.field, self.target], {}

    def describe(self) -> str:
        return f"Suspend same-tenant triggers for {self.model}.{self.field} (SQLite)"

    def database_forwards(self, app_label, schema_editor, from_state, to_state) -> None:
        super().database_backwards(app_label, schema_editor, to_state, from_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state) -> None:
        super().database_forwards(app_label, schema_editor, to_state, from_state)
