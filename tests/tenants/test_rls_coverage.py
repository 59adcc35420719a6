"""Every tenant-owned table has forced row-level security and the tenant policy, so a new table
cannot forget them: this enumerates the models, not a list someone must remember to extend."""

from __future__ import annotations

import pytest
from django.db import connection, transaction

from tenants.models import Tenant
from tenants.rls import TENANT_POLICY, tenant_policy_expression
from tests.tenants.conftest import POSTGRES_ONLY, tenant_owned_models

pytestmark = POSTGRES_ONLY


def expected_policy_text() -> str:
    """The tenant expression as PostgreSQL prints it back (pg_policies normalises the SQL)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE rls_probe (tenant_id bigint) ON COMMIT DROP")
        cursor.execute(f"CREATE POLICY probe ON rls_probe USING ({tenant_policy_expression()})")
        cursor.execute("SELECT qual FROM pg_policies WHERE tablename = 'rls_probe'")
        text = cursor.fetchone()[0]
        transaction.set_rollback(True)
    return text


def test_the_enumeration_finds_the_tenant_owned_tables():
    tables = {model._meta.db_table for model in tenant_owned_models()}
    assert {"runs_run", "runs_event", "runs_diagnostic", "runs_runnode", "tenants_membership"} <= tables
    # The audit of the staff path names tenants by value, so it outlives them: not tenant-owned.
    assert "tenants_staffaccess" not in tables


@pytest.mark.parametrize("model", tenant_owned_models(), ids=lambda model: model._meta.label)
def test_a_tenant_owned_table_has_forced_row_level_security_and_the_tenant_policy(db, model):
    table = model._meta.db_table
    column = next(
        f.column for f in model._meta.concrete_fields if f.many_to_one and f.related_model is Tenant
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = %s::regclass", [table]
        )
        assert cursor.fetchone() == (True, True), f"{table}: row-level security not enabled and forced"
        cursor.execute(
            "SELECT permissive, roles, cmd, qual, with_check FROM pg_policies"
            " WHERE schemaname = current_schema() AND tablename = %s AND policyname = %s",
            [table, TENANT_POLICY],
        )
        policy = cursor.fetchone()
    assert policy is not None, f"{table} has no {TENANT_POLICY} policy: add EnableTenantRowLevelSecurity"
    expected = expected_policy_text().replace("tenant_id", column)
    assert policy == ("PERMISSIVE", ["public"], "ALL", expected, expected)


# Policies besides the tenant's that a tenant-owned table may have: read-only pre-tenant lookups,
# each keyed on a setting of its own (tenants.context.pre_tenant_lookup).
LOOKUP_POLICIES = {
    ("tenants_membership", "membership_of_current_user"): "kahn.user_id",
    ("tenants_apikey", "api_key_by_hash"): "kahn.api_key_hash",
    ("tenants_apikey", "api_key_by_id"): "kahn.api_key_id",
    # A status badge, served to anyone with its URL: found by its token's hash.
    ("runs_badge", "badge_by_hash"): "kahn.badge_hash",
}


def test_any_other_policy_is_a_known_read_only_lookup(db):
    # Policies are OR-ed: one permissive policy too many would open a table however tight the
    # tenant policy is.
    tables = [model._meta.db_table for model in tenant_owned_models()]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename, policyname, cmd, qual FROM pg_policies"
            " WHERE schemaname = current_schema() AND tablename = ANY(%s) AND policyname <> %s",
            [tables, TENANT_POLICY],
        )
        others = cursor.fetchall()
    assert {(table, name) for table, name, _cmd, _qual in others} == set(LOOKUP_POLICIES)
    for table, name, cmd, qual in others:
        assert cmd == "SELECT", (table, name)
        assert f"current_setting('{LOOKUP_POLICIES[table, name]}'::text, true)" in qual, (table, name)
