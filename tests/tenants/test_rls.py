"""Row-level security, exercised as the service role on real PostgreSQL (SPEC section 8).

The code-level scoping is bypassed on purpose here (`unscoped()`, raw SQL): these tests show the
second wall holding by itself.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.apps import apps
from django.db import DatabaseError, connection, connections, transaction

from runs.models import Diagnostic, Event, Run, RunNode
from runs.services import RunBatch
from runs.sql import EVENT_COLUMNS, ROWS_IN_ONE_INSERT, RowSink
from tenants.context import (
    TENANT_SETTING,
    USER_SETTING,
    NoTenantError,
    pre_tenant_lookup,
    request_transaction,
    tenant_atomic,
)
from tenants.models import Membership, Tenant
from tenants.selectors import membership_list_for_user
from tests.tenants.conftest import CLOUD_SETTINGS, POSTGRES_ONLY

pytestmark = POSTGRES_ONLY

TENANT_OWNED = [Run, Event, Diagnostic, RunNode, Membership]


def count_rows(model, **where) -> int:
    """Rows of `model` that the database shows this connection, bypassing the code-level scoping."""
    return model.objects.unscoped().filter(**where).count()


def raw_count(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {connection.ops.quote_name(table)}")
        return cursor.fetchone()[0]


def current_setting(name: str) -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting(%s, true)", [name])
        return cursor.fetchone()[0]


def test_the_world_is_there_for_the_migrating_role(world_runs):
    # The premise of every test below: the rows exist; only the service role cannot see them.
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        assert cursor.fetchone()[0] is True
    for model in TENANT_OWNED:
        assert count_rows(model) > 0, model


def test_with_no_tenant_set_every_tenant_table_reads_empty(world_runs, as_service):
    assert Tenant.objects.filter(slug__in=["acme", "globex"]).count() == 2  # not tenant-owned: visible
    for model in TENANT_OWNED:
        assert count_rows(model) == 0, model
        assert raw_count(model._meta.db_table) == 0, model


def test_with_no_tenant_set_an_insert_fails(world_runs, as_service):
    with pytest.raises(DatabaseError, match="row-level security"), transaction.atomic():
        Run.objects.unscoped().create(tenant=world_runs.acme, run_id="sneaked_in")
    with pytest.raises(DatabaseError, match="row-level security"), transaction.atomic():
        Membership.objects.unscoped().create(tenant=world_runs.acme, user=world_runs.bob)


def test_as_tenant_a_the_rows_of_b_are_invisible(world_runs, as_service):
    acme, globex = world_runs.acme, world_runs.globex
    with tenant_atomic(acme):
        for model in TENANT_OWNED:
            assert count_rows(model, tenant=globex) == 0, model
            assert count_rows(model) == count_rows(model, tenant=acme) > 0, model
        assert list(Run.objects.unscoped().values_list("run_id", flat=True)) == ["acme_nightly"]


def test_as_tenant_a_an_update_of_b_changes_no_rows(world_runs, as_service):
    acme, globex = world_runs.acme, world_runs.globex
    with tenant_atomic(acme):
        assert Run.objects.unscoped().filter(tenant=globex).update(exit_code=99) == 0
        assert Event.objects.unscoped().filter(tenant=globex).delete()[0] == 0
        with connection.cursor() as cursor:
            cursor.execute("UPDATE runs_run SET exit_code = 99 WHERE tenant_id = %s", [globex.pk])
            assert cursor.rowcount == 0
    with tenant_atomic(globex):
        assert Run.objects.get(run_id="globex_nightly").exit_code == 1
        assert Event.objects.count() == 6


def test_as_tenant_a_an_insert_with_the_id_of_b_is_refused(world_runs, as_service):
    acme, globex = world_runs.acme, world_runs.globex
    with pytest.raises(DatabaseError, match="row-level security"), tenant_atomic(acme):
        Run.objects.unscoped().create(tenant=globex, run_id="planted")
    # Nor can a row of A be moved into B: WITH CHECK applies to the new row of an UPDATE.
    with pytest.raises(DatabaseError, match="row-level security"), tenant_atomic(acme):
        Run.objects.filter(run_id="acme_nightly").update(tenant=globex)
    with tenant_atomic(globex):
        assert list(Run.objects.values_list("run_id", flat=True)) == ["globex_nightly"]


def test_the_write_path_works_for_the_service_role(world, as_service):
    from tests.conftest import run_record

    run_record(world.acme, "written_by_the_service")
    with tenant_atomic(world.acme):
        run = Run.objects.get(run_id="written_by_the_service")
        assert (
            run.complete,
            Event.objects.filter(run=run).count(),
            RunNode.objects.filter(run=run).count(),
        ) == (
            True,
            6,
            1,
        )
    with tenant_atomic(world.globex):
        assert not Run.objects.exists()


# The write path's two forms: one INSERT for a request's rows, a COPY through a temporary table past it.
BATCH_SIZES = pytest.mark.parametrize("size", [3, ROWS_IN_ONE_INSERT + 50], ids=["one-insert", "copy"])


@BATCH_SIZES
def test_the_write_path_stores_a_batch_of_either_size_for_the_service_role(world, as_service, size):
    notes = [{"ts": "2026-11-20T10:00:00.000Z", "event": "note", "n": n} for n in range(size)]
    with tenant_atomic(world.acme):
        batch = RunBatch(tenant=world.acme)
        change = batch.open(["bulk"])["bulk"]
        start = {"ts": "2026-11-20T10:00:00.000Z", "event": "run_start", "run_id": "bulk"}
        change.append(start, json.dumps(start))
        change.extend((note, json.dumps(note)) for note in notes)
        batch.flush()
    with tenant_atomic(world.acme):
        stored = Event.objects.filter(run__run_id="bulk", seq__gte=1).order_by("seq")
        assert [event.payload for event in stored] == notes
    with tenant_atomic(world.globex):
        assert count_rows(Event) == 0


@BATCH_SIZES
def test_the_write_path_cannot_plant_rows_in_another_tenant(world_runs, as_service, size):
    acme, globex = world_runs.acme, world_runs.globex
    with tenant_atomic(globex):
        globex_run = Run.objects.get(run_id="globex_nightly").pk
    with pytest.raises(DatabaseError, match="row-level security"), tenant_atomic(acme):
        sink = RowSink(Event, EVENT_COLUMNS)
        write = sink.writer()
        for seq in range(100, 100 + size):
            write((globex_run, seq, globex.pk, "2026-11-20T10:00:00.000Z", "note", None, "{}"))
        sink.close()
    with tenant_atomic(globex):
        assert count_rows(Event, run_id=globex_run) == 6


def test_the_setting_never_outlives_its_transaction_on_a_persistent_connection(world_runs, as_service):
    with tenant_atomic(world_runs.acme):
        assert current_setting(TENANT_SETTING) == str(world_runs.acme.pk)
    # Same connection, next transaction: the tenant is gone (set_config(..., true) is local).
    assert current_setting(TENANT_SETTING) in (None, "")
    assert count_rows(Run) == 0


def test_nested_tenant_blocks_give_the_outer_tenant_back(world_runs, as_service):
    acme, globex = world_runs.acme, world_runs.globex
    with tenant_atomic(acme):
        with tenant_atomic(globex):
            assert list(Run.objects.values_list("run_id", flat=True)) == ["globex_nightly"]
        # A released savepoint would keep globex's setting: it is set back to acme's.
        assert current_setting(TENANT_SETTING) == str(acme.pk)
        assert list(Run.objects.unscoped().values_list("run_id", flat=True)) == ["acme_nightly"]
    with transaction.atomic():
        with tenant_atomic(globex):
            pass
        assert current_setting(TENANT_SETTING) == ""
        assert count_rows(Run) == 0


def test_a_unit_of_work_inside_its_tenants_binding_reuses_it_and_a_new_transaction_binds_again(
    world_runs, as_service
):
    acme, globex = world_runs.acme, world_runs.globex

    @transaction.atomic  # one Atomic object, reused by every call: as any decorated function's
    def runs_seen_by(tenant: Tenant) -> list[str]:
        # The request's binding, then the write path's.
        with request_transaction() as unit, unit.bind(tenant), tenant_atomic(tenant):
            inner = list(Run.objects.values_list("run_id", flat=True))
            with tenant_atomic(globex):
                assert list(Run.objects.values_list("run_id", flat=True)) == ["globex_nightly"]
            assert current_setting(TENANT_SETTING) == str(tenant.pk)
            return inner

    assert runs_seen_by(acme) == ["acme_nightly"]
    assert current_setting(TENANT_SETTING) in (None, "")
    # A new transaction on the same connection binds the tenant again, though nothing else changed.
    assert runs_seen_by(acme) == ["acme_nightly"]
    assert runs_seen_by(globex) == ["globex_nightly"]


def test_two_requests_in_a_row_on_one_persistent_connection_never_leak(world_runs, as_service, cloud):
    # The test client calls the app in this thread, on this thread's one connection, as daphne's
    # single thread for sync views does.
    cloud.force_login(world_runs.alice)
    first = cloud.get("/")
    backend = connection.connection.info.backend_pid
    assert first.status_code == 200
    assert "acme_nightly" in first.text and "globex_nightly" not in first.text

    cloud.force_login(world_runs.bob)
    second = cloud.get("/")
    assert connection.connection.info.backend_pid == backend
    assert second.status_code == 200
    assert "globex_nightly" in second.text and "acme_nightly" not in second.text
    api = cloud.get("/api/v1/runs/")
    assert [row["run_id"] for row in api.json()["results"]] == ["globex_nightly"]

    # Between requests the connection acts for nobody.
    assert current_setting(TENANT_SETTING) in (None, "")
    assert count_rows(Run) == 0


def test_a_task_that_forgets_the_tenant_sees_nothing(world_runs, as_service):
    # One worker thread with its own persistent connection, running tasks one after another, as a
    # Celery worker's does; its context starts empty, like a worker's.
    def count_runs_for(*, tenant_id: int) -> int:
        with tenant_atomic(Tenant.objects.get(pk=tenant_id)):
            return Run.objects.count()

    def forgetful_task() -> tuple[int, int]:
        try:
            Run.objects.count()
        except NoTenantError:
            pass
        else:
            raise AssertionError("the manager ran with no tenant")
        return count_rows(Run), raw_count("runs_event")

    def close_connection() -> None:
        connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as worker:
        assert worker.submit(count_runs_for, tenant_id=world_runs.acme.pk).result() == 1
        # The next task on the same thread and connection inherits nothing from the last one.
        assert worker.submit(forgetful_task).result() == (0, 0)
        worker.submit(close_connection).result()
    assert threading.current_thread() is threading.main_thread()


def test_the_pre_tenant_lookup_reads_only_the_users_memberships(world_runs, as_service):
    carol, bob = world_runs.carol, world_runs.bob
    assert [m.tenant.slug for m in membership_list_for_user(user_id=carol.pk)] == ["acme", "globex"]
    assert [m.tenant.slug for m in membership_list_for_user(user_id=bob.pk)] == ["globex"]
    # The lookup's setting opens nothing else: runs stay invisible, memberships read-only.
    with pre_tenant_lookup(USER_SETTING, str(carol.pk)):
        assert count_rows(Run) == 0
        assert Membership.objects.unscoped().filter(user=carol).update(role="owner") == 0
    with (
        pytest.raises(DatabaseError, match="row-level security"),
        pre_tenant_lookup(USER_SETTING, str(bob.pk)),
    ):
        Membership.objects.unscoped().create(tenant=world_runs.acme, user=bob)
    # Inside a longer transaction, the setting ends with the lookup.
    with transaction.atomic():
        membership_list_for_user(user_id=carol.pk)
        assert current_setting(USER_SETTING) == ""
        assert count_rows(Membership) == 0


def test_the_service_role_cannot_turn_row_level_security_off(world_runs, as_service):
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
        assert cursor.fetchone() == (False, False)
        cursor.execute("SELECT count(*) FROM pg_class WHERE relowner = current_user::regrole")
        assert cursor.fetchone()[0] == 0
    for statement, error in [
        ("ALTER TABLE runs_run DISABLE ROW LEVEL SECURITY", "must be owner"),
        ("DROP POLICY tenant_isolation ON runs_run", "must be owner"),
        ("TRUNCATE runs_run CASCADE", "permission denied"),
        ("INSERT INTO django_migrations (app, name, applied) VALUES ('x', 'y', now())", "permission denied"),
    ]:
        with pytest.raises(DatabaseError, match=error), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement)
    # With row_security off, a query that policies would filter fails rather than see everything.
    with (
        pytest.raises(DatabaseError, match="row-level security"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("SET LOCAL row_security = off")
        cursor.execute("SELECT count(*) FROM runs_run")


def test_cloud_settings_of_the_tests_name_a_real_backend():
    # The in-process cloud settings must load: a typo here would make every cloud test vacuous.
    assert apps.get_app_config("tenants")
    assert CLOUD_SETTINGS["AUTHENTICATION_BACKENDS"] == ["tenants.oidc.TenantOIDCBackend"]


def test_the_admin_enters_a_tenant_through_the_staff_path(world_runs, local_tenant, as_service, client):
    from django.contrib.auth import get_user_model

    from tenants.models import StaffAccess

    staff = get_user_model().objects.create_user(
        "ops", email="ops@example.com", is_staff=True, is_superuser=True
    )
    client.force_login(staff)
    page = client.get(f"/admin/tenants/tenant/{world_runs.globex.pk}/change/").text
    assert "bob" in page and "carol" in page and "alice" not in page
    assert StaffAccess.objects.filter(tenant_slug="globex").count() == 1
    # Outside the tenant page, the same request path sees no tenant's rows.
    assert count_rows(Membership) == 0
