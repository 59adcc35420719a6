"""Restoring a soft-deleted run from the tenant's admin page: staff only, asked first, done through
the staff path, and recorded like every retention action."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from retention.models import RetentionRecord
from retention.services import retention_hard_delete_expired, retention_soft_delete_expired
from runs.models import Run
from tenants.context import tenant_scope
from tenants.models import StaffAccess
from tests.conftest import world_build
from tests.retention.conftest import T0, store_run
from tests.tenants.conftest import connected_as

DAY = timedelta(days=1)


def make_staff():
    return get_user_model().objects.create_user(
        "ops", email="ops@example.com", is_staff=True, is_superuser=True
    )


@pytest.fixture
def deleted(world):
    store_run(world.acme, "nightly", T0 - 100 * DAY)
    store_run(world.acme, "weekly", T0 - 100 * DAY)
    retention_soft_delete_expired(tenant=world.acme, actor="job", now=T0)
    return world


@pytest.mark.django_db
def test_the_tenant_page_lists_its_soft_deleted_runs_with_a_way_back(client, deleted):
    client.force_login(make_staff())
    page = client.get(f"/admin/tenants/tenant/{deleted.acme.pk}/change/").text
    for run_id in ("nightly", "weekly"):
        assert f'href="/admin/tenants/tenant/{deleted.acme.pk}/restore/{run_id}/">restore…</a>' in page
    globex = client.get(f"/admin/tenants/tenant/{deleted.globex.pk}/change/").text
    assert "nightly" not in globex and "none: every run is kept" in globex


@pytest.mark.django_db
def test_staff_restore_a_run_after_confirming_and_the_restore_is_recorded(client, deleted):
    staff = make_staff()
    client.force_login(staff)
    url = f"/admin/tenants/tenant/{deleted.acme.pk}/restore/nightly/"

    question = client.get(url)
    assert question.status_code == 200
    assert "Yes, restore it" in question.text and "last event 2026-02-21 12:00 UTC" in question.text
    with tenant_scope(deleted.acme):
        assert not Run.objects.filter(run_id="nightly").exists()  # asking restores nothing

    done = client.post(url)
    assert done.status_code == 302 and done["Location"] == f"/admin/tenants/tenant/{deleted.acme.pk}/change/"
    actor = f"ops@example.com (user {staff.pk})"
    with tenant_scope(deleted.acme):
        assert [r.run_id for r in Run.objects.all()] == ["nightly"]
        record = RetentionRecord.objects.filter(run_id="nightly").order_by("-id").first()
    assert (record.action, record.actor) == ("restore", actor)
    assert StaffAccess.objects.filter(actor=actor, reason="retention: restore run nightly").exists()
    page = client.get(done["Location"]).text
    assert "Run nightly is restored" in page


@pytest.mark.django_db
def test_a_run_gone_for_good_cannot_be_restored(client, deleted):
    retention_hard_delete_expired(tenant=deleted.acme, actor="job", now=T0 + 8 * DAY)
    client.force_login(make_staff())
    url = f"/admin/tenants/tenant/{deleted.acme.pk}/restore/nightly/"
    assert "is not soft-deleted" in client.get(url, follow=True).text
    assert "was hard-deleted on" in client.post(url, follow=True).text
    with tenant_scope(deleted.acme):
        assert RetentionRecord.objects.filter(action="restore").count() == 0


@pytest.mark.django_db
def test_only_staff_may_restore(client, deleted):
    client.force_login(deleted.alice)
    response = client.post(f"/admin/tenants/tenant/{deleted.acme.pk}/restore/nightly/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    with tenant_scope(deleted.acme):
        assert not Run.objects.filter(run_id="nightly").exists()


@pytest.mark.postgres
@pytest.mark.skipif(connection.vendor != "postgresql", reason="row-level security is PostgreSQL's")
def test_as_the_service_role_the_tenant_page_reads_the_tenant_it_entered(
    service_role, transactional_db, cloud
):
    world = world_build()
    store_run(world.acme, "nightly", T0 - 100 * DAY)
    store_run(world.acme, "kept", T0 - DAY)
    retention_soft_delete_expired(tenant=world.acme, actor="job", now=T0)
    staff = make_staff()
    with connected_as(service_role):
        cloud.force_login(staff)
        page = cloud.get(f"/admin/tenants/tenant/{world.acme.pk}/change/").text
        # Rendered while the staff path still binds acme: its rows, not the empty set of no tenant.
        assert "<tr><th>runs kept</th><td>1</td>" in page
        assert "<tr><th>runs soft-deleted</th><td>1</td>" in page
        assert "/restore/nightly/" in page
        assert cloud.post(f"/admin/tenants/tenant/{world.acme.pk}/restore/nightly/").status_code == 302
    with tenant_scope(world.acme):
        assert sorted(r.run_id for r in Run.objects.all()) == ["kept", "nightly"]
