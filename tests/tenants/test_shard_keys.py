"""Every table that grows with runs can be distributed by tenant without a rewrite (tenants/sharding.py):
its primary key and every unique index include `tenant_id`, and so does each foreign key to another
such table, on both sides. Read from PostgreSQL's catalog, for every tenant-owned table outside the
tenant directory, so a new table is held to it without anyone extending a list."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, connection, transaction

from runs.models import Diagnostic, Run
from tenants.models import Tenant
from tenants.sharding import DIRECTORY_MODELS, TENANT_COLUMN
from tests.tenants.conftest import POSTGRES_ONLY, tenant_owned_models

pytestmark = POSTGRES_ONLY


def growing_tables() -> set[str]:
    return {
        model._meta.db_table for model in tenant_owned_models() if model._meta.label not in DIRECTORY_MODELS
    }


def shard_key_problems(table: str, growing: set[str]) -> list[str]:
    """What keeps `table` from being distributed by `tenant_id`; empty when nothing does."""
    problems = []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indexrelid::regclass::text, i.indisprimary,"
            " ARRAY(SELECT attname FROM pg_attribute"
            "       WHERE attrelid = i.indrelid AND attnum = ANY(i.indkey) ORDER BY attnum)"
            " FROM pg_index i WHERE i.indrelid = %s::regclass AND i.indisunique",
            [table],
        )
        keys = cursor.fetchall()
        cursor.execute(
            "SELECT c.conname, c.confrelid::regclass::text,"
            " ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(attnum, n)"
            "       JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum ORDER BY k.n),"
            " ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(attnum, n)"
            "       JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum ORDER BY k.n)"
            " FROM pg_constraint c WHERE c.conrelid = %s::regclass AND c.contype = 'f'",
            [table],
        )
        foreign_keys = cursor.fetchall()
    if not any(primary for _, primary, _ in keys):
        problems.append(f"{table} has no primary key")
    for index, primary, columns in keys:
        if TENANT_COLUMN not in columns:
            kind = "primary key" if primary else "unique index"
            problems.append(f"{table}: {kind} {index} ({', '.join(columns)}) leaves out {TENANT_COLUMN}")
    for name, target, columns, target_columns in foreign_keys:
        if target not in growing:
            continue  # to the directory (a reference table everywhere) or the tenants themselves
        if (TENANT_COLUMN, TENANT_COLUMN) not in zip(columns, target_columns, strict=True):
            problems.append(
                f"{table}: foreign key {name} ({', '.join(columns)}) to {target}"
                f" ({', '.join(target_columns)}) does not match {TENANT_COLUMN} to {TENANT_COLUMN}"
            )
    return problems


def test_the_growing_tables_are_the_ones_of_runs_retention_and_alerts():
    assert growing_tables() >= {
        "runs_run",
        "runs_event",
        "runs_diagnostic",
        "runs_runnode",
        "retention_retentionrecord",
        "alerts_notification",
        "alerts_deliveryattempt",
    }
    # Names in the directory that are no tenant-owned model would hide nothing: they are a mistake.
    assert {model._meta.label for model in tenant_owned_models()} >= DIRECTORY_MODELS


@pytest.mark.parametrize("table", sorted(growing_tables()))
def test_a_growing_table_has_keys_that_include_the_tenant(db, table):
    assert shard_key_problems(table, growing_tables()) == []


def test_the_check_names_each_key_that_leaves_the_tenant_out(db):
    # Tables made the way Django makes them by default: keyed by their own id alone.
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMPORARY TABLE shard_probe_parent (id bigint PRIMARY KEY, tenant_id bigint NOT NULL,"
            " name text UNIQUE, UNIQUE (id, tenant_id))"
        )
        cursor.execute(
            "CREATE TEMPORARY TABLE shard_probe_child (id bigint, tenant_id bigint NOT NULL,"
            " parent_id bigint REFERENCES shard_probe_parent (id),"
            " PRIMARY KEY (id, tenant_id),"
            " FOREIGN KEY (parent_id, tenant_id) REFERENCES shard_probe_parent (id, tenant_id))"
        )
    growing = {"shard_probe_parent", "shard_probe_child"}

    parent = shard_key_problems("shard_probe_parent", growing)
    assert len(parent) == 2
    assert "primary key shard_probe_parent_pkey (id) leaves out tenant_id" in parent[0] + parent[1]
    assert "unique index shard_probe_parent_name_key (name) leaves out tenant_id" in parent[0] + parent[1]
    child = shard_key_problems("shard_probe_child", growing)
    assert len(child) == 1
    assert "(parent_id) to shard_probe_parent (id) does not match tenant_id" in child[0]


def test_a_diagnostic_cannot_name_another_tenants_run(db):
    # The composite foreign key checks more than the run's id did: the run is the diagnostic's tenant's.
    acme = Tenant.objects.create(slug="acme-shard", name="Acme")
    globex = Tenant.objects.create(slug="globex-shard", name="Globex")
    run = Run.objects.unscoped().create(tenant=acme, run_id="nightly")
    with pytest.raises(IntegrityError, match="runs_diagnostic_run_id_tenant_fk"), transaction.atomic():
        Diagnostic.objects.unscoped().create(
            run=run, tenant=globex, code="late", severity="error", message="not acme's"
        )
        # Checked at commit, as Django's own constraints are: deferred.
        connection.check_constraints()
    Diagnostic.objects.unscoped().create(
        run=run, tenant=acme, code="late", severity="error", message="acme's"
    )
    assert Diagnostic.objects.unscoped().filter(run=run).count() == 1
