"""Benchmark: retention hard-deleting 1,000,000 events of expired runs, on PostgreSQL.

Run by hand (not collected by pytest):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kahn_bench_retention \\
        .venv/bin/python tests/bench/bench_retention.py

It (re)creates the database named in DATABASE_URL, migrates it, and loads one tenant with
`--expired` events in expired runs (most of a few thousand events, one of `--big-run` events, which
takes many batches on its own) and `--kept` events in runs the plan still keeps, with their node
rows and diagnostics, by COPY. Then, as the service role (no superuser, no BYPASSRLS: row-level
security applies, as in production), it runs the real jobs: soft delete, then hard delete eight days
later. It prints the time of each job, and the number of batches with the longest and the median:
a batch is one transaction, so its time is the longest any of its locks is held.

Target (issue: retention): no batch over 1 s.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT))

from tests.bench.bench_database import bench_database_url, database_fresh  # noqa: E402 (needs the path above)

NOW = datetime(2026, 12, 1, 3, 30, tzinfo=UTC)
NODES_PER_RUN = 20


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--expired", type=int, default=1_000_000, help="events in expired runs")
    parser.add_argument("--big-run", type=int, default=200_000, help="events of the one big expired run")
    parser.add_argument("--run-events", type=int, default=4_000, help="events of each other expired run")
    parser.add_argument("--kept", type=int, default=100_000, help="events in runs that stay")
    parser.add_argument("--batch-events", type=int, help="KAHN_RETENTION_BATCH_EVENTS (default: settings)")
    args = parser.parse_args()

    url = bench_database_url("bench_retention")
    database_fresh(url)
    from django.conf import settings

    role = service_role()
    tenant = bench_tenant()

    sizes = [args.big_run] if args.big_run else []
    while sum(sizes) < args.expired:
        sizes.append(min(args.run_events, args.expired - sum(sizes)))
    kept_sizes = [args.run_events] * (args.kept // args.run_events)
    started = time.perf_counter()
    load(tenant, sizes, last_event_at=NOW - timedelta(days=120), first_number=0)
    load(tenant, kept_sizes, last_event_at=NOW - timedelta(days=1), first_number=len(sizes))
    analyze()
    loaded = time.perf_counter() - started
    print(
        f"loaded {sum(sizes):,} events in {len(sizes):,} expired runs (the largest {max(sizes):,}) and "
        f"{sum(kept_sizes):,} events in {len(kept_sizes):,} kept runs in {loaded:.1f} s",
        flush=True,
    )

    from retention.services import retention_hard_delete_expired, retention_soft_delete_expired

    batch_events = args.batch_events or settings.KAHN_RETENTION_BATCH_EVENTS
    print(
        f"as the service role {role}: batches of at most {settings.KAHN_RETENTION_BATCH_RUNS} runs "
        f"and {batch_events:,} events",
        flush=True,
    )
    as_role(role)
    soft = timed(lambda: retention_soft_delete_expired(tenant=tenant, actor="bench", now=NOW))
    hard = timed(
        lambda: retention_hard_delete_expired(
            tenant=tenant, actor="bench", now=NOW + timedelta(days=8), batch_events=batch_events
        )
    )
    as_role(None)
    check(tenant, expired_runs=len(sizes), kept_events=sum(kept_sizes))

    print()
    print(
        f"{'':<14}{'runs':>8}{'events':>12}{'seconds':>9}{'events/s':>12}{'batches':>9}{'longest':>9}{'median':>9}"
    )
    for name, (outcome, seconds) in (("soft delete", soft), ("hard delete", hard)):
        events = sum(record.events for record in outcome.records)
        batches = outcome.batch_seconds
        print(
            f"{name:<14}{len(outcome.records):>8,}{events:>12,}{seconds:>9.2f}{events / seconds:>12,.0f}"
            f"{len(batches):>9,}{max(batches):>8.3f}s{statistics.median(batches):>8.3f}s"
        )
    print()
    longest = max(hard[0].longest_batch, soft[0].longest_batch)
    verdict(f"no batch over 1 s: the longest took {longest:.3f} s", longest <= 1.0)


def timed(job):
    started = time.perf_counter()
    outcome = job()
    return outcome, time.perf_counter() - started


def verdict(text: str, ok: bool) -> None:
    print(f"{'MET ' if ok else 'MISSED'}  {text}")


def service_role() -> str:
    """The service role of SPEC section 8 for this database, granted as `manage.py migrate` grants it."""
    from django.db import connection

    from tenants.database_roles import database_grant_service_role

    name = f"{connection.settings_dict['NAME']}_service"[:63]
    with connection.cursor() as cursor:
        cursor.execute(
            "DO $$ BEGIN"
            f' CREATE ROLE "{name}" LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT;'
            " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
    database_grant_service_role(connection, name)
    return name


def as_role(role: str | None) -> None:
    from django.db import connection

    connection.close()
    if role is None:
        connection.settings_dict["USER"] = connection.settings_dict.pop("BENCH_OWNER")
    else:
        connection.settings_dict["BENCH_OWNER"] = connection.settings_dict["USER"]
        connection.settings_dict["USER"] = role


def bench_tenant():
    from billing.models import Plan
    from tenants.models import Tenant

    plan = Plan.objects.get(slug="default")
    return Tenant.objects.create(slug="bench", name="Bench", key_prefix="bench0001", plan=plan)


def load(tenant, sizes: list[int], *, last_event_at: datetime, first_number: int) -> None:
    """Runs, their events, node rows and two diagnostics each, by COPY as the owner role (with the
    tenant bound, as FORCE holds the owner to row-level security too)."""
    import orjson
    from django.db import connection, transaction

    from tenants.context import TENANT_SETTING

    ts = last_event_at.isoformat()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT set_config(%s, %s, true)", [TENANT_SETTING, str(tenant.pk)])
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence('runs_run', 'id')) FROM generate_series(1, %s)",
            [len(sizes)],
        )
        ids = [pk for (pk,) in cursor.fetchall()]
        runs = io.StringIO()
        for number, (pk, size) in enumerate(zip(ids, sizes, strict=True), start=first_number):
            runs.write(
                f"{pk}\t{tenant.pk}\tbench_{number:05d}\t{ts}\t{ts}\t{ts}\t{size}\t{NODES_PER_RUN}\t"
                '{}\t{"version": 1}\t{"outcome": "clean"}\t0\t2\t0\tt\t[]\t{}\n'
            )
        cursor.execute(
            "CREATE TEMPORARY TABLE bench_runs ON COMMIT DROP AS SELECT id, tenant_id, run_id, "
            "last_event_at, created_at, updated_at, next_seq, total_nodes, reduction_state, graph, summary, "
            "errors, warnings, infos, complete, failed_nodes, node_attempts FROM runs_run WITH NO DATA"
        )
        with cursor.cursor.copy("COPY bench_runs FROM STDIN") as copy:
            copy.write(runs.getvalue())
        cursor.execute(
            "INSERT INTO runs_run (id, tenant_id, run_id, last_event_at, created_at, updated_at, next_seq, "
            "total_nodes, reduction_state, graph, summary, errors, warnings, infos, complete, failed_nodes, "
            "node_attempts, done, failed, blocked, total_attempts, flake_retries, log_offset, log_size_seen, "
            "log_lines, log_shrank) SELECT *, 0, 0, 0, 0, 0, 0, 0, 0, false FROM bench_runs"
        )
        payload = orjson.dumps(
            {
                "ts": ts,
                "event": "transition",
                "node": "node-07",
                "from": "pending",
                "to": "running",
                "attempt": 1,
            }
        ).decode()
        for table, columns, rows in (
            (
                "runs_event",
                "run_id, seq, tenant_id, ts, kind, node, payload",
                (
                    (pk, seq, tenant.pk, ts, "transition", "node-07", payload)
                    for pk, size in zip(ids, sizes, strict=True)
                    for seq in range(size)
                ),
            ),
            (
                "runs_runnode",
                "run_id, tenant_id, node_id, position, state, attempts",
                ((pk, tenant.pk, f"node-{n:02d}", n, "done", 1) for pk in ids for n in range(NODES_PER_RUN)),
            ),
            (
                "runs_diagnostic",
                "run_id, tenant_id, code, severity, message, details, created_at",
                (
                    (
                        pk,
                        tenant.pk,
                        "unknown_event",
                        "info",
                        "an event kind this version does not know",
                        "{}",
                        ts,
                    )
                    for pk in ids
                    for _ in range(2)
                ),
            ),
        ):
            # COPY cannot write into a table under row-level security for a role its policies
            # apply to: stage, then INSERT ... SELECT (as runs.services does).
            cursor.execute(
                f"CREATE TEMPORARY TABLE bench_{table} ON COMMIT DROP AS "
                f"SELECT {columns} FROM {table} WITH NO DATA"
            )
            with cursor.cursor.copy(f"COPY bench_{table} FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cursor.execute(f"INSERT INTO {table} ({columns}) SELECT * FROM bench_{table}")


def analyze() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")


def check(tenant, *, expired_runs: int, kept_events: int) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM runs_event WHERE tenant_id = %s", [tenant.pk])
        (events,) = cursor.fetchone()
        cursor.execute(
            "SELECT count(*) FROM runs_run WHERE tenant_id = %s AND run_id < %s",
            [tenant.pk, f"bench_{expired_runs:05d}"],
        )
        (runs,) = cursor.fetchone()
        cursor.execute("SELECT count(*) FROM retention_retentionrecord WHERE action = 'hard_delete'")
        (records,) = cursor.fetchone()
    if events != kept_events or runs != 0 or records != expired_runs:
        sys.exit(
            f"bench_retention: {events} events (expected {kept_events}), {runs} expired runs left, "
            f"{records} hard-delete records (expected {expired_runs})"
        )


if __name__ == "__main__":
    main()
