"""Keys that let every table that grows with runs be distributed by tenant, as migration operations.

To spread tables over several PostgreSQL servers by tenant (Citus' `create_distributed_table(table,
'tenant_id')`, or partitioning by tenant), each table's primary key and unique constraints must
include `tenant_id`, and a foreign key between two such tables must include it on both sides: then
every row, and every row it must be checked against, lives with its tenant. The rows already carry
`tenant_id` (scoping and row-level security need it), so the keys take it in:

- **Primary keys**: Django's model keeps the row's own key (`id`, or an event's `(run_id, seq)`):
  the ORM finds a row by it, and its sequence keeps it unique. On PostgreSQL the table's primary key
  is that key followed by `tenant_id` (`TenantInPrimaryKey`); the row's own columns lead, so every
  lookup by id keeps using the key's index.
- **Unique constraints** name the tenant in the models themselves, on both databases.
- **Foreign keys between growing tables** have no constraint of Django's (`db_constraint=False`); on
  PostgreSQL a composite one, `(column, tenant_id)` to the other table's `(id, tenant_id)`, takes
  its place (`TenantForeignKey`). SQLite, which is never distributed, has none.

The tenant directory stays as it is: `DIRECTORY_MODELS` are small, found across tenants (an API key by
its hash, a membership by its user, a badge by its token) and would be reference tables, copied to
every server. `tests/tenants/test_shard_keys.py` reads the database's catalog and fails for any other
table with a tenant whose keys leave `tenant_id` out, so a new growing table cannot forget it.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import ProjectState

from tenants.rls import PostgresOnlyOperation

TENANT_COLUMN = "tenant_id"

# Tenant-owned tables that stay whole on every server: read across tenants, and not growing with runs.
DIRECTORY_MODELS = frozenset(
    {"tenants.Membership", "tenants.MembershipChange", "tenants.ApiKey", "runs.Badge"}
)


def _primary_key_constraint(schema_editor: BaseDatabaseSchemaEditor, table: str) -> str:
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'", [table]
        )
        return cursor.fetchone()[0]


class TenantInPrimaryKey(PostgresOnlyOperation):
    """On PostgreSQL, the table's primary key becomes the model's key followed by `tenant_id`."""

    def __init__(self, model_label: str) -> None:
        self.model_label = model_label

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        return (self.__class__.__qualname__, [self.model_label], {})

    def describe(self) -> str:
        return f"tenant_id in the primary key of {self.model_label}"

    def _replace_primary_key(
        self, schema_editor: BaseDatabaseSchemaEditor, state: ProjectState, *, with_tenant: bool
    ) -> None:
        if schema_editor.connection.vendor != "postgresql":
            return
        meta = state.apps.get_model(self.model_label)._meta
        columns = [field.column for field in meta.pk_fields] + ([TENANT_COLUMN] if with_tenant else [])
        quote = schema_editor.quote_name
        constraint = _primary_key_constraint(schema_editor, meta.db_table)
        self.run_on_postgresql(
            schema_editor,
            [
                f"ALTER TABLE {quote(meta.db_table)} DROP CONSTRAINT {quote(constraint)}, "
                f"ADD CONSTRAINT {quote(constraint)} PRIMARY KEY ({', '.join(map(quote, columns))})"
            ],
        )

    def database_forwards(
        self,
        app_label: str,
        schema_editor: BaseDatabaseSchemaEditor,
        from_state: ProjectState,
        to_state: ProjectState,
    ) -> None:
        self._replace_primary_key(schema_editor, to_state, with_tenant=True)

    def database_backwards(
        self,
        app_label: str,
        schema_editor: BaseDatabaseSchemaEditor,
        from_state: ProjectState,
        to_state: ProjectState,
    ) -> None:
        self._replace_primary_key(schema_editor, to_state, with_tenant=False)


class TenantForeignKey(PostgresOnlyOperation):
    """On PostgreSQL, a foreign key `(field's column, tenant_id)` to the target's `(id, tenant_id)`.

    The model's field says `db_constraint=False`; this is its constraint. Deferred to commit and
    without an action of its own, like the constraints Django makes (Django cascades deletes itself).
    """

    def __init__(self, model_label: str, field: str) -> None:
        self.model_label = model_label
        self.field = field

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        return (self.__class__.__qualname__, [self.model_label, self.field], {})

    def describe(self) -> str:
        return f"Foreign key with tenant_id from {self.model_label}.{self.field}"

    def _names(self, state: ProjectState) -> tuple[str, str, str, str]:
        field = state.apps.get_model(self.model_label)._meta.get_field(self.field)
        table = field.model._meta.db_table
        target = field.related_model._meta
        return table, field.column, target.db_table, target.pk.column

    def database_forwards(
        self,
        app_label: str,
        schema_editor: BaseDatabaseSchemaEditor,
        from_state: ProjectState,
        to_state: ProjectState,
    ) -> None:
        table, column, target, target_key = self._names(to_state)
        quote = schema_editor.quote_name
        self.run_on_postgresql(
            schema_editor,
            [
                f"ALTER TABLE {quote(table)} ADD CONSTRAINT {quote(f'{table}_{column}_tenant_fk')} "
                f"FOREIGN KEY ({quote(column)}, {TENANT_COLUMN}) "
                f"REFERENCES {quote(target)} ({quote(target_key)}, {TENANT_COLUMN}) "
                "DEFERRABLE INITIALLY DEFERRED"
            ],
        )

    def database_backwards(
        self,
        app_label: str,
        schema_editor: BaseDatabaseSchemaEditor,
        from_state: ProjectState,
        to_state: ProjectState,
    ) -> None:
        table, column, _, _ = self._names(from_state)
        quote = schema_editor.quote_name
        self.run_on_postgresql(
            schema_editor,
            [f"ALTER TABLE {quote(table)} DROP CONSTRAINT {quote(f'{table}_{column}_tenant_fk')}"],
        )
