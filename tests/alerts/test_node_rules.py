"""`node_slow` and `node_flaky` (SPEC section 12), against each node's own history, kept by the write
path as runs complete: imported by `ingest_archive` like any run."""

from __future__ import annotations

import random

from runs.alerts.models import NodeStats, Notification
from runs.alerts.services import RuleSpec, rule_create
from tenants.context import tenant_scope
from tests.conftest import ingest_quietly, write_archive_run

GRAPH = {"version": 1, "nodes": [{"id": "compile", "deps": []}, {"id": "test", "deps": ["compile"]}]}


def run_events(run_id: str, day: int, compile_s: float, *, test_attempts: int = 1) -> list[dict]:
    """A clean run: `compile` once (taking `compile_s`), `test` after `test_attempts` attempts."""
    ts = f"2026-11-{day:02d}T10:00:00.000Z"
    events = [
        {"ts": ts, "event": "run_start", "run_id": run_id, "graph": GRAPH},
        {
            "ts": ts,
            "event": "transition",
            "node": "compile",
            "from": "pending",
            "to": "running",
            "attempt": 1,
        },
        {
            "ts": ts,
            "event": "node_attempt",
            "node": "compile",
            "attempt": 1,
            "ok": True,
            "duration_s": compile_s,
            "exit_code": 0,
        },
        {"ts": ts, "event": "transition", "node": "compile", "from": "running", "to": "done", "attempt": 1},
    ]
    for attempt in range(1, test_attempts + 1):
        ok = attempt == test_attempts
        events += [
            {
                "ts": ts,
                "event": "transition",
                "node": "test",
                "from": "pending" if attempt == 1 else "failed",
                "to": "running",
                "attempt": attempt,
            },
            {
                "ts": ts,
                "event": "node_attempt",
                "node": "test",
                "attempt": attempt,
                "ok": ok,
                "duration_s": 1.0,
                "exit_code": 0 if ok else 1,
            },
            {
                "ts": ts,
                "event": "transition",
                "node": "test",
                "from": "running",
                "to": "done" if ok else "failed",
                "attempt": attempt,
            },
        ]
    return [*events, {"ts": ts, "event": "run_end", "exit_code": 0}]


def node_rule(tenant, condition: str, **params):
    spec = RuleSpec(
        name=condition,
        condition=condition,
        channel_kind="webhook",
        url="https://hooks.example.net/x",
        **params,
    )
    return rule_create(tenant=tenant, spec=spec)[0]


def sent(tenant) -> list[tuple[str, str, str]]:
    with tenant_scope(tenant):
        return sorted(Notification.objects.filter(tenant=tenant).values_list("type", "run_id", "node"))


def test_node_slow_fires_when_a_node_triples_after_20_steady_runs_and_not_on_noise(local_tenant, tmp_path):
    node_rule(local_tenant, "node_slow", node="compile")
    noise = random.Random(7)
    for day in range(1, 21):
        write_archive_run(
            tmp_path,
            f"nightly-{day:02d}",
            run_events(f"nightly-{day:02d}", day, 60 * noise.uniform(0.7, 1.3)),
        )
    ingest_quietly(tmp_path)
    assert sent(local_tenant) == []  # ±30% is the node's own noise
    write_archive_run(tmp_path, "nightly-21", run_events("nightly-21", 21, 180.0))
    ingest_quietly(tmp_path)
    assert sent(local_tenant) == [("node.slow", "nightly-21", "compile")]
    with tenant_scope(local_tenant):
        (notification,) = Notification.objects.filter(tenant=local_tenant)
        stats = NodeStats.objects.get(tenant=local_tenant, node_id="compile")
    assert notification.details["duration_s"] == 180.0 and 42 <= notification.details["median_s"] <= 78
    assert len(stats.durations) == 21  # the statistics advanced run by run; nothing read again
    ingest_quietly(tmp_path)  # imported again: nothing new
    assert sent(local_tenant) == [("node.slow", "nightly-21", "compile")]


def test_node_slow_of_a_run_imported_in_two_parts_measures_the_attempts_of_the_first(local_tenant, tmp_path):
    node_rule(local_tenant, "node_slow", node="compile")
    for day in range(1, 21):
        write_archive_run(tmp_path, f"nightly-{day:02d}", run_events(f"nightly-{day:02d}", day, 60.0))
    ingest_quietly(tmp_path)
    events = run_events("nightly-21", 21, 180.0)
    # The log as a follower first finds it: the slow attempt is there, the run's end is not yet.
    write_archive_run(tmp_path, "nightly-21", events[:4])
    ingest_quietly(tmp_path)
    assert sent(local_tenant) == []
    write_archive_run(tmp_path, "nightly-21", events)
    ingest_quietly(tmp_path)  # the rest of the log, and the run completes
    assert sent(local_tenant) == [("node.slow", "nightly-21", "compile")]
    with tenant_scope(local_tenant):
        (notification,) = Notification.objects.filter(tenant=local_tenant)
    assert notification.details["duration_s"] == 180.0 and notification.details["median_s"] == 60.0


def test_node_slow_needs_five_earlier_attempts(local_tenant, tmp_path):
    node_rule(local_tenant, "node_slow")
    for day, seconds in enumerate([10, 10, 10, 10, 100], start=1):
        write_archive_run(tmp_path, f"r{day}", run_events(f"r{day}", day, seconds))
    ingest_quietly(tmp_path)
    assert sent(local_tenant) == []


def test_node_flaky_fires_when_the_flake_rate_rises_past_the_threshold(local_tenant, tmp_path):
    node_rule(local_tenant, "node_flaky", window=10, threshold=0.2)
    # Ten clean runs, then flaky ones: 1/10, 2/10, then 3/10 passes 0.2.
    for day in range(1, 14):
        attempts = 2 if day > 10 else 1
        write_archive_run(
            tmp_path, f"ci-{day:02d}", run_events(f"ci-{day:02d}", day, 10.0, test_attempts=attempts)
        )
    ingest_quietly(tmp_path)
    assert sent(local_tenant) == [("node.flaky", "ci-13", "test")]
