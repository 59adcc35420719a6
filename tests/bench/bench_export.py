"""Benchmark: exports stream with flat memory, on PostgreSQL, however many runs or events.

Run by hand (not collected by pytest):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kahn_bench_export \
        .venv/bin/python tests/bench/bench_export.py

It (re)creates the database named in DATABASE_URL, then writes by SQL (as `bench_read.py` does)
--runs run rows (default 1,000,000) of --nodes nodes each, and one run of --events events (default
1,000,000), and reads, through the real endpoints (Django's test client, in process):

  GET /api/v1/runs/export?format=csv        every run
  GET /api/v1/runs/export?format=ndjson     every run
  GET /api/v1/runs/{id}/archive             the long run's tar.gz

consuming each response chunk by chunk as a client would, and prints the process's resident memory
(or with --trace the Python heap, by tracemalloc) once the first MB has gone out and the most it
reached until the end. Flat memory: the two are about equal, whatever the size of the export.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT))

from tests.bench.bench_database import bench_database_url, database_fresh  # noqa: E402 (needs the path above)

LONG_RUN = "bench_long_run"
MB = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1_000_000, help="run rows (default 1,000,000)")
    parser.add_argument("--nodes", type=int, default=8, help="nodes per run (default 8, bench_read's fewest)")
    parser.add_argument("--events", type=int, default=1_000_000, help="the long run's (default 1,000,000)")
    parser.add_argument(
        "--trace", action="store_true", help="the Python heap (tracemalloc, several times slower), not RSS"
    )
    args = parser.parse_args()

    url = bench_database_url("bench_export")
    database_fresh(url)
    from django.conf import settings

    settings.DEBUG = False  # no query log growing with every batch
    from tests.bench.bench_read import seed_history

    started = time.perf_counter()
    seed_history(args.runs, args.nodes)
    seed_long_run(args.events)
    print(
        f"{args.runs:,} runs and one run of {args.events:,} events ready in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )

    from django.test import Client

    client = Client(HTTP_HOST="127.0.0.1")
    print()
    what = "heap MB" if args.trace else "RSS MB"
    print(f"{'':<34}{'MB out':>9}{'s':>8}{what + ' at 1 MB':>16}{what + ', most':>16}")
    for label, path in [
        (f"CSV, {args.runs:,} runs", "/api/v1/runs/export?format=csv"),
        (f"NDJSON, {args.runs:,} runs", "/api/v1/runs/export?format=ndjson"),
        (f"archive, {args.events:,} events", f"/api/v1/runs/{LONG_RUN}/archive"),
    ]:
        measure(client, label, path, trace=args.trace)


def rss_mb() -> float:
    """The process's resident memory now (Linux)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def measure(client, label: str, path: str, *, trace: bool) -> None:
    """Reads the response chunk by chunk as a client would; memory once the first MB is out, and
    the most it reached until the end."""
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    response = client.get(path)
    assert response.status_code == 200, response.status_code
    sent, early, highest = 0, None, 0.0
    for chunk in response.streaming_content:
        sent += len(chunk)
        now = tracemalloc.get_traced_memory()[0] / MB if trace else rss_mb()
        highest = max(highest, now)
        if early is None and sent >= MB:
            early = now
    seconds = time.perf_counter() - started
    if trace:
        tracemalloc.stop()
    print(f"{label:<34}{sent / MB:>9.1f}{seconds:>8.1f}{early or 0:>16.1f}{highest:>16.1f}", flush=True)


def seed_long_run(events: int) -> None:
    """One run of `events` events, written by SQL: node attempts of 100 nodes, start to end."""
    from django.db import connection

    from tenants.models import LOCAL_TENANT_SLUG, Tenant

    tenant = Tenant.objects.get(slug=LOCAL_TENANT_SLUG)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO runs_run (tenant_id, run_id, total_nodes, done, failed, blocked, total_attempts,"
            " flake_retries, failed_nodes, node_attempts, complete, errors, warnings, infos, next_seq,"
            " reduction_state, log_offset, log_size_seen, log_lines, log_shrank, created_at, updated_at,"
            " started, last_event_at)"
            " VALUES (%s, %s, 0, 0, 0, 0, 0, 0, '[]', '{}', false, 0, 0, 0, %s, '{}', 0, 0, 0, false,"
            " now(), now(), '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z') RETURNING id",
            [tenant.pk, LONG_RUN, events],
        )
        run_pk = cursor.fetchone()[0]
        cursor.execute(
            """
            INSERT INTO runs_event (run_id, seq, tenant_id, ts, kind, node, payload)
            SELECT %(run)s, i, %(tenant)s, t, 'node_attempt', 'n' || (i %% 100),
                   jsonb_build_object('ts', to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                                      'event', 'node_attempt', 'node', 'n' || (i %% 100),
                                      'attempt', i / 100 + 1, 'ok', i %% 7 <> 0,
                                      'duration_s', (i %% 600) / 10.0, 'exit_code', 0)
            FROM generate_series(0, %(last)s) AS i
            CROSS JOIN LATERAL (SELECT timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second') AS s(t)
            """,
            {"run": run_pk, "tenant": tenant.pk, "last": events - 1},
        )
        cursor.execute("ANALYZE")


if __name__ == "__main__":
    main()
