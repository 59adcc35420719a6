"""`manage.py retention [--dry-run] [--tenant SLUG]`, run as an operator runs it (a subprocess on this
test's database), in OSS mode: first what would go, then what went."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from retention.models import RetentionRecord
from retention.services import retention_soft_delete_expired
from runs.models import Run
from tenants.context import tenant_scope
from tenants.models import LOCAL_TENANT_SLUG, Tenant
from tests.conftest import manage, world_build
from tests.retention.conftest import store_run

DAY = timedelta(days=1)


def ok(result) -> list[str]:
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.fixture
def aged(transactional_db) -> Tenant:
    """The local tenant, as of now: one run kept, one expired, one soft-deleted past its grace."""
    tenant, _ = Tenant.objects.get_or_create(slug=LOCAL_TENANT_SLUG, defaults={"name": "Local"})
    now = timezone.now()
    store_run(tenant, "kept", now - DAY)
    store_run(tenant, "expired", now - 95 * DAY)
    store_run(tenant, "past_grace", now - 200 * DAY)
    retention_soft_delete_expired(tenant=tenant, actor="earlier job", now=now - 10 * DAY)
    return tenant


def test_a_dry_run_shows_what_would_go_and_changes_nothing(aged):
    lines = ok(manage("retention", "--dry-run"))
    assert lines[0].startswith("local: plan “default” keeps a run 90 days after its last event")
    assert lines[1].startswith("  to hard-delete (soft-deleted before ") and lines[1].endswith(
        "1 runs, 9 events"
    )
    assert lines[2].split()[:2] == ["past_grace", "soft-deleted"]
    assert lines[3].startswith("  to soft-delete (last active before ") and lines[3].endswith(
        "1 runs, 9 events"
    )
    assert lines[4].split()[:3] == ["expired", "last", "event"]
    assert lines[-1] == "dry run: nothing was deleted"
    assert "kept" not in "\n".join(lines)
    with tenant_scope(aged):
        assert sorted(r.run_id for r in Run.objects.all()) == ["expired", "kept"]
        assert RetentionRecord.objects.count() == 1


def test_retention_shows_what_would_go_then_what_went(aged):
    lines = ok(manage("retention"))
    text = "\n".join(lines)
    assert text.index("to hard-delete") < text.index("local: hard-deleted 1 runs (9 events) in 1 batches")
    assert text.index("to soft-delete") < text.index("local: soft-deleted 1 runs (9 events) in 1 batches")
    with tenant_scope(aged):
        assert [r.run_id for r in Run.objects.all()] == ["kept"]
        assert Run.objects.including_deleted().filter(run_id="past_grace").count() == 0
        actors = set(RetentionRecord.objects.exclude(actor="earlier job").values_list("actor", flat=True))
    assert len(actors) == 1 and actors.pop().startswith("manage.py retention (user ")

    again = "\n".join(ok(manage("retention")))
    assert "to hard-delete" in again and "none" in again
    assert "local: soft-deleted 0 runs (0 events)" in again


def test_as_of_shows_what_would_go_on_a_later_day(aged):
    later = (timezone.now() + 100 * DAY).isoformat()
    text = "\n".join(ok(manage("retention", "--dry-run", "--as-of", later)))
    assert "2 runs, 18 events" in text and "kept" in text
    refused = manage("retention", "--as-of", later)
    assert refused.returncode != 0 and "--as-of only goes with --dry-run" in refused.stderr


def test_tenant_names_the_one_tenant_to_act_on(transactional_db):
    world = world_build()
    now = timezone.now()
    store_run(world.acme, "acme_old", now - 100 * DAY)
    store_run(world.globex, "globex_old", now - 100 * DAY)

    text = "\n".join(ok(manage("retention", "--tenant", "globex")))
    assert "globex: soft-deleted 1 runs" in text and "acme" not in text
    with tenant_scope(world.acme):
        assert [r.run_id for r in Run.objects.all()] == ["acme_old"]

    unknown = manage("retention", "--tenant", "initech")
    assert unknown.returncode != 0 and "there is no tenant 'initech'" in unknown.stderr
