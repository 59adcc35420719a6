"""The retention tests' world: runs whose last event is as old as a test needs, stored through the
one write path with every part retention must remove (events, node rows, a diagnostic, graph and
summary), and a direct look at the tables that does not go through any manager."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
from django.db import connection

from runs.models import Run
from runs.services import RunBatch
from tenants.context import tenant_atomic
from tenants.models import Tenant

# Fixtures of the tenancy tests: cloud mode in process, and the service role of SPEC section 8.
from tests.tenants.conftest import as_service, cloud, service_role  # noqa: F401

# The frozen clock of the lifecycle tests: every "now" is passed to the services, never patched.
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def run_events(run_id: str, last_event_at: datetime, *, steps: int = 1) -> list[dict]:
    """A complete run of one node, `build`, retried `steps` - 1 times, ending at `last_event_at`;
    with a kind this version does not know, so it has an `unknown_event` diagnostic."""
    start = last_event_at - timedelta(minutes=10)
    ts = rfc3339(start)
    events = [
        {
            "ts": ts,
            "event": "run_start",
            "run_id": run_id,
            "graph": {
                "version": 1,
                "nodes": [{"id": "build", "deps": []}, {"id": "test", "deps": ["build"]}],
            },
        },
        {"ts": ts, "event": "producer_note", "text": "cache warm"},
    ]
    for attempt in range(1, steps + 1):
        ok = attempt == steps
        events += [
            {
                "ts": ts,
                "event": "transition",
                "node": "build",
                "from": "pending" if attempt == 1 else "failed",
                "to": "running",
                "attempt": attempt,
            },
            {
                "ts": ts,
                "event": "node_attempt",
                "node": "build",
                "attempt": attempt,
                "ok": ok,
                "duration_s": 1.0,
                "exit_code": 0 if ok else 1,
            },
            {
                "ts": ts,
                "event": "transition",
                "node": "build",
                "from": "running",
                "to": "done" if ok else "failed",
                "attempt": attempt,
            },
        ]
    events += [
        {"ts": ts, "event": "transition", "node": "test", "from": "pending", "to": "running", "attempt": 1},
        {
            "ts": ts,
            "event": "node_attempt",
            "node": "test",
            "attempt": 1,
            "ok": True,
            "duration_s": 2.0,
            "exit_code": 0,
        },
        {"ts": ts, "event": "transition", "node": "test", "from": "running", "to": "done", "attempt": 1},
        {"ts": rfc3339(last_event_at), "event": "run_end", "exit_code": 0},
    ]
    return events


def store_run(tenant: Tenant, run_id: str, last_event_at: datetime, *, steps: int = 1) -> Run:
    """Stores a run through the one write path, with the producer's summary.json, and returns it."""
    events = run_events(run_id, last_event_at, steps=steps)
    with tenant_atomic(tenant):
        batch = RunBatch(tenant=tenant)
        change = batch.open([run_id])[run_id]
        for event in events:
            change.append(event, orjson.dumps(event).decode())
        change.set_summary({"run_id": run_id, "outcome": "clean", "exit_code": 0})
        batch.flush()
        return Run.objects.get(tenant=tenant, run_id=run_id)


def rows_of(run_pk: int) -> dict[str, int]:
    """What the database holds for a run, read from the tables themselves (no manager, no scoping;
    the suite's migrating role is not held back by row-level security)."""
    counts = {}
    with connection.cursor() as cursor:
        for table, column in (
            ("runs_run", "id"),
            ("runs_event", "run_id"),
            ("runs_runnode", "run_id"),
            ("runs_diagnostic", "run_id"),
        ):
            cursor.execute(f"SELECT count(*) FROM {table} WHERE {column} = %s", [run_pk])
            counts[table] = cursor.fetchone()[0]
    return counts
