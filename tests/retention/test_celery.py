"""The retention jobs on real Celery: the beat schedule names them, and real workers, started here on
the real Redis broker, run them against this test's database (as the service role on PostgreSQL,
so row-level security applies to them as in production).

The workers use their own Redis database and a queue of their own per test, so nothing else on
the machine's Redis can hand them work or take theirs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta

import pytest
from celery.schedules import crontab
from django.db import connection
from django.utils import timezone

from billing.models import Plan
from kahn_site.celery import BEAT_SCHEDULE
from kahn_site.celery import app as kahn_celery
from retention.models import RetentionRecord
from runs.models import Run
from tenants.context import tenant_scope
from tenants.models import LOCAL_TENANT_SLUG, Tenant
from tests.conftest import manage, manage_env
from tests.retention.conftest import rows_of, store_run
from tests.servers import TASK_TIMEOUT, CeleryWorkers
from tests.tenants.test_settings import CLOUD_ENV

REDIS_URL = os.environ.get("KAHN_TEST_CELERY_REDIS_URL", "redis://127.0.0.1:6379/11")


def test_the_beat_schedule_names_the_retention_tasks_daily():
    kahn_celery.loader.import_default_modules()
    retention = [entry for entry in BEAT_SCHEDULE.values() if entry["task"].startswith("retention.")]
    assert {entry["task"] for entry in retention} == {
        "retention.soft_delete_expired",
        "retention.hard_delete_expired",
    }
    assert kahn_celery.conf.beat_schedule == BEAT_SCHEDULE
    for entry in retention:
        assert entry["task"] in kahn_celery.tasks, f"{entry['task']} is scheduled but no worker knows it"
        schedule = entry["schedule"]
        # Once a day: one hour, one minute, every day.
        assert isinstance(schedule, crontab)
        assert len(schedule.hour) == 1 and len(schedule.minute) == 1
        assert schedule.day_of_week == set(range(7)) and schedule.day_of_month == set(range(1, 32))


def test_in_cloud_mode_the_broker_and_the_results_are_redis_at_redis_url():
    # Cloud mode refuses to start without REDIS_URL (tests/tenants/test_settings.py).
    env = {k: v for k, v in manage_env().items() if k != "DATABASE_URL"}
    env.update(CLOUD_ENV, REDIS_URL="redis://redis.internal:6379/3")
    shown = "from kahn_site.celery import app; print(app.conf.broker_url, app.conf.result_backend)"
    result = manage("shell", "--no-imports", "-c", shown, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["redis://redis.internal:6379/3", "redis://redis.internal:6379/3"]


# ---------------------------------------------------------------- real workers


@pytest.fixture
def workers(request, transactional_db) -> Iterator[CeleryWorkers]:
    env = manage_env(KAHN_MODE="oss", REDIS_URL=REDIS_URL)
    if connection.vendor == "postgresql":
        # As the service role, which owns nothing and is held to row-level security.
        role = request.getfixturevalue("service_role")
        db = connection.settings_dict
        host, port = db["HOST"] or "127.0.0.1", db["PORT"] or 5432
        env["DATABASE_URL"] = f"postgres://{role}@{host}:{port}/{db['NAME']}"
    pool = CeleryWorkers(env, REDIS_URL, queue="kahn-retention-test")
    try:
        yield pool
    finally:
        # Shown by pytest when the test fails.
        print(pool.stop())


@pytest.fixture
def expired_world(transactional_db) -> Tenant:
    """The local tenant on a plan with no grace, with three expired runs and one kept, as of now."""
    tenant, _ = Tenant.objects.get_or_create(slug=LOCAL_TENANT_SLUG, defaults={"name": "Local"})
    plan = Plan.objects.create(slug="no-grace", name="No grace", retention_days=90, hard_delete_after_days=0)
    Tenant.objects.filter(pk=tenant.pk).update(plan=plan)
    now = timezone.now()
    for number in range(3):
        store_run(tenant, f"expired_{number}", now - timedelta(days=100 + number))
    store_run(tenant, "kept", now - timedelta(days=1))
    return Tenant.objects.get(pk=tenant.pk)


def result_of(async_result) -> dict:
    try:
        return async_result.get(timeout=TASK_TIMEOUT)
    finally:
        async_result.forget()


def test_a_real_worker_on_the_redis_broker_runs_soft_then_hard_delete(workers, expired_world):
    workers.start(1)
    expired = {run.run_id: run.pk for run in Run.objects.unscoped().filter(run_id__startswith="expired_")}

    sent = workers.send("retention.soft_delete_expired")
    assert result_of(sent)["runs"] == 3
    with tenant_scope(expired_world):
        assert [run.run_id for run in Run.objects.all()] == ["kept"]
        records = RetentionRecord.objects.filter(action="soft_delete")
        assert {r.run_id for r in records} == set(expired)
        assert {r.actor for r in records} == {f"task retention.soft_delete_expired (id {sent.id})"}

    summary = result_of(workers.send("retention.hard_delete_expired"))
    assert (summary["runs"], summary["events"]) == (3, 27)
    for pk in expired.values():
        assert rows_of(pk) == {"runs_run": 0, "runs_event": 0, "runs_runnode": 0, "runs_diagnostic": 0}
    with tenant_scope(expired_world):
        assert RetentionRecord.objects.filter(action="hard_delete").count() == 3


def test_two_workers_at_once_leave_the_same_result_as_one(workers, expired_world):
    # Batches of one run and a few events, so that the two jobs take turns many times over.
    workers.env.update(KAHN_RETENTION_BATCH_RUNS="1", KAHN_RETENTION_BATCH_EVENTS="4")
    now = timezone.now()
    for number in range(3, 20):
        store_run(expired_world, f"expired_{number}", now - timedelta(days=100 + number))
    expired = {run.run_id: run.pk for run in Run.objects.unscoped().filter(run_id__startswith="expired_")}
    assert len(expired) == 20
    workers.start(2)

    soft = [result_of(r) for r in [workers.send("retention.soft_delete_expired") for _ in range(2)]]
    assert sum(s["runs"] for s in soft) == 20
    hard = [result_of(r) for r in [workers.send("retention.hard_delete_expired") for _ in range(2)]]
    assert sum(h["runs"] for h in hard) == 20 and sum(h["events"] for h in hard) == 20 * 9

    # The same end as one worker's: every expired run gone from the tables, each deleted and
    # recorded exactly once per step, and the kept run untouched.
    for pk in expired.values():
        assert rows_of(pk) == {"runs_run": 0, "runs_event": 0, "runs_runnode": 0, "runs_diagnostic": 0}
    with tenant_scope(expired_world):
        actions = sorted(RetentionRecord.objects.values_list("run_id", "action"))
        assert actions == sorted((run_id, a) for run_id in expired for a in ("hard_delete", "soft_delete"))
        assert [run.run_id for run in Run.objects.all()] == ["kept"]
