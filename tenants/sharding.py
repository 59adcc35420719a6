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

from collections.abc import Callable
from typing import Any

from django.db.migrations.state import ProjectState

from tenants.rls import PostgresOnlyOperation

TENANT_COLUMN = "tenant_id"

# Tenant-owned tables that stay whole on every server: read across tenants, and not growing with runs.
DIRECTORY_MODELS = frozenset(
    {"tenants.Membership", "tenants.MembershipChange", "tenants.ApiKey", "runs.Badge"}
)


class TenantInPrimaryKey(PostgresOnlyOperation):
    """On PostgreSQL, the table's primary key becomes the model's key followed by `tenant_id`."""

    def __init__(self, model_label: str) -> None:
        self.model_label = model_label

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        return (self.__class__.__qualname__, [self.model_label], {})

    def describe(self) -> str:
        return f"tenant_id in the primary key of {self.model_label}"

    def _primary_key(
        self, quote: Callable[[str], str], state: ProjectState, *, with_tenant: bool
    ) -> list[str]:
        meta = state.apps.get_model(self.model_label)._meta
        columns = [field.column for field in meta.pk_fields] + ([TENANT_COLUMN] if with_tenant else [])
        # PostgreSQL's own name for a table's primary key, which Django leaves it to choose.
        constraint = quote(f"{meta.db_table}_pkey")
        return [
            f"ALTER TABLE {quote(meta.db_table)} DROP CONSTRAINT {constraint}, "
            f"ADD CONSTRAINT {constraint} PRIMARY KEY ({', '.join(map(quote, columns))})"
        ]

    def forwards_statements(self, quote: Callable[[str], str], state: ProjectState) -> list[str]:
        return self._primary_key(quote, state, with_tenant=True)

    def backwards_statements(self, quote: Callable[[str], str], state: ProjectState) -> list[str]:
        return self._primary_key(quote, state, with_tenant=False)


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

    def _constraint(self, state: ProjectState) -> tuple[str, str, str, str, str]:
        """The table, its column, the constraint's name, the target table and the target's key column."""
        field = state.apps.get_model(self.model_label)._meta.get_field(self.field)
        table, target = field.model._meta.db_table, field.related_model._meta
        return table, field.column, f"{table}_{field.column}_tenant_fk", target.db_table, target.pk.column

    def forwards_statements(self, quote: Callable[[str], str], state: ProjectState) -> list[str]:
        table, column, name, target, target_key = self._constraint(state)
        return [
            f"ALTER TABLE {quote(table)} ADD CONSTRAINT {quote(name)} "
            f"FOREIGN KEY ({quote(column)}, {TENANT_COLUMN}) "
            f"REFERENCES {quote(target)} ({quote(target_key)}, {TENANT_COLUMN}) DEFERRABLE INITIALLY DEFERRED"
        ]

    def backwards_statements(self, quote: Callable[[str], str], state: ProjectState) -> list[str]:
        table, _, name, _, _ = self._constraint(state)
        return [f"ALTER TABLE {quote(table)} DROP CONSTRAINT {quote(name)}"]
