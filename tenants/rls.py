"""PostgreSQL row-level security for tenant-owned tables, as migration operations.

Every table with a tenant foreign key gets, by migration, `ENABLE` and `FORCE ROW LEVEL SECURITY`
(FORCE: the table's owner is held to it too) and one policy, `tenant_isolation`, whose USING and
WITH CHECK are the same: a row is visible and writable only while the transaction's
`kahn.tenant_id` names its tenant. With the setting unset the comparison is NULL, so nothing is
visible and every insert is refused. `tests/tenants/test_rls_coverage.py` fails for a tenant-owned
table that lacks any of this, so a new table cannot forget it:

    from tenants.rls import EnableTenantRowLevelSecurity
    operations = [EnableTenantRowLevelSecurity("runs.Run")]

A lookup that must happen before the tenant is known gets a second, read-only policy on another
setting (`AddPreTenantLookupPolicy`), read through `tenants.context.pre_tenant_lookup`: RLS is never
turned off for it. Data migrations that touch rows of these tables must set `kahn.tenant_id` per
tenant, as the owner role is bound by FORCE too.

SQLite has no row-level security: there, these operations do nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import ProjectState

from tenants.context import TENANT_SETTING

TENANT_POLICY = "tenant_isolation"


def setting_expression(setting: str, cast: str) -> str:
    # NULLIF: an unset setting reads as '' in a session that once set it, which must mean "none".
    return f"NULLIF(current_setting('{setting}', true), '')::{cast}"


def tenant_policy_expression(column: str = "tenant_id") -> str:
    return f"{column} = {setting_expression(TENANT_SETTING, 'bigint')}"


def _table_and_column(state: ProjectState, model_label: str, field: str) -> tuple[str, str]:
    model = state.apps.get_model(model_label)
    return model._meta.db_table, model._meta.get_field(field).column


class PostgresOnlyOperation(migrations.operations.base.Operation):
    """A migration operation of statements for PostgreSQL alone; on SQLite it does nothing.

    A subclass says its statements, each way, from the model state in which its table exists.
    """

    reversible = True
    reduces_to_sql = True

    def state_forwards(self, app_label: str, state: ProjectState) -> None:
        # Policies and key changes are not part of Django's model state: nothing to record.
        pass

    def forwards_statements(self, quote: Callable[[str], str], state: ProjectState) -> list[str]:
        raise NotImplementedError

    def backwards_statements(self, quote: Callable[[str], str], state: ProjectState) -> list[str]:
        raise NotImplementedError

    def _execute(self, schema_editor: BaseDatabaseSchemaEditor, statements: Callable[[], list[str]]) -> None:
        if schema_editor.connection.vendor != "postgresql":
            return
        for statement in statements():
            schema_editor.execute(statement)

    def database_forwards(
        self,
        app_label: str,
        schema_editor: BaseDatabaseSchemaEditor,
        from_state: ProjectState,
        to_state: ProjectState,
    ) -> None:
        self._execute(schema_editor, lambda: self.forwards_statements(schema_editor.quote_name, to_state))

    def database_backwards(
        self,
        app_label: str,
        schema_editor: BaseDatabaseSchemaEditor,
        from_state: ProjectState,
        to_state: ProjectState,
    ) -> None:
        self._execute(schema_editor, lambda: self.backwards_statements(schema_editor.quote_name, from_state))


class EnableTenantRowLevelSecurity(PostgresOnlyOperation):
    """ENABLE + FORCE row-level security and the `tenant_isolation` policy on one model's table."""

    def __init__(self, model_label: str, tenant_field: str = "tenant") -> None:
        self.model_label = model_label
        self.tenant_field = tenant_field

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        return (self.__class__.__qualname__, [self.model_label], {"tenant_field": self.tenant_field})

    def describe(self) -> str:
        return f"Row-level security by tenant on {self.model_label}"

    def forwards_statements(self, quote: Callable[[str], str], state: ProjectState) -> list[str]:
        table, column = _table_and_column(state, self.model_label, self.tenant_field)
        expression = tenant_policy_expression(quote(column))
        return [
            f"ALTER TABLE {quote(table)} ENABLE ROW LEVEL SECURITY",
            f"ALTER TABLE {quote(table)} FORCE ROW LEVEL SECURITY",
            f"CREATE POLICY {TENANT_POLICY} ON {quote(table)} USING ({expression}) WITH CHECK ({expression})",
        ]

    def backwards_statements(self, quote: Callable[[str], str], state: ProjectState) -> list[str]:
        table, _ = _table_and_column(state, self.model_label, self.tenant_field)
        return [
            f"DROP POLICY {TENANT_POLICY} ON {quote(table)}",
            f"ALTER TABLE {quote(table)} NO FORCE ROW LEVEL SECURITY",
            f"ALTER TABLE {quote(table)} DISABLE ROW LEVEL SECURITY",
        ]


class AddPreTenantLookupPolicy(PostgresOnlyOperation):
    """A second, SELECT-only policy: rows whose `field` equals `setting` are readable (not writable).

    For lookups made before the tenant is known, through `tenants.context.pre_tenant_lookup`.
    """

    def __init__(self, model_label: str, name: str, field: str, setting: str, cast: str = "bigint") -> None:
        self.model_label = model_label
        self.name = name
        self.field = field
        self.setting = setting
        self.cast = cast

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        return (
            self.__class__.__qualname__,
            [self.model_label, self.name, self.field, self.setting],
            {"cast": self.cast},
        )

    def describe(self) -> str:
        return f"Read-only lookup policy {self.name} on {self.model_label}"

    def forwards_statements(self, quote: Callable[[str], str], state: ProjectState) -> list[str]:
        table, column = _table_and_column(state, self.model_label, self.field)
        expression = f"{quote(column)} = {setting_expression(self.setting, self.cast)}"
        return [f"CREATE POLICY {self.name} ON {quote(table)} FOR SELECT USING ({expression})"]

    def backwards_statements(self, quote: Callable[[str], str], state: ProjectState) -> list[str]:
        table, _ = _table_and_column(state, self.model_label, self.field)
        return [f"DROP POLICY {self.name} ON {quote(table)}"]
