"""Retention and tenancy: the jobs enter one tenant at a time through the staff path, and a tenant's
deletions and records are its own (row-level security and locks: test_concurrency.py)."""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest

from retention.models import RetentionAction, RetentionRecord
from retention.services import retention_soft_delete_expired, retention_sweep
from tenants.context import tenant_scope
from tenants.models import StaffAccess
from tenants.services import api_key_create
from tests.retention.conftest import T0, store_run

DAY = timedelta(days=1)
BOTH = (RetentionAction.HARD_DELETE, RetentionAction.SOFT_DELETE)


def bearer(tenant) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {api_key_create(tenant=tenant, name='ci')[1]}"}


@pytest.mark.django_db
def test_another_tenant_is_told_nothing_of_a_deleted_run(cloud, world):
    store_run(world.acme, "nightly", T0 - 100 * DAY)
    retention_soft_delete_expired(tenant=world.acme, actor="job", now=T0)
    acme, globex = bearer(world.acme), bearer(world.globex)

    assert cloud.get("/api/v1/runs/nightly/", **acme).status_code == 410
    answer = cloud.get("/api/v1/runs/nightly/", **globex)
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "run_not_found"
    # The id is acme's tombstone, not globex's: globex may start a run of that name.
    event = orjson.dumps({"ts": "2026-06-01T12:00:00.000Z", "event": "run_start", "run_id": "nightly"})
    posted = cloud.post(
        "/api/v1/runs/nightly/events", data=event, content_type="application/x-ndjson", **globex
    )
    assert posted.status_code == 200, posted.content
    assert cloud.get("/api/v1/runs/nightly/", **globex).status_code == 200
    assert cloud.get("/api/v1/runs/nightly/", **acme).status_code == 410


@pytest.mark.django_db
def test_the_retention_page_shows_each_tenant_its_own_records(cloud, world):
    store_run(world.acme, "acme_old", T0 - 100 * DAY)
    store_run(world.globex, "globex_old", T0 - 100 * DAY)
    retention_sweep(actions=BOTH, actor="job", now=T0)

    cloud.force_login(world.alice)
    page = cloud.get("/retention/").text
    assert "acme_old" in page and "globex_old" not in page
    cloud.force_login(world.bob)
    page = cloud.get("/retention/").text
    assert "globex_old" in page and "acme_old" not in page


@pytest.mark.django_db
def test_a_sweep_enters_every_tenant_through_the_staff_path(world):
    retention_sweep(actions=BOTH, actor="task retention.x (id 1)", now=T0)
    assert sorted(StaffAccess.objects.values_list("tenant_slug", "reason", "actor")) == [
        (slug, f"retention: {what}", "task retention.x (id 1)")
        for slug in ("acme", "globex", "local")
        for what in ("hard delete", "soft delete")
    ]


@pytest.mark.django_db
def test_records_are_scoped_to_the_current_tenant_in_code(world):
    store_run(world.acme, "acme_old", T0 - 100 * DAY)
    retention_sweep(actions=BOTH, actor="job", now=T0)
    with tenant_scope(world.globex):
        assert RetentionRecord.objects.count() == 0
    with tenant_scope(world.acme):
        assert [r.run_id for r in RetentionRecord.objects.all()] == ["acme_old"]


@pytest.mark.django_db
def test_the_retention_page_pages_back_through_older_records(client, local_tenant, monkeypatch):
    monkeypatch.setattr("retention.views.RECORDS_PER_PAGE", 2)
    for number in range(3):
        store_run(local_tenant, f"old_{number}", T0 - (100 + number) * DAY)
    retention_soft_delete_expired(tenant=local_tenant, actor="job", now=T0)  # oldest first: old_2 first

    newest = client.get("/retention/").text
    assert "old_0" in newest and "old_1" in newest and "old_2" not in newest
    assert "keeps a run 90 days after its last event" in newest
    older_link = newest.split('href="/retention/?before=')[1].split('"')[0]
    older = client.get(f"/retention/?before={older_link}").text
    assert "old_2" in older and "old_0" not in older and "Older records" not in older
