"""Benchmark: `manage.py ingest_archive` with five alert rules enabled, against none, in one run.

Run by hand (not collected by pytest):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kahn_bench_alerts \
        .venv/bin/python tests/bench/bench_alerts.py

It (re)creates the database named in DATABASE_URL, writes (or reuses, cached under .kahn/bench/) the
synthetic archive of bench_import.py, and imports it into an empty database, rounds alternating
between no rules and five (run_failed, run_flaky, diagnostic_error, node_slow, node_flaky: the write
path then records notifications and advances per-node statistics). Target: ≤ 1.10 x without rules.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from io import StringIO
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT))

from tests.bench.bench_database import bench_database_url, database_fresh, synthetic_archive  # noqa: E402 (needs the path above)

CONDITIONS = ("run_failed", "run_flaky", "diagnostic_error", "node_slow", "node_flaky")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", type=int, default=7250, help="7,250 runs give 1,005,011 events: just over 1M"
    )
    parser.add_argument("--nodes", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each; medians are reported")
    args = parser.parse_args()

    url = bench_database_url("bench_alerts")
    archive = synthetic_archive(args.runs, args.nodes)

    database_fresh(url)
    from django.core.management import call_command

    without, with_rules, notified = [], [], 0
    for round_number in range(1, args.repeat + 1):
        # Alternating, so that a machine growing busier or quieter weighs on both alike.
        for rules in (False, True) if round_number % 2 else (True, False):
            empty(rules)
            started = time.perf_counter()
            call_command("ingest_archive", str(archive), verbosity=0, stdout=StringIO())
            seconds = time.perf_counter() - started
            (with_rules if rules else without).append(seconds)
            if rules:
                notified = notifications()
            print(
                f"round {round_number}: {'five rules' if rules else 'no rules'} {seconds:.2f} s", flush=True
            )
    base, alerted = statistics.median(without), statistics.median(with_rules)
    ratio = alerted / base
    print(f"import without rules {base:.2f} s, with five rules {alerted:.2f} s: {ratio:.3f} x")
    print(f"{notified:,} notifications recorded by the import with rules")
    # A verdict line as the other benchmarks print it, which ab.py reports for each side.
    verdict = "MET   " if ratio <= 1.10 else "MISSED"
    print(f"{verdict}  five rules against none, target ≤ 1.10 x: {ratio:.3f} x")


def empty(with_rules: bool) -> None:
    from django.db import connection

    from runs.alerts.services import RuleSpec, rule_create
    from tenants.context import tenant_atomic
    from tenants.models import LOCAL_TENANT_SLUG, Tenant

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE runs_event, runs_runnode, runs_diagnostic, runs_run,"
            " alerts_deliveryattempt, alerts_notification, alerts_nodestats, alerts_alertrule"
        )
        cursor.execute("VACUUM ANALYZE")
    tenant, _ = Tenant.objects.get_or_create(slug=LOCAL_TENANT_SLUG, defaults={"name": "Local"})
    if with_rules:
        with tenant_atomic(tenant):
            for condition in CONDITIONS:
                spec = RuleSpec(
                    name=condition,
                    condition=condition,
                    channel_kind="webhook",
                    url="https://hooks.example.net/in",
                )
                rule_create(tenant=tenant, spec=spec)
    else:
        from django.core.cache import cache

        cache.clear()


def notifications() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM alerts_notification")
        (count,) = cursor.fetchone()
    return count


if __name__ == "__main__":
    main()
