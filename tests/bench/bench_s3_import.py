"""Benchmark: `manage.py ingest_archive s3://…` of the ≥ 1,000,000-event synthetic archive, beside
the same archive imported from its folder, in one run.

Run by hand (not collected by pytest):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kahn_s3_bench \
        .venv/bin/python tests/bench/bench_s3_import.py

It (re)creates the database named in DATABASE_URL, writes the synthetic archive once with the
project's simulator (cached under .kahn/bench/, shared with bench_import.py), and starts an
S3-compatible server on loopback (moto, in a process of its own so that it has its own core and
interpreter lock) holding the same files under s3://kahn-bench/archive. The objects are put in the
server's store directly: uploading them is not what is measured. Then, in turns:

  folder     the real command over the folder, into an empty database;
  s3         the real command over the bucket, into an empty database;
  again      each once more over the unchanged archive (a follower's idle pass: the listing);
  reads      the S3 floor: listing the bucket and reading every object whole, as many at once as
             the import does (two chunks of eight), and nothing else.

It prints the medians and the S3 import's ratio to the folder's and to the floor. The loopback
server stands for a store on the network: every object is one HTTP round trip to it, as to S3
itself, with no latency of a real network and the costs of moto's own server (its listing sorts
the bucket's keys for every page) instead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT))

from tests.bench.bench_database import bench_database_url, database_fresh, synthetic_archive  # noqa: E402 (needs the path above)
from tests.servers import free_port  # noqa: E402

BUCKET, PREFIX = "kahn-bench", "archive"

# The server's process: moto on loopback, the archive's files put into its store, "ready" said,
# and served until its standard input closes.
SERVER = """
import logging, sys
from pathlib import Path
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from moto.server import ThreadedMotoServer

logging.getLogger("werkzeug").setLevel(logging.WARNING)
port, archive, bucket, prefix = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
server.start()
backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
backend.create_bucket(bucket, "us-east-1")
count = 0
for path in sorted(archive.rglob("*")):
    if path.is_file():
        backend.put_object(bucket, f"{prefix}/{path.relative_to(archive).as_posix()}", path.read_bytes())
        count += 1
print(f"ready {count}", flush=True)
sys.stdin.read()
server.stop()
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", type=int, default=7250, help="7,250 runs give 1,005,011 events: just over 1M"
    )
    parser.add_argument("--nodes", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=1, help="rounds; medians are reported")
    args = parser.parse_args()

    url = bench_database_url("bench_s3_import")
    archive = synthetic_archive(args.runs, args.nodes)

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    print(f"starting an S3-compatible server on {endpoint} and putting the archive in it ...", flush=True)
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port), str(archive), BUCKET, PREFIX],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        ready = server.stdout.readline().split()
        if not ready or ready[0] != "ready":
            sys.exit("bench_s3_import: the S3-compatible server did not start")
        print(f"{int(ready[1]):,} objects in s3://{BUCKET}/{PREFIX} ({time.perf_counter() - started:.0f} s)")
        os.environ.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
        )
        measure(url, archive, args)
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(timeout=30)


def measure(url: str, archive: Path, args: argparse.Namespace) -> None:
    database_fresh(url)
    from django.core.management import call_command

    from tests.bench.bench_import import check_counts, empty_runs

    expected = sum(
        (folder / "transitions.jsonl").read_bytes().count(b"\n") for folder in (archive / "runs").iterdir()
    )
    print(f"{expected:,} events in {args.runs:,} runs of {args.nodes} nodes", flush=True)

    def timed(root: str) -> float:
        started = time.perf_counter()
        call_command("ingest_archive", root, verbosity=0, stdout=StringIO(), stderr=StringIO())
        return time.perf_counter() - started

    sources = {"folder": str(archive), "s3": f"s3://{BUCKET}/{PREFIX}"}
    imports: dict[str, list[float]] = {name: [] for name in sources}
    agains: dict[str, list[float]] = {name: [] for name in sources}
    for round_number in range(1, args.repeat + 1):
        for name, root in sources.items():
            empty_runs()
            imports[name].append(timed(root))
            check_counts(expected)
            agains[name].append(timed(root))
        said = (f"{name} {imports[name][-1]:.2f} s (again {agains[name][-1]:.2f} s)" for name in sources)
        print(f"round {round_number}: " + ", ".join(said), flush=True)

    reads = [bucket_reads() for _ in range(args.repeat)]
    print(f"reading the bucket alone: {', '.join(f'{r:.2f} s' for r in reads)}", flush=True)
    floor = statistics.median(reads)

    folder, s3 = (statistics.median(imports[name]) for name in sources)
    folder_again, s3_again = (statistics.median(agains[name]) for name in sources)
    print()
    print(f"{'':<36}{'seconds':>9}{'events/s':>12}{'ratio':>9}")
    print(f"{'ingest_archive from the folder':<36}{folder:>9.2f}{expected / folder:>12,.0f}{1:>9.2f}")
    print(f"{'ingest_archive from S3 (loopback)':<36}{s3:>9.2f}{expected / s3:>12,.0f}{s3 / folder:>9.2f}")
    print(f"{'again, unchanged: folder':<36}{folder_again:>9.2f}{'':>12}{folder_again / folder:>9.3f}")
    print(f"{'again, unchanged: S3':<36}{s3_again:>9.2f}{'':>12}{s3_again / folder:>9.3f}")
    print(f"{'S3 floor: list and read every object':<36}{floor:>9.2f}{'':>12}{floor / folder:>9.2f}")
    print()
    print(f"S3 import / folder import: {s3 / folder:.2f} x; S3 import / S3 floor: {s3 / floor:.2f} x")


def bucket_reads() -> float:
    """Lists the bucket and reads every object, 16 at a time: what the store alone costs."""
    from concurrent.futures import ThreadPoolExecutor

    import boto3
    from botocore.config import Config

    client = boto3.client("s3", config=Config(max_pool_connections=16))
    started = time.perf_counter()
    keys = [
        item["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/runs/")
        for item in page.get("Contents", ())
    ]

    def read(key: str) -> int:
        return len(client.get_object(Bucket=BUCKET, Key=key, Range="bytes=0-")["Body"].read())

    with ThreadPoolExecutor(max_workers=16) as pool:
        sum(pool.map(read, keys))
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
