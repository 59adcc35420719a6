"""The outbox in the one write path (SPEC section 12): a notification is recorded in the transaction
of the run change that caused it, by `ingest_archive`, `serve`'s follower and the ingest API alike,
and at most once per (rule, run, type, node) however often a run is imported or sent."""

from __future__ import annotations

import threading

import orjson
import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from runs.alerts.models import Notification
from runs.alerts.services import RuleSpec, rule_create, rule_delete
from runs.models import Run
from tenants.context import tenant_scope
from tests.conftest import SAMPLE_ARCHIVE, ingest_quietly, run_record

HOOK = "https://hooks.example.net/in"


def failed_run_body(run_id: str) -> bytes:
    """The sample's failing run as a producer sends it as `run_id`: NDJSON, numbered from seq 0."""
    log = (SAMPLE_ARCHIVE / "runs" / "run_failed" / "transitions.jsonl").read_bytes()
    events = [orjson.loads(line) for line in log.splitlines() if line.strip()]
    events = [dict(e, run_id=run_id) if e["event"] == "run_start" else e for e in events]
    return b"".join(orjson.dumps(dict(e, seq=i)) + b"\n" for i, e in enumerate(events))


def rule(tenant, condition: str, *, glob: str = "", cooldown_s: int = 0, name: str = ""):
    spec = RuleSpec(
        name=name or condition,
        condition=condition,
        run_id_glob=glob,
        channel_kind="webhook",
        url=HOOK,
        cooldown_s=cooldown_s,
    )
    return rule_create(tenant=tenant, spec=spec)[0]


def notifications(tenant) -> list[tuple[str, str, str]]:
    with tenant_scope(tenant):
        return sorted(Notification.objects.filter(tenant=tenant).values_list("rule__name", "type", "run_id"))


def test_an_archive_import_records_each_condition_once_even_imported_twice(local_tenant, sample_archive):
    for condition in ("run_failed", "run_flaky", "diagnostic_error"):
        rule(local_tenant, condition)
    rule(local_tenant, "run_failed", glob="nightly-*", name="nightly only")
    ingest_quietly(sample_archive)
    expected = [
        ("diagnostic_error", "run.diagnostic", "run_dirty"),
        ("run_failed", "run.failed", "run_failed"),
        ("run_flaky", "run.flaky", "run_flaky"),
        ("run_flaky", "run.flaky", "run_same_ts"),
    ]
    assert notifications(local_tenant) == expected
    # The same archive again, and again copied afresh (its offsets forgotten): nothing new.
    ingest_quietly(sample_archive)
    assert notifications(local_tenant) == expected


def test_a_run_that_ended_before_the_rule_existed_does_not_notify_when_touched_again(
    local_tenant, sample_archive
):
    ingest_quietly(sample_archive)
    rule(local_tenant, "run_failed")
    # The crashed run's log grows; the failed run is only read again.
    with (sample_archive / "runs" / "run_crashed" / "transitions.jsonl").open("a") as log:
        log.write('{"ts":"2026-11-20T12:00:00.000Z","event":"checkpoint"}\n')
    ingest_quietly(sample_archive)
    assert notifications(local_tenant) == []


def test_the_ingest_api_records_one_notification_for_a_failing_run_sent_twice(client, local_tenant):
    rule(local_tenant, "run_failed")
    body = failed_run_body("nightly-7")
    for _ in range(2):
        response = client.post(
            "/api/v1/runs/nightly-7/events", data=body, content_type="application/x-ndjson"
        )
        assert response.status_code in (200, 201), response.content
    assert notifications(local_tenant) == [("run_failed", "run.failed", "nightly-7")]
    with tenant_scope(local_tenant):
        (notification,) = Notification.objects.filter(tenant=local_tenant)
    assert notification.details["outcome"] == "failed" and notification.status == "pending"


def test_a_rolled_back_change_leaves_no_notification(local_tenant):
    from django.db import transaction

    rule(local_tenant, "run_failed")
    with pytest.raises(RuntimeError), transaction.atomic():
        run_record(local_tenant, "doomed", ok=False)
        assert len(notifications(local_tenant)) == 1  # recorded with the change, inside its transaction
        raise RuntimeError("the caller fails after the write")
    assert notifications(local_tenant) == []


def test_the_run_id_filter_and_the_cooldown(local_tenant):
    rule(local_tenant, "run_failed", glob="nightly-*", cooldown_s=3600)
    run_record(local_tenant, "release-1", ok=False)
    run_record(local_tenant, "nightly-1", ok=False)
    run_record(local_tenant, "nightly-2", ok=False)  # within the cooldown of nightly-1's
    assert notifications(local_tenant) == [("run_failed", "run.failed", "nightly-1")]


def test_a_tenant_without_rules_pays_no_alert_query_per_batch_and_a_removed_rule_is_not_used(local_tenant):
    made = rule(local_tenant, "run_failed")
    rule_delete(tenant=local_tenant, rule=made)
    run_record(local_tenant, "first", ok=False)  # reads that there is no rule, and remembers it
    with CaptureQueriesContext(connection) as queries:
        run_record(local_tenant, "second", ok=False)
    assert not [q for q in queries.captured_queries if "alerts_" in q["sql"]]
    assert notifications(local_tenant) == []


def test_the_other_tenant_gets_nothing(world):
    rule(world.acme, "run_failed")
    run_record(world.globex, "globex-nightly", ok=False)
    run_record(world.acme, "acme-nightly", ok=False)
    assert notifications(world.acme) == [("run_failed", "run.failed", "acme-nightly")]
    assert notifications(world.globex) == []


@pytest.mark.postgres
@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrent writers need PostgreSQL")
@pytest.mark.django_db(transaction=True)
def test_four_concurrent_writers_of_one_failing_run_give_one_notification(local_tenant):
    rule(local_tenant, "run_failed")
    body = failed_run_body("shared")
    start = threading.Barrier(4)
    answers: list[int] = []

    def writer() -> None:
        from django.test import Client

        start.wait()
        try:
            response = Client().post(
                "/api/v1/runs/shared/events", data=body, content_type="application/x-ndjson"
            )
            answers.append(response.status_code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 4 and all(a in (200, 201) for a in answers)
    assert notifications(local_tenant) == [("run_failed", "run.failed", "shared")]


@pytest.mark.django_db(transaction=True)
def test_a_rule_removed_while_a_writer_records_it_does_not_fail_the_writer(local_tenant, monkeypatch):
    import runs.alerts.services as alerts

    made = rule(local_tenant, "run_failed")
    (stale,) = alerts.active_rules(tenant=local_tenant)  # what a writer read before the rule went
    rule_delete(tenant=local_tenant, rule=made)
    monkeypatch.setattr(alerts, "active_rules", lambda tenant: [stale])
    run_record(local_tenant, "nightly-1", ok=False)  # commits: the run is stored
    with tenant_scope(local_tenant):
        assert Run.objects.filter(tenant=local_tenant, run_id="nightly-1").exists()
    assert notifications(local_tenant) == []  # the orphan is never read
