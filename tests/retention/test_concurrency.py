"""Retention on PostgreSQL as in production: the jobs run as the service role under row-level
security, one tenant at a time; a run another transaction holds is skipped, not waited for; and two
jobs at once act on every run exactly once, with the same records as one job would write."""

from __future__ import annotations

import threading
from datetime import timedelta

import psycopg
from django.db import connection, connections, transaction

from retention.models import RetentionAction, RetentionRecord
from retention.services import retention_hard_delete_expired, retention_soft_delete_expired, retention_sweep
from runs.models import Run
from tenants.context import TENANT_SETTING, tenant_scope
from tests.conftest import world_build
from tests.retention.conftest import T0, rows_of, store_run
from tests.tenants.conftest import POSTGRES_ONLY, connected_as

pytestmark = POSTGRES_ONLY

DAY = timedelta(days=1)
BOTH = (RetentionAction.HARD_DELETE, RetentionAction.SOFT_DELETE)


def rows_seen(table: str, tenant_id: int | None) -> int:
    """Rows of `table` the connection's role sees with `kahn.tenant_id` set to `tenant_id` (or
    unset), asked in SQL, past every code-level scope."""
    with transaction.atomic(), connection.cursor() as cursor:
        if tenant_id is not None:
            cursor.execute("SELECT set_config(%s, %s, true)", [TENANT_SETTING, str(tenant_id)])
        cursor.execute(f"SELECT count(*) FROM {table}")
        return cursor.fetchone()[0]


def test_the_jobs_run_as_the_service_role_and_records_are_row_level_secured(service_role, transactional_db):
    world = world_build()
    acme_old = store_run(world.acme, "acme_old", T0 - 100 * DAY)
    store_run(world.globex, "globex_old", T0 - 100 * DAY)
    store_run(world.globex, "globex_new", T0 - DAY)

    with connected_as(service_role):
        outcomes = retention_sweep(actions=BOTH, actor="job", now=T0)
        assert sorted(r.run_id for o in outcomes for r in o.records) == ["acme_old", "globex_old"]
        outcomes = retention_sweep(actions=BOTH, actor="job", now=T0 + 8 * DAY)
        assert sorted(r.run_id for o in outcomes for r in o.records) == ["acme_old", "globex_old"]
        # The second wall: each tenant sees its own records, and with no tenant set, none.
        assert rows_seen("retention_retentionrecord", world.acme.pk) == 2
        assert rows_seen("retention_retentionrecord", world.globex.pk) == 2
        assert rows_seen("retention_retentionrecord", None) == 0
        assert rows_seen("runs_run", world.globex.pk) == 1
    assert rows_of(acme_old.pk)["runs_event"] == 0


def test_a_run_another_transaction_holds_is_skipped_not_waited_for(transactional_db, local_tenant):
    held = store_run(local_tenant, "held", T0 - 100 * DAY)
    store_run(local_tenant, "free", T0 - 100 * DAY)
    db = connection.settings_dict
    other = psycopg.connect(
        host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"]
    )
    try:
        # Another worker's batch (or a producer's write) holding the run's row.
        other.execute("BEGIN")
        other.execute("SELECT id FROM runs_run WHERE id = %s FOR UPDATE", [held.pk])
        with transaction.atomic():
            with connection.cursor() as cursor:
                # Were the job to wait for the lock, it would fail here instead of hanging the suite.
                # Local to a transaction around the job, as any setting must be behind a pooler.
                cursor.execute("SET LOCAL lock_timeout = '5s'")
            outcome = retention_soft_delete_expired(tenant=local_tenant, actor="job", now=T0)
        assert [r.run_id for r in outcome.records] == ["free"]
        other.execute("ROLLBACK")
        outcome = retention_soft_delete_expired(tenant=local_tenant, actor="job", now=T0)
        assert [r.run_id for r in outcome.records] == ["held"]
    finally:
        other.close()


def test_two_jobs_at_once_act_on_every_run_exactly_once(service_role, transactional_db):
    world = world_build()
    expired = [store_run(world.acme, f"old_{n}", T0 - (100 + n) * DAY, steps=1 + n % 4) for n in range(24)]
    store_run(world.acme, "kept", T0 - DAY)
    held = {run.pk: rows_of(run.pk) for run in expired}

    def both(job, now, **batch) -> list:
        start = threading.Barrier(2)
        results: list = [None, None]

        def work(slot: int) -> None:
            try:
                start.wait()
                results[slot] = job(tenant=world.acme, actor=f"worker {slot}", now=now, **batch)
            except BaseException as exc:
                results[slot] = exc
            finally:
                connections.close_all()

        threads = [threading.Thread(target=work, args=(slot,)) for slot in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        for result in results:
            assert not isinstance(result, BaseException), result
        return results

    with connected_as(service_role):
        soft = both(retention_soft_delete_expired, T0, batch_runs=1)
        hard = both(retention_hard_delete_expired, T0 + 8 * DAY, batch_runs=2, batch_events=5)

    names = sorted(run.run_id for run in expired)
    assert sorted(r.run_id for outcome in soft for r in outcome.records) == names
    assert sorted(r.run_id for outcome in hard for r in outcome.records) == names
    for run in expired:
        assert rows_of(run.pk) == {"runs_run": 0, "runs_event": 0, "runs_runnode": 0, "runs_diagnostic": 0}
    with tenant_scope(world.acme):
        records = list(RetentionRecord.objects.filter(action="hard_delete"))
        assert {r.run_ref: r.events for r in records} == {pk: rows["runs_event"] for pk, rows in held.items()}
        assert RetentionRecord.objects.filter(action="soft_delete").count() == 24
        assert [run.run_id for run in Run.objects.all()] == ["kept"]
