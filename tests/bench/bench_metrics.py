"""Benchmark: a tenant's metrics endpoint against the SQL it runs, at 100,000 runs, on PostgreSQL.

Run by hand (not collected by pytest):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kahn_bench_metrics \
        .venv/bin/python tests/bench/bench_metrics.py

It (re)creates the database named in DATABASE_URL, writes --runs run rows of --nodes nodes each by
SQL (`bench_read.seed_history`), moved so that the newest started now: the node figures cover the
last 7 days, about 1,440 of them. Then it times, median of --repeat after one warm-up:

  endpoint   GET /api/v1/metrics through Django's test client, in process
  floor      the same SQL statements the endpoint ran (captured), executed by a bare cursor

and prints endpoint ÷ floor. The goal (issue 19): at most 3.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT))

from tests.bench.bench_database import bench_database_url, database_fresh  # noqa: E402 (needs the path above)

GOAL = 3.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=100_000, help="run rows (default 100,000)")
    parser.add_argument("--nodes", type=int, default=40, help="nodes per run (default 40)")
    parser.add_argument("--repeat", type=int, default=7, help="timed rounds of each (default 7)")
    args = parser.parse_args()

    url = bench_database_url("bench_metrics")
    database_fresh(url)
    from django.conf import settings
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    settings.DEBUG = False
    from tests.bench.bench_read import seed_history

    started = time.perf_counter()
    seed_history(args.runs, args.nodes)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE runs_run SET started = started + shift, ended = ended + shift,"
            " last_event_at = last_event_at + shift"
            " FROM (SELECT now() - max(started) AS shift FROM runs_run) AS s"
        )
        cursor.execute("ANALYZE")
    print(f"{args.runs:,} runs of {args.nodes} nodes ready in {time.perf_counter() - started:.1f} s")

    client = Client(HTTP_HOST="127.0.0.1")

    def endpoint() -> float:
        began = time.perf_counter()
        response = client.get("/api/v1/metrics")
        elapsed = time.perf_counter() - began
        assert response.status_code == 200, response.content[:500]
        return elapsed

    endpoint()  # warm-up: caches, plans, the first connection
    with CaptureQueriesContext(connection) as captured:
        client.get("/api/v1/metrics")
    # The endpoint's own statements; the request's bookkeeping (its transaction, the tenant's lookup)
    # is part of what the endpoint costs over them.
    statements = [
        q["sql"] for q in captured.captured_queries if "runs_run" in q["sql"] or "alerts_" in q["sql"]
    ]

    def floor() -> float:
        began = time.perf_counter()
        with connection.cursor() as cursor:
            for sql in statements:
                cursor.execute(sql)
                cursor.fetchall()
        return time.perf_counter() - began

    floor()
    endpoint_s = statistics.median(endpoint() for _ in range(args.repeat))
    floor_s = statistics.median(floor() for _ in range(args.repeat))
    ratio = endpoint_s / floor_s
    print(f"{len(statements)} statements")
    print(f"{'endpoint, GET /api/v1/metrics':<40}{endpoint_s * 1000:>10.1f} ms")
    print(f"{'floor, its SQL by a bare cursor':<40}{floor_s * 1000:>10.1f} ms")
    verdict = "meets" if ratio <= GOAL else "misses"
    print(f"endpoint ÷ floor: {ratio:.2f}x  ({verdict} the goal of at most {GOAL:g}x)")


if __name__ == "__main__":
    main()
