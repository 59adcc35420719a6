r"""Benchmark: a 2,000-node run's page beside a 7-node run's page, served in the same run.

Run by hand (not collected by pytest):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kahn_bench_pages \
        .venv/bin/python tests/bench/bench_pages.py

It (re)creates the database named in DATABASE_URL and imports, through the real path (the project's
simulator writes the archive, `manage.py ingest_archive` imports it), two failed runs:

  small   the sample archive's 7-node graph, api-routes failing its three attempts (24 events);
  big     2,000 nodes, about 6,000 events, 12 failed nodes each blocking a few (tests/big_runs.py).

Then it serves each run's page through the real view (Django's test client, in process: the page's
own cost, no HTTP server in front), in turns, and prints the median server time of --repeat requests
and the HTML's size.

Targets (issue 17): the big page ≤ 10 x the small page's server time, and ≤ 1.5 MB of HTML.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from io import StringIO
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT))

from tests.bench.bench_database import bench_database_url, database_fresh  # noqa: E402 (needs the path above)

SMALL_RUN, BIG_RUN = "bench_small_failed", "bench_big_failed"
TIME_TARGET = 10.0
BYTES_TARGET = 1_500_000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=15, help="requests per page; medians are shown")
    args = parser.parse_args()

    url = bench_database_url("bench_pages")
    database_fresh(url)

    started = time.perf_counter()
    events = import_runs()
    print(
        f"runs of {events[SMALL_RUN]:,} and {events[BIG_RUN]:,} events ready "
        f"in {time.perf_counter() - started:.1f} s",
        flush=True,
    )

    from django.test import Client

    client = Client(HTTP_HOST="127.0.0.1")
    pages = {run_id: f"/runs/{run_id}/" for run_id in (SMALL_RUN, BIG_RUN)}
    sizes = {run_id: len(serve(client, path)) for run_id, path in pages.items()}  # warm, and measure
    # As a server worker does (kahn_site/wsgi.py): what is loaded now is frozen out of the cyclic
    # garbage collector, whose full collections would otherwise walk all of Django.
    gc.freeze()
    times: dict[str, list[float]] = {run_id: [] for run_id in pages}
    for _ in range(args.repeat):
        for run_id, path in pages.items():  # in turns: whatever else the machine does weighs on both
            started = time.perf_counter()
            serve(client, path)
            times[run_id].append(time.perf_counter() - started)
    medians = {run_id: statistics.median(spent) * 1000 for run_id, spent in times.items()}

    print()
    print(f"{'':<34}{'server ms':>10}{'HTML bytes':>12}")
    for run_id, label in ((SMALL_RUN, "7-node run page"), (BIG_RUN, "2,000-node run page")):
        print(f"{label + f' ({events[run_id]:,} events)':<34}{medians[run_id]:>10.1f}{sizes[run_id]:>12,}")
    ratio = medians[BIG_RUN] / medians[SMALL_RUN]
    print(f"{'big / small':<34}{ratio:>9.1f}x{sizes[BIG_RUN] / sizes[SMALL_RUN]:>11.1f}x")
    print()
    print(
        f"{verdict(ratio <= TIME_TARGET)}  big page ≤ {TIME_TARGET:g} x the small page's time: {ratio:.1f} x"
    )
    print(
        f"{verdict(sizes[BIG_RUN] <= BYTES_TARGET)}  big page ≤ {BYTES_TARGET / 1e6:g} MB of HTML: "
        f"{sizes[BIG_RUN] / 1e6:.2f} MB"
    )


def import_runs() -> dict[str, int]:
    """Both runs through the real path: the simulator writes them, ingest_archive imports them."""
    from django.core.management import call_command

    from ingest.simulator import WEB_APP, run_simulate, run_write
    from tests.big_runs import big_run

    runs = [run_simulate(SMALL_RUN, WEB_APP, {"api-routes": [False, False, False]}), big_run(BIG_RUN)]
    with tempfile.TemporaryDirectory() as root:
        for run in runs:
            run_write(root, run)
        call_command("ingest_archive", root, stdout=StringIO())
    return {run.run_id: len(run.events) for run in runs}


def serve(client, path: str) -> bytes:
    response = client.get(path)
    assert response.status_code == 200, (path, response.status_code, response.content[:300])
    return response.content


def verdict(met: bool) -> str:
    return "MET   " if met else "MISSED"


if __name__ == "__main__":
    main()
