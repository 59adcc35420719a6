"""Retention end to end with a frozen clock (SPEC section 9): kept, soft-deleted and answering 410
with the reason, hard-deleted with its rows gone from the tables, the record outliving it, and a
restore inside the window bringing the run back whole. `now` is passed to the services; nothing
patches time."""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest

from billing.models import Plan
from ingest.archive import archive_import
from retention import selectors, services
from retention.models import RetentionAction, RetentionRecord
from retention.services import (
    RestoreRefused,
    retention_hard_delete_expired,
    retention_restore,
    retention_soft_delete_expired,
)
from runs.models import Run
from runs.selectors import node_runs, node_stats
from tenants.context import tenant_atomic
from tenants.models import StaffAccess
from tests.conftest import ingest_quietly
from tests.retention.conftest import T0, rows_of, run_events, store_run

pytestmark = pytest.mark.django_db

API = "/api/v1"
JOB = "task retention.soft_delete_expired (id test)"
DAY = timedelta(days=1)


def soft(tenant, now, **kwargs):
    return retention_soft_delete_expired(tenant=tenant, actor=JOB, now=now, **kwargs)


def hard(tenant, now, **kwargs):
    return retention_hard_delete_expired(tenant=tenant, actor=JOB, now=now, **kwargs)


def run_ids(outcome) -> list[str]:
    return [record.run_id for record in outcome.records]


def gone(client, path: str) -> dict:
    response = client.get(path)
    assert response.status_code == 410, response.content
    body = response.json()
    assert body["error"]["code"] == "run_deleted"
    return body["error"]


def records_of(tenant, run_id: str) -> list[str]:
    return list(
        RetentionRecord.objects.filter(tenant=tenant, run_id=run_id)
        .order_by("id")
        .values_list("action", flat=True)
    )


# ---------------------------------------------------------------- soft delete


def test_89_days_old_stays_and_91_days_old_is_soft_deleted_with_the_reason_in_its_410(client, local_tenant):
    store_run(local_tenant, "kept", T0 - 89 * DAY)
    expired = store_run(local_tenant, "expired", T0 - 91 * DAY)
    held = rows_of(expired.pk)

    outcome = soft(local_tenant, T0)

    assert run_ids(outcome) == ["expired"]
    assert client.get(f"{API}/runs/kept/").status_code == 200
    error = gone(client, f"{API}/runs/expired/")
    details = error["details"]
    assert details == {
        "run_id": "expired",
        "action": "soft_delete",
        "at": "2026-06-01T12:00:00.000Z",
        "reason": "last event 2026-03-02 12:00 UTC, more than the 90 days plan “default” keeps a run",
        "plan": "default",
        "days": 90,
        "by": JOB,
        "last_event_at": "2026-03-02T12:00:00.000Z",
        "events": held["runs_event"],
        "diagnostics": held["runs_diagnostic"],
        "nodes": held["runs_runnode"],
        "restorable_until": "2026-06-08T12:00:00.000Z",
    }
    assert "soft-deleted by retention on 2026-06-01 12:00 UTC" in error["message"]
    assert "restored until 2026-06-08 12:00 UTC" in error["message"]
    # Hidden, not removed: the rows are all still in the tables.
    assert rows_of(expired.pk) == held and held["runs_event"] == 9


def test_a_soft_deleted_run_is_hidden_from_every_read_path(client, local_tenant):
    store_run(local_tenant, "kept", T0 - 10 * DAY)
    store_run(local_tenant, "expired", T0 - 100 * DAY)
    soft(local_tenant, T0)

    assert [row["run_id"] for row in client.get(f"{API}/runs/").json()["results"]] == ["kept"]
    for path in ("events", "graph", "summary"):
        assert gone(client, f"{API}/runs/expired/{path}")["details"]["action"] == "soft_delete"
    history = client.get("/").text
    assert "kept" in history and "expired" not in history
    # The node pages count runs: a deleted run's nodes are not among them.
    node_page = client.get("/nodes/build/").text
    assert "kept" in node_page and "expired" not in node_page
    assert [r.run_id for r in Run.objects.all()] == ["kept"]
    assert [r.run_id for r in node_runs(tenant=local_tenant, node_id="build", limit=10)] == ["kept"]
    assert {s.node_id: s.runs for s in node_stats(tenant=local_tenant, last_runs=10)} == {
        "build": 1,
        "test": 1,
    }
    page = client.get("/runs/expired/")
    assert page.status_code == 410
    assert "last event 2026-02-21 12:00 UTC, more than the 90 days" in page.text


def test_writes_to_a_soft_deleted_run_answer_410_and_store_nothing(client, local_tenant):
    store_run(local_tenant, "expired", T0 - 100 * DAY)
    before = Run.objects.including_deleted().get(run_id="expired")
    soft(local_tenant, T0)
    event = orjson.dumps({"ts": "2026-06-01T12:00:00.000Z", "event": "producer_note"})
    response = client.post(f"{API}/runs/expired/events", data=event, content_type="application/x-ndjson")
    assert response.status_code == 410 and response.json()["error"]["code"] == "run_deleted"
    assert response.json()["error"]["details"]["action"] == "soft_delete"
    response = client.put(f"{API}/runs/expired/graph", data=b'{"nodes": []}', content_type="application/json")
    assert response.status_code == 410
    assert Run.objects.including_deleted().get(run_id="expired").next_seq == before.next_seq


def test_a_second_run_of_the_job_changes_nothing(local_tenant):
    store_run(local_tenant, "expired", T0 - 100 * DAY)
    assert run_ids(soft(local_tenant, T0)) == ["expired"]
    assert soft(local_tenant, T0 + DAY).records == []
    assert hard(local_tenant, T0 + DAY).records == []
    assert records_of(local_tenant, "expired") == ["soft_delete"]


def test_soft_deletes_go_in_bounded_batches(local_tenant):
    for number in range(7):
        store_run(local_tenant, f"old_{number}", T0 - (100 + number) * DAY)
    outcome = soft(local_tenant, T0, batch_runs=3)
    assert len(outcome.batch_seconds) == 3  # 3 + 3 + 1
    assert sorted(run_ids(outcome)) == [f"old_{n}" for n in range(7)]


def test_a_run_without_events_is_judged_by_when_it_was_created(client, local_tenant):
    # A graph PUT before the first event makes a run with no last event.
    client.put(
        f"{API}/runs/graph_only/graph", data=b'{"version": 1, "nodes": []}', content_type="application/json"
    )
    created = Run.objects.get(run_id="graph_only").created_at
    assert soft(local_tenant, created + 90 * DAY).records == []
    record = soft(local_tenant, created + 91 * DAY).records[0]
    assert record.run_id == "graph_only" and record.reason.startswith("no event since it was created")


# ---------------------------------------------------------------- hard delete


def test_7_days_after_the_soft_delete_the_run_and_its_rows_are_gone_and_the_record_stays(
    client, local_tenant
):
    expired = store_run(local_tenant, "expired", T0 - 91 * DAY)
    held = rows_of(expired.pk)
    soft(local_tenant, T0)

    assert hard(local_tenant, T0 + 7 * DAY - timedelta(hours=1)).records == []
    assert rows_of(expired.pk) == held

    outcome = hard(local_tenant, T0 + 7 * DAY + timedelta(hours=1))
    assert run_ids(outcome) == ["expired"]
    # Gone from the tables themselves: the run row (with its graph and summary), events, nodes,
    # diagnostics.
    assert rows_of(expired.pk) == {"runs_run": 0, "runs_event": 0, "runs_runnode": 0, "runs_diagnostic": 0}

    soft_record, hard_record = RetentionRecord.objects.filter(run_ref=expired.pk).order_by("id")
    assert soft_record.action == RetentionAction.SOFT_DELETE
    assert (hard_record.action, hard_record.days, hard_record.plan_slug) == ("hard_delete", 7, "default")
    assert (hard_record.events, hard_record.nodes, hard_record.diagnostics) == (
        held["runs_event"],
        held["runs_runnode"],
        held["runs_diagnostic"],
    )
    details = gone(client, f"{API}/runs/expired/")["details"]
    assert details["action"] == "hard_delete" and details["restorable_until"] is None
    assert details["reason"].startswith("soft-deleted 2026-06-01 12:00 UTC, more than the 7 days plan")
    page = client.get("/runs/expired/")
    assert page.status_code == 410 and "gone for good" in page.text
    retention_page = client.get("/retention/").text
    assert "hard-deleted" in retention_page and "soft-deleted" in retention_page


def test_a_run_too_big_for_one_batch_is_removed_over_several_and_recorded_once(local_tenant):
    big = store_run(local_tenant, "big", T0 - 100 * DAY, steps=30)
    small = store_run(local_tenant, "small", T0 - 100 * DAY)
    held = rows_of(big.pk)
    assert held["runs_event"] == 96
    soft(local_tenant, T0)

    outcome = hard(local_tenant, T0 + 8 * DAY, batch_events=10)

    assert sorted(run_ids(outcome)) == ["big", "small"]
    assert len(outcome.batch_seconds) >= 10
    assert rows_of(big.pk)["runs_event"] == 0 and rows_of(small.pk)["runs_event"] == 0
    record = RetentionRecord.objects.get(run_ref=big.pk, action=RetentionAction.HARD_DELETE)
    assert record.events == 96


def test_a_hard_delete_cut_short_is_finished_by_the_next_run_without_a_second_record(local_tenant):
    big = store_run(local_tenant, "big", T0 - 100 * DAY, steps=30)
    soft(local_tenant, T0)
    # The first batch of a job, and no more: as if its worker had died after it.
    with tenant_atomic(local_tenant):
        now = T0 + 8 * DAY
        plan = local_tenant.plan
        runs = list(selectors.hard_delete_candidates(tenant=local_tenant, plan=plan, now=now)[:1])
        services._hard_delete_batch(local_tenant, plan, runs, actor=JOB, now=now, batch_events=10)
    assert 0 < rows_of(big.pk)["runs_event"] < 96
    assert records_of(local_tenant, "big") == ["soft_delete", "hard_delete"]
    with pytest.raises(RestoreRefused, match="being hard-deleted"):
        retention_restore(tenant=local_tenant, run_id="big", actor="ops", now=T0 + 8 * DAY)

    assert hard(local_tenant, T0 + 9 * DAY, batch_events=10).records == []
    assert rows_of(big.pk)["runs_run"] == 0 and rows_of(big.pk)["runs_event"] == 0
    assert records_of(local_tenant, "big") == ["soft_delete", "hard_delete"]
    assert RetentionRecord.objects.get(run_ref=big.pk, action="hard_delete").events == 96


# ---------------------------------------------------------------- restore


def test_a_restore_inside_the_window_brings_the_run_back_whole(client, local_tenant):
    run = store_run(local_tenant, "expired", T0 - 91 * DAY, steps=3)
    held = rows_of(run.pk)
    paths = ("/", "/events?limit=1000", "/graph", "/summary")
    before = {path: client.get(f"{API}/runs/expired{path}").json() for path in paths}
    soft(local_tenant, T0)

    record = retention_restore(
        tenant=local_tenant, run_id="expired", actor="ops@example.com (user 1)", now=T0 + 6 * DAY
    )

    assert record.action == RetentionAction.RESTORE and record.actor == "ops@example.com (user 1)"
    assert (
        record.reason
        == "restored from its soft delete of 2026-06-01 12:00 UTC; plan “default” keeps it 90 days from now"
    )
    assert {path: client.get(f"{API}/runs/expired{path}").json() for path in paths} == before
    assert rows_of(run.pk) == held
    assert [row["run_id"] for row in client.get(f"{API}/runs/").json()["results"]] == ["expired"]
    assert StaffAccess.objects.filter(reason="retention: restore run expired", actor=record.actor).exists()
    assert records_of(local_tenant, "expired") == ["soft_delete", "restore"]

    # Its plan's 90 days start again at the restore: not deleted again the next day...
    assert soft(local_tenant, T0 + 7 * DAY).records == []
    assert hard(local_tenant, T0 + 30 * DAY).records == []
    # ... but 90 days after it.
    again = soft(local_tenant, T0 + 97 * DAY).records
    assert [r.reason for r in again] == [
        "restored 2026-06-07 12:00 UTC and not active since, more than the 90 days plan “default” keeps a run"
    ]


def test_what_cannot_be_restored_says_why(local_tenant):
    store_run(local_tenant, "kept", T0 - DAY)
    store_run(local_tenant, "expired", T0 - 100 * DAY)
    soft(local_tenant, T0)
    hard(local_tenant, T0 + 8 * DAY)
    for run_id, why in (
        ("kept", "'kept' is not deleted"),
        ("nobody", "there is no run 'nobody'"),
        ("expired", "'expired' was hard-deleted on 2026-06-09 12:00 UTC: nothing is left to restore"),
    ):
        with pytest.raises(RestoreRefused, match=why):
            retention_restore(tenant=local_tenant, run_id=run_id, actor="ops", now=T0 + 9 * DAY)


# ---------------------------------------------------------------- the plan decides


def test_a_plan_change_from_90_to_30_days_soft_deletes_the_now_expired_runs_on_the_next_run(local_tenant):
    for age in (20, 45, 60, 89):
        store_run(local_tenant, f"age_{age}", T0 - age * DAY)
    assert soft(local_tenant, T0).records == []

    Plan.objects.filter(pk=local_tenant.plan_id).update(retention_days=30)
    outcome = soft(local_tenant, T0 + timedelta(minutes=1))

    assert sorted(run_ids(outcome)) == ["age_45", "age_60", "age_89"]
    assert {(r.days, r.plan_slug) for r in outcome.records} == {(30, "default")}
    assert all("more than the 30 days plan “default” keeps a run" in r.reason for r in outcome.records)
    assert [r.run_id for r in Run.objects.all()] == ["age_20"]


# ---------------------------------------------------------------- archives (OSS)


def test_an_archive_import_never_brings_back_a_run_retention_removed(local_tenant, imported):
    sample_now = T0.replace(year=2027, month=2, day=20)  # the sample runs are of 2026-11-20
    assert len(soft(local_tenant, sample_now).records) == 8

    ingest_quietly(imported)
    report = archive_import(tenant=local_tenant, root=imported)
    assert report.runs == [] and len(report.deleted) == 8
    assert Run.objects.count() == 0

    hard(local_tenant, sample_now + 8 * DAY)
    assert Run.objects.including_deleted().count() == 0
    # The folders are still in the archive; their records keep them out.
    with open(imported / "runs" / "run_flaky" / "transitions.jsonl", "ab") as log:
        log.write(orjson.dumps(run_events("run_flaky", T0)[0]) + b"\n")
    report = archive_import(tenant=local_tenant, root=imported)
    assert report.runs == [] and sorted(report.deleted) == sorted(
        p.name for p in (imported / "runs").iterdir()
    )
    assert Run.objects.including_deleted().count() == 0
