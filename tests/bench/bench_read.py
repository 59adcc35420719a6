"""Benchmark: the read API against its own SQL, on PostgreSQL, with a large history.

Run by hand (not collected by pytest):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kahn_bench_read .venv/bin/python tests/bench/bench_read.py

It (re)creates the database named in DATABASE_URL, then builds:

  history    --runs run rows (default 100,000) of --nodes nodes (default 40) each, with their node rows,
             written by SQL (generate_series): the history endpoints read the materialised rows only,
             so how they were written does not matter, and 100,000 runs import in seconds this way;
  one run    of about 2,000 events (40 nodes retried 16-17 times), through the real import path:
             the project's simulator writes it, `manage.py ingest_archive` imports it.

and measures, in the same process and run, the median of --repeat requests (Django's test client, in
process: the API's own cost, no HTTP server in front) against the median of the SQL those requests
ran, replayed statement by statement on a raw connection with every row fetched:

  GET /api/v1/runs/                     first page (50 runs)
  GET /api/v1/runs/?page_size=200       first page (200 runs)
  GET /api/v1/runs/{id}/                the 2,000-event run, with its nodes, attempts and diagnostics
  GET /  and  GET /runs/{id}/           the same reads as pages, for comparison

Target (issue 3): the API adds at most 3 x over its own SQL.
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

DETAIL_RUN = "bench_2000_events"
TARGET = 3.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=100_000, help="run rows in the history (default 100,000)")
    parser.add_argument("--nodes", type=int, default=40, help="nodes per run (default 40)")
    parser.add_argument("--repeat", type=int, default=30, help="requests per measurement; medians are shown")
    args = parser.parse_args()

    url = bench_database_url("bench_read")
    database_fresh(url)

    started = time.perf_counter()
    seed_history(args.runs, args.nodes)
    events = import_detail_run()
    print(
        f"{args.runs:,} runs of {args.nodes} nodes and one run of {events:,} events "
        f"ready in {time.perf_counter() - started:.1f} s",
        flush=True,
    )

    from django.test import Client

    client = Client(HTTP_HOST="127.0.0.1")
    deep = deep_cursors(args.runs // 2)
    cases = [
        # The framework's floor: an API request whose one query finds nothing.
        ("GET runs/?started_after=2100 (empty)", "/api/v1/runs/?started_after=2100-01-01T00:00:00Z", False),
        ("GET runs/ (first page, 50)", "/api/v1/runs/", True),
        ("GET runs/?page_size=200", "/api/v1/runs/?page_size=200", True),
        ("GET runs/?cursor= (halfway, next)", f"/api/v1/runs/?cursor={deep[0]}", True),
        ("GET runs/?cursor= (halfway, previous)", f"/api/v1/runs/?cursor={deep[1]}", True),
        (f"GET runs/{{id}}/ ({events:,} events)", f"/api/v1/runs/{DETAIL_RUN}/", True),
        ("history page /", "/", False),
        (f"run page /runs/{{id}}/ ({events:,} events)", f"/runs/{DETAIL_RUN}/", False),
    ]
    print()
    print(f"{'':<40}{'request ms':>11}{'SQL ms':>9}{'queries':>9}{'ratio':>8}")
    verdicts = []
    for label, path, is_api in cases:
        request_ms, sql_ms, queries = measure(client, path, args.repeat)
        ratio = request_ms / sql_ms
        print(f"{label:<40}{request_ms:>11.2f}{sql_ms:>9.2f}{queries:>9}{ratio:>8.2f}", flush=True)
        if is_api:
            verdicts.append((f"{label}: {ratio:.2f} x its SQL", ratio <= TARGET))
    print()
    for text, ok in verdicts:
        print(f"{'MET ' if ok else 'MISSED'}  API ≤ {TARGET:g} x SQL  {text}")


def seed_history(runs: int, nodes: int) -> None:
    """Run rows as the reduction leaves them: mostly clean, some flaky, a few failed or unfinished."""
    from django.db import connection

    from tenants.models import LOCAL_TENANT_SLUG, Tenant

    tenant = Tenant.objects.get(slug=LOCAL_TENANT_SLUG)
    node_ids = [f"n{i:03d}" for i in range(nodes)]
    graph = {
        "version": 1,
        "nodes": [{"id": n, "deps": node_ids[max(0, i - 2) : i]} for i, n in enumerate(node_ids)],
    }
    clean_attempts = dict.fromkeys(node_ids, 1)
    flaky_attempts = {**clean_attempts, node_ids[3]: 2, node_ids[7]: 3}
    state = {
        "next_seq": nodes * 3 + 2,
        "nodes": [[n, "done", 1, True] for n in node_ids],
        "has_graph": True,
        # Unfinished runs died in their last node's attempt: the list shows died_mid_attempt for them.
        "open": [[node_ids[-1], 1, nodes * 3, False]],
        "started": None,
        "ended": None,
        "exit_code": None,
        "last_event_ts": None,
    }
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO runs_run (
                tenant_id, run_id, started, ended, duration_s, outcome, total_nodes, done, failed,
                blocked, total_attempts, flake_retries, exit_code, failed_nodes, node_attempts, complete,
                last_event_at, errors, warnings, infos, next_seq, reduction_state, graph, summary,
                log_offset, log_size_seen, log_lines, log_shrank, created_at, updated_at)
            SELECT %(tenant)s, 'bench_' || lpad(i::text, 7, '0'), start, finish,
                   CASE WHEN unfinished THEN NULL ELSE 60 + i %% 900 + 0.5 END,
                   CASE WHEN unfinished THEN NULL WHEN failed THEN 'failed'
                        WHEN flaky THEN 'clean_with_flake' ELSE 'clean' END,
                   %(nodes)s, CASE WHEN failed THEN %(nodes)s - 3 ELSE %(nodes)s END,
                   CASE WHEN failed THEN 1 ELSE 0 END, CASE WHEN failed THEN 2 ELSE 0 END,
                   %(nodes)s + CASE WHEN flaky THEN 3 ELSE 0 END, CASE WHEN flaky THEN 3 ELSE 0 END,
                   CASE WHEN unfinished THEN NULL WHEN failed THEN 1 ELSE 0 END,
                   CASE WHEN failed THEN '["n017"]'::jsonb ELSE '[]'::jsonb END,
                   CASE WHEN flaky THEN %(flaky)s::jsonb ELSE %(clean)s::jsonb END,
                   NOT unfinished, coalesce(finish, start + interval '5 minutes'),
                   CASE WHEN i %% 250 = 0 THEN 1 ELSE 0 END, 0, 0, %(next_seq)s, %(state)s::jsonb,
                   %(graph)s::jsonb, NULL, 0, 0, 0, false, now(), now()
            FROM (
                SELECT i, timestamptz '2025-01-01 00:00:00+00' + i * interval '7 minutes' AS start,
                       i %% 97 = 0 AS failed, i %% 5 = 0 AS flaky, i %% 1000 = 999 AS unfinished
                FROM generate_series(1, %(runs)s) AS i
            ) AS r
            CROSS JOIN LATERAL (
                SELECT CASE WHEN unfinished THEN NULL
                            ELSE start + (60 + i %% 900 + 0.5) * interval '1 second' END
            ) AS f(finish)
            """,
            {
                "tenant": tenant.pk,
                "runs": runs,
                "nodes": nodes,
                "clean": json.dumps(clean_attempts),
                "flaky": json.dumps(flaky_attempts),
                "next_seq": nodes * 3 + 2,
                "state": json.dumps(state),
                "graph": json.dumps(graph),
            },
        )
        cursor.execute(
            """
            INSERT INTO runs_runnode (run_id, tenant_id, node_id, position, state, attempts)
            SELECT r.id, r.tenant_id, 'n' || lpad(p::text, 3, '0'), p,
                   CASE WHEN r.failed > 0 AND p = 17 THEN 'failed'
                        WHEN r.failed > 0 AND p > 37 THEN 'blocked' ELSE 'done' END,
                   coalesce((r.node_attempts ->> ('n' || lpad(p::text, 3, '0')))::int, 0)
            FROM runs_run r CROSS JOIN generate_series(0, %(last)s) AS p
            """,
            {"last": nodes - 1},
        )
        cursor.execute("ANALYZE")


def import_detail_run() -> int:
    """A run of about 2,000 events through the real path: the simulator, then ingest_archive."""
    from django.core.management import call_command

    from ingest.simulator import run_simulate, run_write

    edges = {f"n{i:03d}": [f"n{j:03d}" for j in range(max(0, i - 2), i)] for i in range(40)}
    # 16 or 17 attempts a node, three events each: 40 x 16 x 3 + 27 x 3 + start and end = 2,003.
    plan = {node: [False] * (16 if i < 27 else 15) + [True] for i, node in enumerate(edges)}
    run = run_simulate(DETAIL_RUN, edges, plan, workers=3)
    with tempfile.TemporaryDirectory() as root:
        run_write(root, run)
        call_command("ingest_archive", root, stdout=StringIO())
    return len(run.events)


def deep_cursors(offset: int) -> tuple[str, str]:
    """Cursors (older, newer) at the run `offset` places down the history, as the API encodes them."""
    from base64 import b64encode
    from urllib.parse import quote, urlencode

    from django.db.models import F

    from runs.models import Run

    run = Run.objects.unscoped().order_by(F("started").desc(nulls_first=True), F("id").desc())[offset]
    position = f"{run.started.isoformat()}|{run.pk}"
    older = b64encode(urlencode({"p": position}).encode()).decode()
    newer = b64encode(urlencode({"r": "1", "p": position}).encode()).decode()
    return quote(older), quote(newer)


def measure(client, path: str, repeat: int) -> tuple[float, float, int]:
    """Median ms of the request, median ms of its SQL replayed alone, and how many statements.

    The two are timed in turns, request then SQL, so that whatever else the machine is doing weighs
    on both alike.
    """
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    response = client.get(path)  # warm: connection, caches, imports
    assert response.status_code == 200, (path, response.status_code, response.content[:300])
    with CaptureQueriesContext(connection) as captured:
        client.get(path)
    statements = [q["sql"] for q in captured.captured_queries]
    raw = connection.connection  # the same psycopg connection, without Django's wrappers

    request_times, sql_times = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(path)
        request_times.append(time.perf_counter() - started)
        assert response.status_code == 200

        started = time.perf_counter()
        with raw.cursor() as cursor:
            for sql in statements:
                cursor.execute(sql.replace("%", "%%"))
                if cursor.description is not None:
                    cursor.fetchall()
        sql_times.append(time.perf_counter() - started)
        raw.rollback()
    return statistics.median(request_times) * 1000, statistics.median(sql_times) * 1000, len(statements)


if __name__ == "__main__":
    main()
