"""Benchmark: comparing two runs, and finding the previous run of a graph, on PostgreSQL.

Run by hand (not collected by pytest):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kahn_bench_compare \
        .venv/bin/python tests/bench/bench_compare.py

It (re)creates the database named in DATABASE_URL, then builds:

  two pairs  of runs through the real import path (the simulator writes them, `manage.py
             ingest_archive` imports them): two runs of a 7-node DAG, two of a --big-node one;
  a history  of --history run rows of 40 nodes each, with their node rows, written by SQL: the
             previous-run lookup reads node rows only.

and measures the median of --repeat requests or calls:

  the comparison page of the small pair and of the big pair (server time in process, and HTML size);
  `run_previous_of_graph` for the newest run of the history, whose previous run is the one before it;
  and for a run of 40 other nodes, so that every run of the history is a candidate and none matches
  (the longest walk there is).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from io import StringIO
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT))

from tests.bench.bench_database import bench_database_url, database_fresh  # noqa: E402 (needs the path above)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--big", type=int, default=2000, help="nodes of the big pair's DAG (default 2,000)")
    parser.add_argument("--history", type=int, default=50_000, help="history rows (default 50,000)")
    parser.add_argument("--repeat", type=int, default=15, help="requests per measurement; medians are shown")
    args = parser.parse_args()

    url = bench_database_url("bench_compare")
    database_fresh(url)
    from django.test import Client
    from django.utils import timezone

    from runs import selectors
    from tenants.context import tenant_scope
    from tenants.models import LOCAL_TENANT_SLUG, Tenant

    small = import_pair(seed=1, nodes=7)
    big = import_pair(seed=2, nodes=args.big)
    seed_history(args.history)
    client = Client(HTTP_HOST="127.0.0.1")

    print(f"{'':<52}{'median ms':>10}{'HTML KiB':>10}")
    for label, (a, b) in (("compare page, 7 nodes", small), (f"compare page, {args.big:,} nodes", big)):
        path = f"/runs/{a}/compare/{b}/"
        ms, size = page_time(client, path, args.repeat)
        print(f"{label:<52}{ms:>10.1f}{size / 1024:>10.0f}", flush=True)

    tenant = Tenant.objects.get(slug=LOCAL_TENANT_SLUG)
    with tenant_scope(tenant):
        for label, run_id in (
            ("previous run of the newest history run (found)", "hist_newest"),
            (f"previous run, {args.history:,} candidates, none match", "hist_stranger"),
        ):
            (row,) = selectors.run_rows(
                list(selectors.run_list(tenant=tenant, filters=selectors.RunFilters(q=run_id))),
                tenant=tenant,
                now=timezone.now(),
            )
            times, found = [], None
            for _ in range(args.repeat):
                started = time.perf_counter()
                found = selectors.run_previous_of_graph(tenant=tenant, run=row)
                times.append((time.perf_counter() - started) * 1000)
            print(f"{label:<52}{statistics.median(times):>10.1f}{'':>10}  -> {found}", flush=True)


def import_pair(*, seed: int, nodes: int) -> tuple[str, str]:
    from django.core.management import call_command

    from ingest.simulator import archive_synthesize, synthetic_run_id

    with tempfile.TemporaryDirectory() as root:
        archive_synthesize(root, runs=2, nodes=nodes, seed=seed)
        call_command("ingest_archive", root, stdout=StringIO(), stderr=StringIO())
    return synthetic_run_id(seed, 0), synthetic_run_id(seed, 1)


def page_time(client, path: str, repeat: int) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.content[:300]
        size = len(response.content)
    return statistics.median(times), size


def seed_history(runs: int) -> None:
    """`runs` complete runs of one 40-node graph, a day before the imported ones, then two probes:
    `hist_newest` (the same graph, newest) and `hist_stranger` (40 other nodes, newest)."""
    from django.db import connection

    from tenants.models import LOCAL_TENANT_SLUG, Tenant

    tenant = Tenant.objects.get(slug=LOCAL_TENANT_SLUG)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO runs_run (
                tenant_id, run_id, started, ended, duration_s, outcome, total_nodes, done, failed,
                blocked, total_attempts, flake_retries, exit_code, failed_nodes, node_attempts, complete,
                last_event_at, errors, warnings, infos, next_seq, reduction_state, graph, summary,
                log_offset, log_size_seen, log_lines, log_shrank, created_at, updated_at)
            SELECT %(tenant)s, run_id, start, start + interval '1 minute', 60, 'clean', 40, 40, 0, 0, 40,
                   0, 0, '[]', '{}', true, start + interval '1 minute', 0, 0, 0, 0, '{}', NULL, NULL,
                   0, 0, 0, false, now(), now()
            FROM (
                SELECT 'hist_' || lpad(i::text, 7, '0') AS run_id,
                       timestamptz '2025-01-01 00:00:00+00' + i * interval '1 minute' AS start
                FROM generate_series(1, %(runs)s) AS i
                UNION ALL SELECT 'hist_newest', timestamptz '2026-01-01 00:00:00+00'
                UNION ALL SELECT 'hist_stranger', timestamptz '2026-01-01 00:00:01+00'
            ) AS r
            """,
            {"tenant": tenant.pk, "runs": runs},
        )
        cursor.execute(
            """
            INSERT INTO runs_runnode (run_id, tenant_id, node_id, position, state, attempts)
            SELECT r.id, r.tenant_id,
                   CASE WHEN r.run_id = 'hist_stranger' THEN 'm' ELSE 'n' END || lpad(p::text, 3, '0'),
                   p, 'done', 1
            FROM runs_run r CROSS JOIN generate_series(0, 39) AS p
            WHERE r.run_id LIKE 'hist_%%'
            """
        )
        cursor.execute("ANALYZE")
    print(json.dumps({"history_runs": runs}), flush=True)


if __name__ == "__main__":
    main()
